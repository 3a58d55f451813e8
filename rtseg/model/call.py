"""THE call of a frame: polyp when its probability is above one half (the logit above 0).

Every place that turns a probability into "polyp" / "no polyp" (the stream's label and count,
``rtseg batch``'s polyp frames, ``rtseg predict``'s and ``rtseg eval``'s counts and accuracy,
the tiles mode's gate, the call's moving average) uses :func:`is_polyp`, so a frame at exactly
0.5 gets the same answer from every command.
"""

from __future__ import annotations

import numpy as np

CALL_AT = 0.5  # probability; sigmoid(0): "logit > 0" is "prob > CALL_AT"


def is_polyp(prob):
    """``prob > 0.5``: a bool for a number, a bool array for an array."""
    if isinstance(prob, (float, int, np.floating, np.integer)):
        return bool(prob > CALL_AT)
    return np.asarray(prob) > CALL_AT
