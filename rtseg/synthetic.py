"""Procedural colonoscopy-like images, masks and clips.

Used by the tests (which must make their own data), by ``rtseg stream`` with no ``--source``
(a synthetic demo clip, labelled as such on screen) and by benchmarks that need frames.
Nothing here comes from a real patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class SyntheticSample:
    image: np.ndarray  # RGB uint8 [H, W, 3]
    mask: np.ndarray  # bool [H, W]
    label: str  # "polyp" or "non_polyp"


def _mucosa(rng: np.random.Generator, h: int, w: int, phase: float = 0.0) -> np.ndarray:
    """Pinkish-red tissue with smooth shading, folds and a dark lumen."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w * (0.5 + 0.25 * math.sin(phase * 0.7 + rng.uniform(0, 6.28)))
    cy = h * (0.5 + 0.25 * math.cos(phase * 0.5 + rng.uniform(0, 6.28)))
    r = np.hypot(xx - cx, yy - cy) / max(h, w)
    shade = np.clip(0.35 + 1.1 * r, 0, 1)  # dark lumen in the middle, bright walls
    folds = 0.08 * np.sin(r * rng.uniform(25, 40) + phase)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3) * 0.05
    base = np.clip(shade + folds + noise, 0, 1)
    tint = np.array([rng.uniform(0.75, 0.95), rng.uniform(0.35, 0.5), rng.uniform(0.3, 0.45)],
                    np.float32)
    img = base[..., None] * tint[None, None] * 255
    return np.clip(img, 0, 255)


def _ellipse_mask(rng: np.random.Generator, h: int, w: int, center=None, radius=None) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    s = min(h, w)
    if center is None:
        center = (int(rng.uniform(0.25, 0.75) * w), int(rng.uniform(0.25, 0.75) * h))
    if radius is None:
        radius = rng.uniform(0.1, 0.2) * s
    axes = (max(2, int(radius * rng.uniform(0.8, 1.2))), max(2, int(radius * rng.uniform(0.8, 1.2))))
    cv2.ellipse(mask, (int(center[0]), int(center[1])), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    return mask.astype(bool)


def _paint_polyp(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A raised, brighter, textured blob with a specular highlight."""
    m = mask.astype(np.float32)
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    dome = dist / (dist.max() + 1e-6)
    colour = np.array([rng.uniform(220, 250), rng.uniform(120, 160), rng.uniform(100, 130)], np.float32)
    texture = cv2.GaussianBlur(rng.normal(0, 1, mask.shape).astype(np.float32), (0, 0), 1.5) * 18
    polyp = colour[None, None] * (0.7 + 0.3 * dome[..., None]) + texture[..., None]
    soft = cv2.GaussianBlur(m, (0, 0), 1.5)[..., None]
    out = img * (1 - soft) + polyp * soft
    # specular highlight near the top of the dome
    ys, xs = np.nonzero(dome > 0.85)
    if len(ys):
        k = rng.integers(len(ys))
        cv2.circle(out, (int(xs[k]), int(ys[k])), max(1, int(dist.max() * 0.15)), (255, 255, 255), -1)
    # dark rim (shadow) around the polyp
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask
    out[ring] *= 0.6
    return out


def _border(img: np.ndarray) -> np.ndarray:
    """A black endoscope border (octagon-ish), as in real frames."""
    h, w = img.shape[:2]
    c = int(0.12 * min(h, w))
    pts = np.array([[c, 0], [w - c, 0], [w, c], [w, h - c], [w - c, h], [c, h], [0, h - c], [0, c]],
                   np.int32)
    fov = np.zeros((h, w), np.uint8)
    cv2.fillPoly(fov, [pts], 1)
    return img * fov[..., None]


def make_sample(rng: np.random.Generator | int, size: tuple[int, int] = (64, 64),
                polyp: bool = True, border: bool = True) -> SyntheticSample:
    """One synthetic image ``size`` = (H, W) with (or without) a polyp and its mask."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    h, w = size
    img = _mucosa(rng, h, w, phase=rng.uniform(0, 10))
    mask = _ellipse_mask(rng, h, w) if polyp else np.zeros((h, w), bool)
    if polyp:
        img = _paint_polyp(img, mask, rng)
    if border:
        img = _border(img)
        mask = mask & (img.sum(-1) > 0)
    return SyntheticSample(np.clip(img, 0, 255).astype(np.uint8), mask,
                           "polyp" if polyp else "non_polyp")


def make_dataset(n_polyp: int, n_non_polyp: int, size=(64, 64), seed: int = 0) -> list[SyntheticSample]:
    rng = np.random.default_rng(seed)
    out = [make_sample(rng, size, True) for _ in range(n_polyp)]
    out += [make_sample(rng, size, False) for _ in range(n_non_polyp)]
    return out


def clip_frames(n: int, size=(288, 384), seed: int = 0):
    """Yield ``n`` BGR frames of a smooth synthetic fly-through with a polyp drifting in view."""
    rng = np.random.default_rng(seed)
    h, w = size
    base_rng_state = rng.bit_generator.state
    for i in range(n):
        t = i / 25.0
        frame_rng = np.random.default_rng(seed)  # same tissue every frame; motion from phase
        frame_rng.bit_generator.state = base_rng_state
        img = _mucosa(frame_rng, h, w, phase=t)
        cx = w * (0.5 + 0.3 * math.sin(t * 0.8))
        cy = h * (0.5 + 0.2 * math.cos(t * 0.6))
        r = min(h, w) * (0.12 + 0.04 * math.sin(t * 1.3))
        mask = _ellipse_mask(np.random.default_rng(seed + 1), h, w, (cx, cy), r)
        img = _border(_paint_polyp(img, mask, np.random.default_rng(seed + 2)))
        yield cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def write_video(path, n: int = 50, size=(288, 384), fps: float = 25.0, seed: int = 0) -> None:
    """Write a synthetic clip as mp4 (mp4v) with OpenCV."""
    h, w = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not vw.isOpened():
        raise RuntimeError(f"OpenCV cannot write video {path}")
    try:
        for f in clip_frames(n, size, seed):
            vw.write(f)
    finally:
        vw.release()
