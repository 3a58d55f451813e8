"""The fused forward + Grad-CAM graph and its files: folding, tracing, the metadata contract,
ONNX export and its cache, TensorRT engines. Nothing here imports rtseg.runtime."""
