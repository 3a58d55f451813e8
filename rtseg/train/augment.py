"""Augmentation of network views for training through the network: what other endoscopes,
light modes and distances do to a frame.

A view (the active area of a frame, uint8 RGB) and its per-pixel targets (polyp mask, pseudo-
mask, loss weights: float maps of the view's size) go through the same random geometry (zoom in
for close-ups, zoom out for small polyps, rotation, flips; the area outside the frame is black,
as the endoscope's border is, and its targets are "no polyp"); the image alone then through the
photometric changes seen across hospitals (brightness, contrast, gamma, hue, saturation,
white balance, a narrow-band-like colour mix, blur, sensor noise, JPEG, specular highlights).
The output has the network's input size, so the manifest's preprocessing (normalisation,
field-of-view mask) follows unchanged, exactly as at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    size: int = 224  # output side (the network's input size)
    zoom: tuple[float, float] = (0.6, 1.7)  # < 1: zoomed out (small polyps); > 1: close-up
    rotate: float = 180.0  # degrees either way (the endoscope's view has no "up")
    shift: float = 0.1  # of the side
    brightness: float = 0.25
    contrast: float = 0.25
    gamma: tuple[float, float] = (0.7, 1.5)
    hue: float = 10.0  # degrees either way
    saturation: float = 0.35
    white_balance: float = 0.15  # per-channel gain either way
    p_narrow_band: float = 0.15  # a narrow-band / linked-colour-like colour mix
    p_blur: float = 0.3
    p_noise: float = 0.2
    p_jpeg: float = 0.3
    p_specular: float = 0.3


def geometry(rng: np.random.Generator, h: int, w: int, cfg: AugmentConfig) -> np.ndarray:
    """A random 2 x 3 affine map from an h x w view to the size x size output."""
    s = cfg.size
    zoom = float(np.exp(rng.uniform(np.log(cfg.zoom[0]), np.log(cfg.zoom[1]))))
    angle = float(rng.uniform(-cfg.rotate, cfg.rotate))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m = np.vstack([m, [0, 0, 1]])
    sx, sy = s / w * zoom, s / h * zoom
    if rng.random() < 0.5:  # mirror
        sx = -sx
    scale = np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])
    to_centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    dx, dy = rng.uniform(-cfg.shift, cfg.shift, 2) * s
    back = np.array([[1, 0, s / 2 + dx], [0, 1, s / 2 + dy], [0, 0, 1]])
    return (back @ scale @ to_centre @ m)[:2]


def photometric(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """The colour, light and sensor changes of another endoscope (uint8 RGB in and out)."""
    x = img.astype(np.float32) / 255.0
    lit = x.max(axis=2, keepdims=True) > 0.02  # leave the black border black
    x = x * rng.uniform(1 - cfg.white_balance, 1 + cfg.white_balance, 3).astype(np.float32)
    if rng.random() < cfg.p_narrow_band:  # narrow-band-like: red suppressed, green/blue carry the texture
        g = x @ np.array([0.2, 0.6, 0.2], np.float32)
        x = np.stack([g * rng.uniform(0.3, 0.7), g * rng.uniform(0.8, 1.1), g * rng.uniform(0.7, 1.1)], -1)
    x = np.clip(x, 0, 1)
    x = x ** rng.uniform(*cfg.gamma)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    x = x * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    u8 = (np.clip(x, 0, 1) * 255).astype(np.uint8)
    hsv = cv2.cvtColor(u8, cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(round(rng.uniform(-cfg.hue, cfg.hue) / 2))) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation), 0, 255)
    u8 = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    if rng.random() < cfg.p_specular:
        u8 = specular(u8, rng)
    if rng.random() < cfg.p_blur:
        u8 = cv2.GaussianBlur(u8, (0, 0), rng.uniform(0.5, 1.8))
    if rng.random() < cfg.p_noise:
        u8 = np.clip(u8 + rng.normal(0, rng.uniform(2, 8), u8.shape), 0, 255).astype(np.uint8)
    if rng.random() < cfg.p_jpeg:
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 90))])
        if ok:
            u8 = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return np.where(lit, u8, 0).astype(np.uint8)


def specular(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A few small saturated highlights, as wet mucosa reflects the endoscope's light."""
    out = img.copy()
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        ax = (int(rng.integers(1, max(2, w // 25))), int(rng.integers(1, max(2, h // 25))))
        cv2.ellipse(out, c, ax, float(rng.uniform(0, 180)), 0, 360, (255, 255, 255), -1)
    return out


def augment(view: np.ndarray, maps: list[np.ndarray], rng: np.random.Generator, cfg: AugmentConfig,
            fill: list[float] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """(augmented view [S, S, 3] uint8, each map warped the same way [S, S] float32). ``fill``:
    each map's value outside the view (default 0: no polyp)."""
    h, w = view.shape[:2]
    a = geometry(rng, h, w, cfg)
    s = cfg.size
    img = cv2.warpAffine(view, a, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    fill = fill or [0.0] * len(maps)
    out = []
    for mp, fv in zip(maps, fill):
        mp = cv2.resize(mp.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) if mp.shape != (h, w) else mp
        out.append(cv2.warpAffine(mp.astype(np.float32), a, (s, s), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=float(fv)))
    return photometric(img, rng, cfg), out
