"""The live loop: frame capture, the loop itself, the overlay and window, its report and
statistics, and the stream benchmark."""
