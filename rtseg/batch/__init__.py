"""``rtseg batch``: an archive of videos and images through the fused graph, on Ray Data.

Modules (none imports ray at import time; ``rtseg --help`` stays fast):

- :mod:`.inputs` what to do: the input (folder, file or glob) -> work units (one per video,
  one per chunk of an image folder), their output folders and signatures;
- :mod:`.work` how one unit is done, without Ray: the stream's own pipeline
  (:func:`rtseg.live.capture.open_source`, :class:`~rtseg.live.reader.FrameReader`,
  :class:`rtseg.pipeline.runner.Runner`, :class:`~rtseg.live.overlay.Overlay`,
  :class:`~rtseg.live.display.VideoSink`), the per-frame table,
  mask PNGs, the staging folder and the done-marker;
- :mod:`.run` the driver: resume, Ray Data actor pool, progress bar, manifest, totals;
- :mod:`.raysession` starting (or joining) Ray, shared with the feature extraction;
- :mod:`.features` the Ray back end of ``rtseg features`` / ``propagate`` (``--workers``).
"""

from __future__ import annotations

__all__ = ["BatchConfig", "run_batch"]


def __getattr__(name):  # lazy: importing rtseg.batch costs nothing
    if name in __all__:
        from rtseg.batch import run

        return getattr(run, name)
    raise AttributeError(name)
