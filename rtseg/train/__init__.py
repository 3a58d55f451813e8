"""Training a bundle: configuration, checkpoints, the step, the loop, data, BN calibration, and
the frozen-backbone probe the default model's recipe trains with (and its fine-tuned top, top.py)."""
