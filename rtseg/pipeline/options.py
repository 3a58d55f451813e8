"""The per-frame options of ``rtseg stream`` and ``rtseg batch``, validated once.

:class:`FrameOptions` is the base of both commands' configurations (keyword-only fields, so
each command keeps its own required ones first); its :meth:`~FrameOptions.check` is the one
place these options are checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtseg.errors import UserError

MAX_BATCH = 256


@dataclass(kw_only=True)
class FrameOptions:
    batch: int = 1  # frames per segmenter call
    smooth: float = 0.0  # moving average of the CAM across frames (0 = off)
    call_smoothing: float | None = None  # None: the model's (manifest ``call_smoothing``)
    alpha: float = 0.4  # overlay opacity
    heatmap: bool = False  # draw the CAM instead of the flat mask colour
    layer: int | str | None = None  # CAM layer (None = the manifest's)

    def check(self) -> None:
        from rtseg.live.smoothing import check_call_smoothing

        if not 1 <= self.batch <= MAX_BATCH:
            raise UserError(f"--batch must be 1..{MAX_BATCH}, got {self.batch}")
        if not 0.0 <= self.smooth < 1.0:  # also rejects NaN
            raise UserError(f"--smooth must be in [0, 1), got {self.smooth}")
        check_call_smoothing(self.call_smoothing)
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha}")
