"""The one frame pipeline of every command that segments frames.

- :mod:`.options`: the per-frame options (batch, smoothing, overlay) shared by ``rtseg stream``
  and ``rtseg batch``, validated in one place;
- :mod:`.runner`: frames in, one :class:`~.runner.FrameResult` per frame out (probability, call,
  mask at frame size, largest box, timings): the segmenter, the filters across frames, the mask;
- :mod:`.stages`: the runner in its own thread between the decode thread and the consumer,
  bounded queues between them, so the frame rate is the slowest stage's.

Sources are :mod:`rtseg.live.capture` (file, folder, image, camera, URL, the demo clip) read by
:class:`rtseg.live.reader.FrameReader`. ``rtseg stream`` (window, recording), ``rtseg batch``
(tables, videos, masks), ``rtseg predict`` and ``rtseg eval`` consume the runner's results.
"""
