"""Tests of rtseg.features: the four LIRE descriptors, extraction from files and the cache.

Known-answer images are built here; two compact literal ports of LIRE's loops (edge histogram,
Tamura) check the vectorised code on small random images.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest

import rtseg.features as F
from rtseg.errors import UserError
from rtseg.features.cache import FEATURES_VERSION, FeatureCache, default_cache_path, file_key
from rtseg.features.color_histogram import color_histogram
from rtseg.features.edge_histogram import block_size, edge_histogram, grey_levels, java_luma
from rtseg.features.luminance_layout import luminance_layout
from rtseg.features.tamura import (coarseness, contrast, directionality, grey_thumbnail,
                                   linear_grey, tamura)


def rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(grey, np.uint8)[..., None], 3, axis=2)


def stripes(h: int, w: int, period: int, vertical: bool = True) -> np.ndarray:
    axis = np.arange(w if vertical else h)
    on = ((axis // (period // 2)) % 2 == 1).astype(np.uint8) * 200 + 30
    return np.tile(on, (h, 1)) if vertical else np.tile(on[:, None], (1, w))


def checkerboard(n: int, cell: int) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n]
    return ((((x // cell) + (y // cell)) % 2) * 255).astype(np.uint8)


# ---------------------------------------------------------------- API


def test_names_slices_and_shapes():
    assert F.N_FEATURES == 226 == len(F.FEATURE_NAMES) == len(set(F.FEATURE_NAMES))
    assert F.FEATURE_SLICES == {"edge_histogram": slice(0, 80), "tamura": slice(80, 98),
                                "luminance_layout": slice(98, 162),
                                "color_histogram": slice(162, 226)}
    for name, sl in F.FEATURE_SLICES.items():
        assert all(n.startswith(name) for n in F.FEATURE_NAMES[sl])
    assert F.FEATURE_NAMES[80:83] == ["tamura_coarseness", "tamura_contrast", "tamura_dir_0"]
    assert F.FEATURE_NAMES[0] == "edge_histogram_0" and F.FEATURE_NAMES[-1] == "color_histogram_63"


def test_extract_images_of_different_sizes(rng):
    sizes = [(1, 1), (2, 3), (5, 700), (48, 64), (300, 200), (1100, 1500)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    x = F.extract(images)
    assert x.dtype == np.float32 and x.shape == (len(sizes), 226)
    assert np.isfinite(x).all()
    for img, row in zip(images, x):
        np.testing.assert_array_equal(F.extract_one(img), row)
        sl = F.FEATURE_SLICES
        assert row[sl["edge_histogram"]].min() >= 0 and row[sl["edge_histogram"]].max() <= 7
        assert row[sl["luminance_layout"]].max() <= 31
        assert row[sl["color_histogram"]].max() == 255
    assert F.extract([]).shape == (0, 226)
    # each descriptor is batch-capable
    assert edge_histogram(images[2:4]).shape == (2, 80)
    assert tamura(images[2:4]).shape == (2, 18)
    assert luminance_layout(images[2:4]).shape == (2, 64)
    assert color_histogram(images[2:4]).shape == (2, 64)
    # non-contiguous views are fine
    view = images[4][::2, ::3]
    np.testing.assert_array_equal(F.extract_one(view), F.extract_one(np.ascontiguousarray(view)))


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                                 np.zeros((8, 8, 4), np.uint8), np.zeros((0, 8, 3), np.uint8)])
def test_extract_rejects_bad_images(bad):
    with pytest.raises(UserError):
        F.extract_one(bad)


def test_lire_prescale():
    assert F.lire_prescale(np.zeros((1072, 1920, 3), np.uint8)).shape == (572, 1024, 3)
    assert F.lire_prescale(np.zeros((2000, 1000, 3), np.uint8)).shape == (1024, 512, 3)
    small = np.zeros((700, 1024, 3), np.uint8)
    assert F.lire_prescale(small) is small
    # extract_one works on the pre-scaled image: same features either way
    img = cv2.resize(checkerboard(64, 8), (1600, 1200), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(F.extract_one(rgb(img)), F.extract_one(F.lire_prescale(rgb(img))))


# ---------------------------------------------------------------- colour histogram


def test_color_histogram_flat_colour_one_bin():
    for colour, expected_bin in [((200, 50, 100), 2 * 16 + 1 * 4 + 1), ((0, 0, 0), 0),
                                 ((255, 255, 255), 63), ((42, 43, 213), 0 * 16 + 1 * 4 + 3),
                                 ((127, 128, 212), 1 * 16 + 2 * 4 + 2)]:
        img = np.empty((30, 40, 3), np.uint8)
        img[:] = colour
        h = color_histogram(img)
        assert h.dtype == np.float32 and h.shape == (64,)
        assert np.count_nonzero(h) == 1 and h[expected_bin] == 255, colour


def test_color_histogram_matches_per_pixel_rounding(rng):
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    q = np.floor(img / 85.0 + 0.5).astype(np.int64)  # LIRE: Math.round(v / 85d) per channel
    counts = np.bincount((16 * q[..., 0] + 4 * q[..., 1] + q[..., 2]).ravel(), minlength=64)
    np.testing.assert_array_equal(color_histogram(img), counts * 255 // counts.max())
    np.testing.assert_array_equal(color_histogram(img[..., 0]), color_histogram(rgb(img[..., 0])))


def test_color_histogram_max_normalised():
    img = np.zeros((4, 8, 3), np.uint8)
    img[:, 6:] = (255, 0, 0)  # 24 black pixels, 8 red
    h = color_histogram(img)
    assert h[0] == 255 and h[48] == 255 * 8 // 24 == 85 and np.count_nonzero(h) == 2


# ---------------------------------------------------------------- edge histogram


def test_grey_levels_are_javas():
    rng = np.random.default_rng(3)
    px = rng.integers(0, 256, (20000, 3))
    # and every colour where the exact value is an integer (S = 128000), where Java differs
    r, g = np.mgrid[0:256, 0:256]
    num = 128000 - 299 * r - 587 * g
    ok = (num >= 0) & (num % 114 == 0) & (num // 114 <= 255)
    px = np.concatenate([px, np.stack([r[ok], g[ok], num[ok] // 114], 1)]).astype(np.uint8)
    img = px.reshape(1, -1, 3)
    expected = java_luma(px[:, 0], px[:, 1], px[:, 2])
    assert (expected[-ok.sum():] == 125).any()  # the quirk exists...
    np.testing.assert_array_equal(grey_levels(img)[0], expected)  # ...and is reproduced


def test_edge_histogram_stripes_and_flat():
    assert block_size(622, 529) == 16 and block_size(10, 10) == 2
    v = edge_histogram(stripes(256, 256, 16, vertical=True)).reshape(16, 5)
    h = edge_histogram(stripes(256, 256, 16, vertical=False)).reshape(16, 5)
    assert (v[:, 0] >= 4).all() and (v[:, 1:] == 0).all()  # vertical bins only
    assert (h[:, 1] >= 4).all() and (np.delete(h, 1, axis=1) == 0).all()
    assert (edge_histogram(np.full((100, 120, 3), 90, np.uint8)) == 0).all()
    # same answer for a grey image and its RGB version
    np.testing.assert_array_equal(edge_histogram(stripes(90, 130, 10)),
                                  edge_histogram(rgb(stripes(90, 130, 10))))


def test_edge_histogram_ties_go_to_the_earlier_kernel():
    # quarters (0, 15, 5, 10) above a base: vertical and non-directional strengths are both 20;
    # LIRE keeps the first maximum (strict >), so every block is vertical
    grey_of = java_luma(*(np.arange(256),) * 3).astype(int)  # grey level of sRGB grey v
    v = {int(y): int(np.flatnonzero(grey_of == y)[0]) for y in np.unique(grey_of)}
    base = int(grey_of[60])
    cell = np.array([[v[base], v[base + 15]], [v[base + 5], v[base + 10]]], np.uint8)
    img = np.tile(cell, (44, 44))  # 88 x 88: 2-pixel blocks, one pixel per quarter
    assert block_size(88, 88) == 2
    h = edge_histogram(img).reshape(16, 5)
    assert (h[:, 0] == 7).all() and (h[:, 1:] == 0).all()


_QT = [[0.010867, 0.057915, 0.099526, 0.144849, 0.195573, 0.260504, 0.358031, 0.530128],
       [0.012266, 0.069934, 0.125879, 0.182307, 0.243396, 0.314563, 0.411728, 0.564319],
       [0.004193, 0.025852, 0.046860, 0.068519, 0.093286, 0.123490, 0.161505, 0.228960],
       [0.004174, 0.025924, 0.046232, 0.067163, 0.089655, 0.115391, 0.151904, 0.217745],
       [0.006778, 0.051667, 0.108650, 0.166257, 0.224226, 0.285691, 0.356375, 0.450972]]


def _edge_histogram_loops(img: np.ndarray) -> np.ndarray:
    """LIRE's EdgeHistogramImplementation, loop by loop (grey[x][y] indexing)."""
    hgt, wid = img.shape[:2]
    grey = java_luma(img[..., 0], img[..., 1], img[..., 2]).T.astype(np.float64)
    a = int(math.sqrt(wid * hgt / 1100.0))
    bs = int(math.floor(a / 2) * 2) or 2
    hb = bs >> 1
    filters = [(1.0, -1.0, 1.0, -1.0), (1.0, 1.0, -1.0, -1.0), (math.sqrt(2), 0.0, 0.0, -math.sqrt(2)),
               (0.0, math.sqrt(2), -math.sqrt(2), 0.0), (2.0, -2.0, -2.0, 2.0)]
    local, count = np.zeros(80), np.zeros(16)
    for j in range(0, hgt - bs + 1, bs):
        for i in range(0, wid - bs + 1, bs):
            sub = int((i << 2) / wid) + (int((j << 2) / hgt) << 2)
            count[sub] += 1
            avg = [grey[i + m0:i + m1, j + n0:j + n1].sum() * (4 / (bs * bs))
                   for m0, m1, n0, n1 in ((0, hb, 0, hb), (hb, bs, 0, hb), (0, hb, hb, bs), (hb, bs, hb, bs))]
            strengths = []
            for f in filters:
                s = 0.0
                for k in range(4):
                    s += avg[k] * f[k]
                strengths.append(abs(s))
            best = 0
            for t in range(1, 5):
                if strengths[t] > strengths[best]:
                    best = t
            if strengths[best] >= 11:
                local[sub * 5 + best] += 1
    out = np.zeros(80)
    for b in range(80):
        value = local[b] / count[b // 5]
        for q in range(8):
            out[b] = q
            if value <= ((_QT[b % 5][q] + _QT[b % 5][q + 1]) / 2.0 if q < 7 else 1.0):
                break
    return out


@pytest.mark.parametrize("shape", [(61, 97), (75, 140), (120, 90)])
def test_edge_histogram_matches_lire_loops(shape):
    rng = np.random.default_rng(shape[0])
    noise = rng.integers(0, 256, (shape[0] // 6 + 1, shape[1] // 6 + 1, 3), dtype=np.uint8)
    img = cv2.resize(noise, shape[::-1], interpolation=cv2.INTER_LINEAR)  # edges of all kinds
    expected = _edge_histogram_loops(img)
    assert expected.sum() > 20
    np.testing.assert_array_equal(edge_histogram(img), expected)


# ---------------------------------------------------------------- Tamura


def test_linear_grey_is_javas_cs_gray():
    # Java: sRGB grey 100 -> CS_GRAY 32, 50 -> 8 (CS_GRAY is linear)
    px = np.array([[[0, 0, 0], [50, 50, 50], [100, 100, 100], [255, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(linear_grey(px)[0], [0, 8, 32, 255])
    assert linear_grey(np.array([[[0, 255, 0]]], np.uint8))[0, 0] > 150  # green is bright
    assert linear_grey(np.array([[[0, 0, 255]]], np.uint8))[0, 0] < 20  # blue is dark


def test_tamura_thumbnail_size():
    assert grey_thumbnail(np.zeros((480, 640, 3), np.uint8)).shape == (48, 64)
    assert grey_thumbnail(np.zeros((529, 622, 3), np.uint8)).shape == (54, 64)
    assert grey_thumbnail(np.zeros((30, 20, 3), np.uint8)).shape == (30, 20)  # never upscaled


def test_tamura_directionality_peaks():
    vertical = directionality(stripes(64, 64, 8, vertical=True))
    horizontal = directionality(stripes(64, 64, 8, vertical=False))
    n = 62 * 62
    assert vertical.sum() == n == horizontal.sum()
    # x gradient only: atan(+-inf) -> bins 15 and 0 (flat pixels, 0/0, also go to bin 0)
    assert vertical[0] + vertical[15] == n and vertical[15] > 0.2 * n
    # y gradient only: atan(0) -> bin 7
    assert horizontal[7] > 0.45 * n and horizontal[7] == horizontal[1:].max()
    assert horizontal[7] + horizontal[0] == n
    # a 45 degree ramp: equal x and y gradients -> atan(1) = pi/4 -> bin int(3 pi / 4 / 0.2) = 11
    ramp = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8)
    assert directionality(ramp)[11] == n
    assert tamura(rgb(stripes(64, 64, 8)))[2:].argmax() in (0, 15)


def test_tamura_coarseness_ordered():
    # LIRE only weighs 4- against 16-pixel windows, so it is not monotonic in the cell size
    # (cells of 4 or 8 score like cells of 1); 1-2 pixel cells vs 12-16 pixel cells are ordered.
    fine = max(coarseness(checkerboard(64, 1)), coarseness(checkerboard(64, 2)))
    coarse = min(coarseness(checkerboard(64, 12)), coarseness(checkerboard(64, 16)))
    assert fine + 0.5 < coarse
    flat = np.full((40, 50), 77, np.uint8)
    assert coarseness(flat) == pytest.approx(2.0 * 38 * 48 / (40 * 50))  # k = 1 everywhere
    assert 2.0 * 62 * 62 / 64 ** 2 <= fine and coarse <= 4.0 * 62 * 62 / 64 ** 2


def test_tamura_contrast_known_values():
    assert contrast(np.full((10, 10), 9, np.uint8)) == 0.0
    two = np.zeros((10, 10), np.uint8)
    two[:, 5:] = 255  # sigma = 127.5; LIRE's m4 is a sum, so alpha4 = N = 100
    assert contrast(two) == pytest.approx(127.5 / 100 ** 0.25)


def _tamura_loops(g: np.ndarray) -> np.ndarray:
    """LIRE's Tamura coarseness and directionality, loop by loop (grayScales[x][y])."""
    G = g.T.astype(np.int64)
    W, H = G.shape

    def avg(x, y, k):
        o, n = int(2 ** (k - 1)), 4 ** k
        s = 0.0
        for i in range(n):
            for j in range(n):
                s += G[min(max(x - o + i, 0), W - 1), min(max(y - o + j, 0), H - 1)]
        return (1 / 4 ** k) * s

    total = 0.0
    hist = np.zeros(16)
    for x in range(1, W - 1):
        for y in range(1, H - 1):
            best, kmax = 0.0, 1
            for k in range(3):
                o = int(2 ** (k - 1))
                d = max(abs(avg(x + o, y, k) - avg(x - o, y, k)), abs(avg(x, y + o, k) - avg(x, y - o, k)))
                if best < d:
                    best, kmax = d, k
            total += 2.0 ** kmax
            d_h = float((G[x - 1:x + 2, y + 1] - G[x - 1:x + 2, y - 1]).sum())  # LIRE's deltaH
            d_v = float((G[x + 1, y - 1:y + 2] - G[x - 1, y - 1:y + 2]).sum())  # LIRE's deltaV
            ratio = d_v / d_h if d_h else (math.copysign(math.inf, d_v) if d_v else math.nan)
            v = (math.pi / 2 + math.atan(ratio)) / (3 / 15)
            hist[0 if math.isnan(v) else int(v)] += 1
    return np.array([(1.0 / (W * H)) * total, *hist])


def test_tamura_matches_lire_loops():
    rng = np.random.default_rng(7)
    for shape, sigma in (((19, 26), 0.6), ((24, 21), 2.0)):
        g = cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (0, 0), sigma)
        expected = _tamura_loops(g)
        assert coarseness(g) == expected[0]
        np.testing.assert_array_equal(directionality(g), expected[1:])


# ---------------------------------------------------------------- luminance layout


def test_luminance_layout_ramp_ordered_left_to_right():
    ramp = rgb(np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1)))
    layout = luminance_layout(ramp).reshape(8, 8)
    assert (np.diff(layout, axis=1) >= 0).all() and (layout[:, 0] < layout[:, -1]).all()
    assert (layout == layout[0]).all()  # every row the same
    assert layout[0, 0] == 0 and layout[0, -1] >= 24
    # LIRE's bug (scale to 32 on an 8-pixel canvas) would only see the left quarter
    corner = luminance_layout(ramp, lire_bug_compatible=True).reshape(8, 8)
    assert corner.max() < layout.max() and (np.diff(corner, axis=1) >= 0).all()


def test_luminance_layout_white_stripes_and_grey_levels():
    wide = np.zeros((32, 64, 3), np.uint8)  # drawn 8 x 4 at rows 2..5, white rows around
    layout = luminance_layout(wide).reshape(8, 8)
    assert (layout[[0, 1, 6, 7]] == 31).all() and (layout[2:6] == 0).all()
    mid = np.full((16, 16, 3), 100, np.uint8)  # linear grey 32 -> 32 // 8 = 4
    assert (luminance_layout(mid) == 4).all()


# ---------------------------------------------------------------- files and cache


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for i, (h, w) in enumerate([(40, 60), (64, 64), (50, 30), (90, 120)]):
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.0)
        p = tmp_path / "imgs" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def count_calls(monkeypatch) -> list:
    calls = []
    real = F.extract_one

    def counting(img):
        calls.append(img.shape)
        return real(img)

    monkeypatch.setattr(F, "extract_one", counting)
    return calls


def test_extract_paths_skips_unreadable(image_files, tmp_path):
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    missing = tmp_path / "imgs" / "missing.png"
    paths = [image_files[0], bad, image_files[1], missing, image_files[2]]
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image") as rec:
        x, ok, skipped = F.extract_paths(paths, workers=2)
    assert len(rec) == 1 and "broken.jpg" in str(rec[0].message)
    assert ok == [image_files[0], image_files[1], image_files[2]] and skipped == [bad, missing]
    assert x.shape == (3, 226) and x.dtype == np.float32
    for row, p in zip(x, ok):  # rows in input order, decoded RGB
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(row, F.extract_one(img))
    x1, _, _ = F.extract_paths(image_files, workers=1, progress=True)
    x2, _, _ = F.extract_paths(image_files, workers=3)
    np.testing.assert_array_equal(x1, x2)
    empty = F.extract_paths([])
    assert empty[0].shape == (0, 226) and empty[1:] == ([], [])


def test_cache_hits_and_misses_on_mtime(image_files, tmp_path, monkeypatch):
    calls = count_calls(monkeypatch)
    cache_file = tmp_path / "cache" / "features.npz"
    x1, ok1, _ = F.extract_paths(image_files, cache=FeatureCache(cache_file))
    assert len(calls) == 4 and cache_file.is_file()

    cache = FeatureCache(cache_file)  # a fresh instance: read back from disk
    x2, ok2, _ = F.extract_paths(image_files, cache=cache)
    assert len(calls) == 4 and cache.hits == 4 and cache.misses == 0
    np.testing.assert_array_equal(x1, x2)
    assert ok1 == ok2

    st = os.stat(image_files[2])
    os.utime(image_files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    cache = FeatureCache(cache_file)
    x3, _, _ = F.extract_paths(image_files, cache=cache)
    assert len(calls) == 5 and cache.misses == 1 and cache.hits == 3
    np.testing.assert_array_equal(x1, x3)  # same content, recomputed
    assert image_files[2] in FeatureCache(cache_file)  # the new mtime was saved
    assert len(FeatureCache(cache_file)) == 4  # one entry per path


def test_cache_location_and_robustness(tmp_path, monkeypatch, image_files):
    monkeypatch.setenv("RTSEG_CACHE_DIR", str(tmp_path / "envcache"))
    assert default_cache_path() == tmp_path / "envcache" / "features.npz"
    assert FeatureCache().path == tmp_path / "envcache" / "features.npz"
    monkeypatch.delenv("RTSEG_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert FeatureCache().path == tmp_path / "home" / ".cache" / "rtseg" / "features.npz"

    # an unreadable cache file is ignored with a warning, then overwritten
    path = tmp_path / "c.npz"
    path.write_bytes(b"garbage")
    cache = FeatureCache(path)
    with pytest.warns(UserWarning, match="unreadable feature cache"):
        assert len(cache) == 0
    key = file_key(image_files[0])
    cache.put(key, np.arange(226, dtype=np.float32))
    assert cache.save() and FeatureCache(path).get(key)[5] == 5
    assert FeatureCache(path).get(image_files[0])[7] == 7  # a path works as a key
    assert FeatureCache(path).get(image_files[1]) is None

    # a cache written for another feature definition is ignored
    with np.load(path) as z:
        data = dict(z)
    data["version"] = np.array(FEATURES_VERSION + "-old")
    with open(path, "wb") as fh:
        np.savez(fh, **data)
    assert FeatureCache(path).get(key) is None

    # two caches on one file: the second save merges the first one's entries
    a, b = FeatureCache(path), FeatureCache(path)
    len(a), len(b)
    a.put(file_key(image_files[1]), np.ones(226, np.float32))
    b.put(file_key(image_files[2]), np.zeros(226, np.float32))
    a.save()
    b.save()
    merged = FeatureCache(path)
    assert image_files[1] in merged and image_files[2] in merged


def test_cache_that_cannot_be_saved_only_warns(tmp_path, image_files):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = FeatureCache(blocker / "sub" / "features.npz")  # parent is a file
    with pytest.warns(UserWarning, match="cannot save the feature cache"):
        x, ok, _ = F.extract_paths(image_files[:1], cache=cache)
    assert x.shape == (1, 226) and len(cache) == 1  # still usable in memory
