"""The edge-following refinements (optional extra 'experiments'): they must move a blurred map
onto the image's own edge, or they measure nothing."""

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf")
pytest.importorskip("skimage")

from rtseg.train.edge_refine import dense_crf, slic_pool  # noqa: E402


def _scene():
    view = np.full((64, 64, 3), 40, np.uint8)
    view[20:44, 20:44] = (220, 120, 120)  # a bright square on dark tissue
    truth = np.zeros((64, 64), bool)
    truth[20:44, 20:44] = True
    yy, xx = np.mgrid[:64, :64]
    p = np.exp(-(((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 14.0 ** 2))).astype(np.float32)  # blob
    return view, truth, p * 0.9


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("refine", [lambda v, p: dense_crf(v, p, 10.0),
                                    lambda v, p: slic_pool(v, p, 30)], ids=["crf", "slic"])
def test_refinement_snaps_a_blurred_map_to_the_edge(refine):
    view, truth, p = _scene()
    out = refine(view, p)
    assert out.shape == p.shape and out.dtype == np.float32
    assert _iou(out > 0.5, truth) > _iou(p > 0.5, truth) + 0.1
