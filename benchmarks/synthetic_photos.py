"""Photos made in code for looking at the motion engine: a landscape (sky, hills, trees, a lake) and a
sky over the sea. No photo with a sky ships in this repository (examples/ are indoor shots), and no
permissively licensed package here carries one, so these are drawn from noise: they are stand-ins,
good enough to see whether clouds drift, water flows and leaves sway, not photographs.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def _noise(h: int, w: int, rng: np.random.Generator, octaves: int = 5, base: int = 4) -> np.ndarray:
    """Fractal value noise in 0..1 (sum of bilinearly enlarged random grids)."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        grid = rng.random((cells + 1, max(2, round(cells * w / h)) + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    return (out - out.min()) / max(1e-6, float(out.max() - out.min()))


def _sky(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    top, horizon = np.array([40, 105, 200], np.float32), np.array([165, 205, 240], np.float32)
    sky = top * (1 - t) + horizon * t + np.zeros((h, w, 3), np.float32)
    clouds = np.clip((_noise(h, w, rng, 6, 3) - 0.52) * 3.0, 0, 1)[..., None]
    sky = sky * (1 - clouds) + np.array([248, 248, 250], np.float32) * clouds
    return sky


def _photo(img: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A little sensor grain, as every real photo has, then 8-bit."""
    img = img + rng.normal(0, 1.8, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))


def landscape(width: int = 1080, height: int = 1440, seed: int = 1) -> Image.Image:
    """Sky with clouds, hills, a band of trees, a lake reflecting the sky."""
    rng = np.random.default_rng(seed)
    h, w = height, width
    img = _sky(h, w, rng)
    xs = np.arange(w, dtype=np.float32)
    ridge = (0.42 * h + 0.05 * h * np.sin(xs / w * 5.0 + 1.0) + 0.03 * h * _noise(1, w, rng, 4, 3)[0]).astype(int)
    trees = (0.55 * h + 0.025 * h * _noise(1, w, rng, 6, 8)[0]).astype(int)
    shore = int(0.66 * h)
    rows = np.arange(h)[:, None]
    hill = (rows >= ridge[None, :]) & (rows < trees[None, :])
    tex = _noise(h, w, rng, 6, 6)
    img[hill] = (np.array([95, 110, 130], np.float32) * (0.8 + 0.4 * tex[..., None]))[hill]
    leaves = (rows >= trees[None, :]) & (rows < shore)
    fine = rng.random((h, w)).astype(np.float32)
    fine = cv2.GaussianBlur(fine, (0, 0), 1.6)
    fine = (fine - fine.min()) / (fine.max() - fine.min())
    green = np.stack([40 + 60 * fine, 95 + 90 * fine, 30 + 40 * fine], -1) * (0.7 + 0.5 * tex[..., None])
    img[leaves] = green[leaves]
    lake = np.broadcast_to(rows >= shore, (h, w))
    reflect = img[np.clip(2 * shore - np.arange(h), 0, h - 1)] * 0.75
    waves = 0.5 + 0.5 * np.sin(np.arange(h)[:, None] * 0.9 + 3 * _noise(h, w, rng, 3, 4))
    water = reflect * (0.85 + 0.25 * waves[..., None]) + np.array([0, 10, 25], np.float32)
    img[lake] = water[lake]
    return _photo(img, rng)


def sky_and_sea(width: int = 1080, height: int = 1920, seed: int = 2) -> Image.Image:
    """Clouds over the sea, a low sun glow, waves with horizontal streaks, sand at the bottom."""
    rng = np.random.default_rng(seed)
    h, w = height, width
    img = _sky(h, w, rng)
    horizon, beach = int(0.5 * h), int(0.86 * h)
    rows = np.arange(h, dtype=np.float32)[:, None]
    depth = np.clip((rows - horizon) / (beach - horizon), 0, 1)
    streak = _noise(h, w // 8, rng, 5, 8)
    streak = cv2.resize(streak, (w, h), interpolation=cv2.INTER_CUBIC)
    waves = 0.5 + 0.5 * np.sin(rows * (0.25 + 1.0 / (0.05 + depth)) * 0.2 + 6 * streak)
    far, near = np.array([20, 80, 120], np.float32), np.array([30, 120, 140], np.float32)
    sea = far * (1 - depth[..., None]) + near * depth[..., None]
    sea = sea * (0.75 + 0.45 * waves[..., None])
    sea_rows = (rows >= horizon) & (rows < beach)
    img[np.broadcast_to(sea_rows, (h, w))] = sea[np.broadcast_to(sea_rows, (h, w))]
    sand = np.broadcast_to(rows >= beach, (h, w))
    grain = _noise(h, w, rng, 6, 10)[..., None]
    img[sand] = (np.array([205, 185, 150], np.float32) * (0.85 + 0.25 * grain))[sand]
    return _photo(img, rng)


def selfie(astronaut: Image.Image) -> Image.Image:
    """A selfie-like close-up: the astronaut photo cropped tight round her face."""
    w, h = astronaut.size
    return astronaut.crop((int(0.06 * w), 0, int(0.62 * w), int(0.62 * h)))
