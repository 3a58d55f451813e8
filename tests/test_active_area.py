"""The endoscope's active area: detection, inset blanking, mapping back, the stream cache."""

from __future__ import annotations

import cv2
import numpy as np

from rtseg.model.active_area import Box, BoxCache, crop, detect_box, inset_box, paste, prepare


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


def test_box_cache_detects_once_then_every_n_frames_and_on_size_change(monkeypatch):
    import rtseg.model.active_area as aa

    calls = []
    real = aa.detect_box
    monkeypatch.setattr(aa, "detect_box", lambda f: calls.append(f.shape) or real(f))
    cache = BoxCache(every=3)
    f = _video_frame()
    for _ in range(7):
        cache(f)
    assert len(calls) == 3  # frames 1, 4, 7
    cache(_video_frame(h=288, w=384, fov=(40, 10, 344, 278)))
    assert len(calls) == 4


def test_warmup_does_not_leave_its_box_for_the_stream():
    """The warm-up's noise frames are lit everywhere: the first real frame must find its own box."""
    from rtseg.model.manifest import Manifest
    from rtseg.runtime.active import ActiveAreaSegmenter
    from rtseg.runtime.base import Segmenter, SegOutput

    class Inner(Segmenter):
        name, device = "fake", "cpu"
        manifest = Manifest(input_size=16)

        def __call__(self, frames):
            z = np.zeros((len(frames), 16, 16), np.float32)
            return SegOutput(np.zeros(len(frames), np.float32), z, z.astype(np.uint8))

    seg = ActiveAreaSegmenter(Inner())
    f = _video_frame()
    seg.warmup(*f.shape[:2])
    b = seg(f[None]).boxes[0]
    assert b == detect_box(f) and b.x0 > 150  # the octagon, not the noise frame's whole area
