"""The endoscope's active area: detection, inset blanking, mapping back, the network's view."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtseg.model.active_area import Box, crop, detect_box, inset_box, paste, prepare


def _video_frame(h=360, w=640, black=16, fov=(184, 0, 636, 360), inset=True, text=True, seed=0):
    """A 16:9 frame like PolypGen's: black margins at ``black``, a lit octagon, a text panel
    and a green position inset in the left margin."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), black, np.uint8)
    x0, y0, x1, y1 = fov
    c = int(0.2 * (x1 - x0))
    pts = np.array([[x0 + c, y0], [x1 - c, y0], [x1, y0 + c], [x1, y1 - c], [x1 - c, y1],
                    [x0 + c, y1], [x0, y1 - c], [x0, y0 + c]], np.int32)
    lit = np.zeros((h, w), np.uint8)
    cv2.fillPoly(lit, [pts], 1)
    tissue = rng.integers(90, 220, (h, w, 3), dtype=np.uint8)
    tissue[..., 1] //= 2  # reddish
    img[lit.astype(bool)] = tissue[lit.astype(bool)]
    if text:
        cv2.putText(img, "00:12:45", (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (230, 230, 230), 1)
    if inset:
        img[150:240, 0:172] = (40, 180, 140)  # BGR teal-green box
    return img


def test_detects_the_lit_octagon_not_the_margin_text_or_inset():
    img = _video_frame()
    b = detect_box(img)
    # within a few detection steps of the octagon's bounding box
    assert abs(b.x0 - 184) <= 8 and abs(b.x1 - 636) <= 8 and b.y0 <= 4 and b.y1 >= 356


def test_whole_frame_when_nothing_is_dark():
    img = np.full((120, 160, 3), 128, np.uint8)
    assert detect_box(img) == Box(0, 0, 160, 120)


def test_green_inset_inside_the_view_is_blanked():
    rng = np.random.default_rng(1)
    img = rng.integers(100, 200, (300, 320, 3), dtype=np.uint8)
    img[..., 1] //= 2
    img[200:290, 0:90] = (60, 190, 150)
    ib = inset_box(img)
    assert ib is not None and ib.x0 <= 4 and ib.x1 >= 88 and ib.y0 <= 204 and ib.y1 >= 286
    out = crop(img, Box.full(img.shape[:2]))
    assert out[205:285, 5:85].max() == 0 and out[50:150, 100:300].min() >= 50
    # mucosa alone has no inset
    plain = img.copy()
    plain[200:290, 0:90] = plain[0:90, 200:290]
    assert inset_box(plain) is None


def test_paste_maps_a_crop_map_back_into_the_frame():
    box = Box(100, 20, 300, 220)
    m = np.zeros((50, 50), np.float32)
    m[:25] = 1.0  # top half of the crop
    full = paste(m, box, (240, 320))
    assert full.shape == (240, 320)
    assert full[:20].max() == 0 and full[:, :100].max() == 0 and full[:, 300:].max() == 0
    assert full[25:110, 110:290].min() > 0.99 and full[130:215, 110:290].max() < 0.01


def test_prepare_off_is_the_identity():
    img = _video_frame()
    view, box = prepare(img, enabled=False)
    assert view is img and box == Box(0, 0, 640, 360)


def test_every_frame_finds_its_own_box_however_the_view_moves():
    """A stream's frame is cut to its own active area, as ``rtseg predict`` cuts the same frame:
    a box held over from earlier frames made the two disagree (by up to 0.37 in probability on
    a 1080p clip whose field of view moved)."""
    from rtseg.model.manifest import Manifest
    from rtseg.runtime.active import ViewSegmenter
    from rtseg.runtime.base import Segmenter, SegOutput

    seen = []

    class Inner(Segmenter):
        name, device = "fake", "cpu"
        manifest = Manifest(input_size=16, active_area=True)

        def __call__(self, frames):
            seen.append(frames.shape)
            z = np.zeros((len(frames), 16, 16), np.float32)
            return SegOutput(np.zeros(len(frames), np.float32), z, z.astype(np.uint8))

    seg = ViewSegmenter(Inner())
    a, b = _video_frame(), _video_frame(fov=(40, 0, 400, 360), inset=False)
    seg.warmup(*a.shape[:2])  # noise frames first: lit everywhere
    boxes = seg(np.stack([a, b, a])).boxes
    assert boxes == [detect_box(a), detect_box(b), detect_box(a)]
    assert boxes[0].x0 > 150 and boxes[1].x1 < 420
    assert seen[-1] == (3, 16, 16, 3)  # the graph gets the S x S views, whatever the frame size


def test_network_view_is_the_crop_resized_once():
    from rtseg.model.active_area import network_view

    img = _video_frame()
    view, box = network_view(img, 32)
    assert box == detect_box(img) and view.shape == (32, 32, 3) and view.dtype == np.uint8
    want = cv2.resize(crop(img, box), (32, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(view, want)
    whole, full = network_view(img, 32, active_area=False)
    assert full == Box(0, 0, 640, 360) and whole.shape == (32, 32, 3)


def test_fast_detection_matches_the_numpy_definition():
    """detect_box's channel max and 2nd percentile (OpenCV, a histogram) are numpy's exactly."""
    from rtseg.model.active_area import _percentile_u8

    rng = np.random.default_rng(3)
    for _ in range(50):
        v = rng.integers(0, 256, (rng.integers(1, 40), rng.integers(1, 40)), dtype=np.uint8)
        for q in (0, 2, 50, 97.5, 100):
            assert abs(_percentile_u8(v, q) - np.percentile(v, q)) < 1e-9


@pytest.mark.parametrize("hw", [(1080, 1920), (288, 384), (1072, 1920), (290, 387), (4, 8)])
def test_every_step_is_the_strided_sample(hw):
    """The detection's sample is every STEP-th pixel, whichever way it is taken."""
    from rtseg.model.active_area import STEP, every_step

    img = np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), dtype=np.uint8)
    np.testing.assert_array_equal(every_step(img), img[::STEP, ::STEP])
