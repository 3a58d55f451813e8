"""rtseg: real-time polyp segmentation without pixel labels."""

__version__ = "0.1.0"
