"""The trained model and everything that defines its output: architecture, manifest, bundle,
preprocessing, the segmentation head, Grad-CAM, thresholds, mask clean-up, tiles, active area."""
