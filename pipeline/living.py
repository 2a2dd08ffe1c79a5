"""A photo that lives: the parts of the scene that move by themselves move, the camera may float.

``LivingPhoto(photo, scene, style=, cycle=, fps=, strength=, seed=).render(i, out)`` writes frame
``i`` of a loop of ``cycle`` frames into ``out``, straight at the photo's size, as uint8, one frame
at a time (every buffer it needs is made once, none per frame). Every motion is periodic in
``cycle``: frame ``cycle`` would be frame 0 again, so a story made of whole cycles loops without a
seam and without playing backwards.

- **sky**: clouds drift by advection along one smooth velocity field (faster high up, still at the
  horizon). A loop of pure drift is made Eulerian-style: the sky advected forward from the start and
  backward from the end, blended by the time within the cycle (Holynski et al. 2021, without the
  network). Its colour warms a little towards mid-cycle and comes back.
- **water**: advected the same way, towards the viewer (faster near the bottom), with a faint
  periodic sideways shimmer.
- **foliage**: a periodic sway whose phase travels across the picture like a gust.
- **camera** (parallax): a small closed orbit and a breath of zoom; the subject moves more than the
  background, the background uncovered behind it is filled by OpenCV inpainting.

What moves is only what ``pipeline.scene`` found with confidence; everything else, and every face,
is moved rigidly (with the camera) or not at all. Displacements fall to zero at each region's edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.errors import ConfigError
from pipeline.scene import Region, Scene

STYLES = ("auto", "parallax", "sky", "still-camera")

# amplitudes at strength 1 (motion_bucket_id 127), as fractions of the frame's width (or height).
# Drift and flow are speeds (per second); the camera's orbit, its breath and the sky's colour shift
# are excursions over one cycle, scaled down for cycles under CALM_CYCLE_S so that nothing hurries
# or pulses in a short loop.
SKY_DRIFT = 0.01  # clouds travel 1% of the width per second at the top of the sky
SKY_WARMTH = 0.02  # red up, blue down by up to 2% at mid-cycle
WATER_FLOW = 0.006  # of the height per second, at the bottom of the water
WATER_SHIMMER = 0.0015
LEAF_SWAY = 0.0025
CAMERA_ORBIT = 0.006  # background travel of the camera's orbit
SUBJECT_PARALLAX = 2.0  # the subject moves this many times the background
CAMERA_BREATH = 0.012  # zoom in and out by 1.2%
CALM_CYCLE_S = 2.0


@dataclass(frozen=True)
class Plan:
    """What a style makes move, given what the scene holds."""

    style: str
    sky: bool
    water: bool
    foliage: bool
    camera: bool
    layers: bool  # subject on its own parallax layer
    notes: tuple[str, ...] = ()


def plan_motion(scene: Scene, style: str) -> Plan:
    """Choose what moves: a requested style only moves what the analysis actually found."""
    if style not in STYLES:
        raise ConfigError(f"motion style must be one of {', '.join(STYLES)}, got {style!r}", code="bad_option")
    found = scene.regions
    has = {name: name in found and float(found[name].mask.max()) > 0.5  # (a face may have taken it all)
           for name in ("sky", "water", "foliage", "subject")}
    notes = []
    if style == "parallax":
        plan = Plan(style, False, False, False, True, has["subject"])
    elif style == "sky":
        plan = Plan(style, has["sky"], has["water"], False, False, False)
        if not has["sky"]:
            notes.append("motion style sky: no sky was found with confidence, so nothing moves")
    elif style == "still-camera":
        plan = Plan(style, has["sky"], has["water"], has["foliage"], False, False)
        if not (has["sky"] or has["water"] or has["foliage"]):
            notes.append("motion style still-camera: no sky, water or foliage was found, so nothing moves")
    else:
        plan = Plan(style, has["sky"], has["water"], has["foliage"], True, has["subject"])
    return Plan(**{**plan.__dict__, "notes": tuple(notes)})


def _full_size(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.clip(cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def _box(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask > 0.01)
    h, w = mask.shape
    return (max(0, int(xs.min()) - margin), max(0, int(ys.min()) - margin),
            min(w, int(xs.max()) + 1 + margin), min(h, int(ys.max()) + 1 + margin))


def _height_above_skyline(sky_small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """0 at the skyline below each point (a hill, a roof, a tree top), 1 at the top of the sky: clouds
    drift fastest high up and not at all where they meet what stands against them. The skyline is
    the lowest sky pixel of each column, raised to the highest one nearby (a tree keeps its slow zone)."""
    sky = sky_small > 0.5
    h, w = sky.shape
    lowest = np.where(sky.any(axis=0), h - 1 - np.argmax(sky[::-1], axis=0), 0).astype(np.float32)
    reach = max(3, w // 20)
    raised = cv2.erode(lowest[None, :], np.ones((1, 2 * reach + 1), np.uint8))[0]  # the highest skyline nearby
    skyline = cv2.GaussianBlur(raised[None, :], (0, 0), reach / 2)[0]
    top = float(np.argmax(sky.any(axis=1)))
    rows = np.arange(h, dtype=np.float32)[:, None]
    height = np.clip((skyline[None, :] - rows) / np.maximum(skyline[None, :] - top, 1.0), 0.0, 1.0)
    return cv2.resize(height.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)


def _smooth_noise(h: int, w: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """Smooth random field in -1..1 (a few cells across), for varying a velocity or a phase."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _fill_band(photo: np.ndarray, region: np.ndarray, band_px: int, scale: float) -> np.ndarray:
    """The photo (a crop) with a band round ``region`` (outside it) repainted from the region by
    inpainting at ``scale``, so moving the region's texture never drags in what lies beyond its edge."""
    h, w = photo.shape[:2]
    small_size = (max(8, round(w * scale)), max(8, round(h * scale)))
    small = cv2.resize(photo, small_size, interpolation=cv2.INTER_AREA)
    inside = cv2.resize(region, small_size, interpolation=cv2.INTER_AREA) > 0.5
    reach = max(2, math.ceil(band_px * scale) + 2)
    band = cv2.dilate(inside.astype(np.uint8), np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)).astype(bool) & ~inside
    filled = cv2.inpaint(small, (~inside).astype(np.uint8), 3, cv2.INPAINT_TELEA)  # only the band is used
    weight = cv2.resize(band.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    weight *= 1.0 - np.clip(region * 2.0, 0.0, 1.0)  # never over the region itself
    big = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.blendLinear(big, photo, weight, 1.0 - weight)


class _Advected:
    """A region whose texture flows along one velocity field, looped by the forward/backward blend.
    It renders into buffers it keeps (no per-frame allocations at story size)."""

    def __init__(self, photo: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], vx: np.ndarray,
                 vy: np.ndarray | None, scale: float, shimmer: tuple[float, float] | None = None,
                 warmth: float = 0.0, keep_contrast: bool = False):
        """``mask`` is frame-sized; ``box`` the crop that holds the region and its reach; ``vx``, ``vy``
        (None: 0) the displacement over one whole cycle, inside the box; ``scale`` the analysis'
        size over the photo's (the band round the region is inpainted at that size)."""
        self.box = box
        x0, y0, x1, y1 = box
        crop, inside = photo[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        reach = int(math.ceil(max(float(np.abs(vx).max()), float(np.abs(vy).max()) if vy is not None else 0.0))) + 2
        self.plate = _fill_band(crop, inside, reach, scale)
        # a difference key: where the photo is not what the repainted plate says is there (a branch, a
        # spire thinner than the analysis could see), the photo stays as it is
        differs = np.abs(crop.astype(np.int16) - self.plate).max(axis=2).astype(np.float32)
        self.alpha = np.ascontiguousarray(inside * np.clip(1.0 - (differs - 12.0) / 24.0, 0.0, 1.0))
        self.beta = 1.0 - self.alpha
        self.vx = (vx * inside).astype(np.float32)
        self.vy = None if vy is None else (vy * inside).astype(np.float32)
        gy, gx = np.mgrid[0:y1 - y0, 0:x1 - x0].astype(np.float32)
        self.gx, self.gy = gx, gy
        self.rows = np.arange(y1 - y0, dtype=np.float32)[:, None]
        self.shimmer = shimmer  # (amplitude px, rows per wave) of a sideways ripple, or None
        self.warmth = warmth
        self.keep_contrast = keep_contrast
        self._map_x, self._map_y = np.empty_like(gx), (np.empty_like(gy) if vy is not None else None)
        self._ahead, self._behind = np.empty_like(self.plate), np.empty_like(self.plate)

    def _maps(self, k: float, shift: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Sample positions p + k * v (minus the shimmer's sideways shift)."""
        np.multiply(self.vx, np.float32(k), out=self._map_x)
        self._map_x += self.gx
        self._map_x -= shift
        if self.vy is None:
            return self._map_x, self.gy
        np.multiply(self.vy, np.float32(k), out=self._map_y)
        self._map_y += self.gy
        return self._map_x, self._map_y

    def render(self, t: float) -> np.ndarray:
        """The region's pixels at cycle time t (0..1): plate advected by t, and by t - 1, blended."""
        shift: np.ndarray | float = 0.0
        if self.shimmer is not None:
            amplitude, wavelength = self.shimmer
            shift = (amplitude * np.sin(2 * np.pi * (self.rows / wavelength + t))).astype(np.float32)
        cv2.remap(self.plate, *self._maps(-t, shift), cv2.INTER_LINEAR, dst=self._ahead, borderMode=cv2.BORDER_REFLECT)
        cv2.remap(self.plate, *self._maps(1.0 - t, shift), cv2.INTER_LINEAR, dst=self._behind,
                  borderMode=cv2.BORDER_REFLECT)
        out = cv2.addWeighted(self._ahead, 1.0 - t, self._behind, t, 0.0, dst=self._ahead)
        if self.keep_contrast:
            out = _restore_contrast(out, t, scratch=self._behind)
        if self.warmth:
            out = cv2.LUT(out, _warm_table(self.warmth * math.sin(math.pi * t) ** 2), dst=out)
        return out


def _restore_contrast(blend: np.ndarray, t: float, scratch: np.ndarray) -> np.ndarray:
    """Undo the loss of fine contrast of a blend of two uncorrelated textures (weights 1 - t, t): the
    detail above the local mean is scaled by 1 / sqrt(t^2 + (1 - t)^2), so ripples do not fade and
    come back once per cycle (variance-preserving blending, Heitz & Neyret 2018)."""
    gain = 1.0 / math.sqrt(t * t + (1.0 - t) * (1.0 - t))
    if gain < 1.01:
        return blend
    h, w = blend.shape[:2]
    mean = cv2.resize(cv2.resize(blend, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA), (w, h),
                      dst=scratch, interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(blend, gain, mean, 1.0 - gain, 0.0, dst=blend)


def _warm_table(amount: float) -> np.ndarray:
    levels = np.arange(256, dtype=np.float32)
    gains = (1.0 + amount, 1.0 + 0.3 * amount, 1.0 - amount)  # R, G, B: towards late-afternoon light
    table = np.stack([np.clip(levels * g + 0.5, 0, 255) for g in gains], axis=-1).astype(np.uint8)
    return table.reshape(256, 1, 3)


class _Swaying:
    """A region displaced periodically: leaves swaying in a gust that travels across the picture."""

    def __init__(self, photo: np.ndarray, mask: np.ndarray, amplitude: float, rng: np.random.Generator):
        reach = int(math.ceil(amplitude)) + 2
        self.box = _box(mask, reach)
        x0, y0, x1, y1 = self.box
        self.source = np.ascontiguousarray(photo[y0:y1, x0:x1])
        self.alpha = np.ascontiguousarray(mask[y0:y1, x0:x1])
        self.beta = 1.0 - self.alpha
        h, w = y1 - y0, x1 - x0
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.gx, self.gy = gx, gy
        wavelength = max(32.0, photo.shape[1] / 2.5)
        self.phase = (2 * np.pi * (gx + x0) / wavelength + 1.5 * _smooth_noise(h, w, rng, 5)).astype(np.float32)
        self.amplitude = (amplitude * self.alpha).astype(np.float32)
        self._angle, self._map_x, self._map_y = np.empty_like(gx), np.empty_like(gx), np.empty_like(gx)
        self._out = np.empty_like(self.source)

    def render(self, t: float) -> np.ndarray:
        np.add(self.phase, np.float32(2 * np.pi * t), out=self._angle)
        np.sin(self._angle, out=self._map_x)
        self._map_x *= self.amplitude  # dx
        np.subtract(self.gx, self._map_x, out=self._map_x)
        np.cos(self._angle, out=self._map_y)
        self._map_y *= self.amplitude
        self._map_y *= np.float32(-0.35)  # dy, a third of dx, a quarter turn later: leaves trace ellipses
        self._map_y += self.gy
        return cv2.remap(self.source, self._map_x, self._map_y, cv2.INTER_LINEAR, dst=self._out,
                         borderMode=cv2.BORDER_REFLECT)


class LivingPhoto:
    """Renders the frames of one seamless cycle from a photo and its scene analysis."""

    def __init__(self, photo: np.ndarray, scene: Scene, *, style: str = "auto", cycle: int = 60, fps: float = 30.0,
                 strength: float = 1.0, seed: int = 0):
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise ConfigError(f"a living photo needs uint8 RGB (H, W, 3), got {photo.dtype} {photo.shape}",
                              code="bad_frames")
        if cycle < 1:
            raise ConfigError(f"a cycle needs at least one frame, got {cycle}", code="bad_option")
        self.photo, self.scene, self.cycle, self.strength = photo, scene, cycle, max(0.0, strength)
        self.seconds = cycle / max(1e-6, fps)
        self.calm = min(1.0, self.seconds / CALM_CYCLE_S)  # excursions shrink in short cycles
        self._scale = scene.analysis_size[0] / photo.shape[1]
        self.plan = plan_motion(scene, style) if strength > 0 else Plan(style, False, False, False, False, False,
                                                                        ("strength 0: nothing moves",))
        h, w = photo.shape[:2]
        rng = np.random.default_rng(seed)
        self.moving: list[tuple[str, Any]] = []
        self.details: dict[str, Any] = {}
        s = self.strength
        if self.plan.sky:
            self._add_sky(scene.regions["sky"], rng, s)
        if self.plan.water:
            self._add_water(scene.regions["water"], rng, s)
        if self.plan.foliage:
            mask = _full_size(scene.regions["foliage"].mask, (w, h))
            amplitude = LEAF_SWAY * w * s
            self.moving.append(("foliage", _Swaying(photo, mask, amplitude, rng)))
            self.details["foliage"] = {"motion": "sway", "amplitude_px": round(amplitude, 1),
                                       "period_frames": cycle}
        self.background = photo
        self.camera = None
        if self.plan.camera:
            self._add_camera(rng, s, calm=bool(self.moving))

    # -- regions -----------------------------------------------------------------------------------
    def _add_sky(self, region: Region, rng: np.random.Generator, s: float) -> None:
        h, w = self.photo.shape[:2]
        mask = _full_size(region.mask, (w, h))
        direction = 1.0 if rng.random() < 0.5 else -1.0
        drift = SKY_DRIFT * w * s * self.seconds
        x0, y0, x1, y1 = box = _box(mask, int(math.ceil(1.25 * drift)) + 2)
        height = _height_above_skyline(region.mask, (w, h))[y0:y1, x0:x1]
        speed = drift * height ** 1.5 * (1.0 + 0.2 * _smooth_noise(y1 - y0, x1 - x0, rng, 3))
        warmth = SKY_WARMTH * s * self.calm
        self.moving.append(("sky", _Advected(self.photo, mask, box, direction * speed, None, self._scale,
                                             warmth=warmth)))
        self.details["sky"] = {"motion": "clouds drift " + ("right" if direction > 0 else "left"),
                               "drift_px_per_cycle": round(drift, 1),
                               "colour": f"warms by up to {warmth:.1%} mid-cycle",
                               "loop": "advected forward and backward, blended"}

    def _add_water(self, region: Region, rng: np.random.Generator, s: float) -> None:
        h, w = self.photo.shape[:2]
        mask = _full_size(region.mask, (w, h))
        flow = WATER_FLOW * h * s * self.seconds
        shimmer = (WATER_SHIMMER * w * s, max(8.0, h / 60))
        x0, y0, x1, y1 = box = _box(mask, int(math.ceil(1.25 * flow + shimmer[0])) + 2)
        rows = np.nonzero(mask.max(axis=1) > 0.5)[0]
        top, bottom = int(rows.min()), int(rows.max()) + 1
        near = np.clip((np.arange(y0, y1, dtype=np.float32) - top) / max(1, bottom - top), 0.0, 1.0)
        speed = flow * (0.15 + 0.85 * near[:, None]) * (1.0 + 0.2 * _smooth_noise(y1 - y0, x1 - x0, rng, 4))
        self.moving.append(("water", _Advected(self.photo, mask, box, np.zeros_like(speed), speed, self._scale,
                                               shimmer=shimmer, keep_contrast=True)))
        self.details["water"] = {"motion": "flows towards the viewer, shimmers sideways",
                                 "flow_px_per_cycle": round(flow, 1), "shimmer_px": round(shimmer[0], 1),
                                 "loop": "advected forward and backward, blended"}

    # -- camera and layers -------------------------------------------------------------------------
    def _add_camera(self, rng: np.random.Generator, s: float, calm: bool) -> None:
        h, w = self.photo.shape[:2]
        scale = (0.5 if calm else 1.0) * self.calm  # when the scene moves by itself the camera only floats
        orbit = CAMERA_ORBIT * min(w, h) * s * scale
        self.camera = {"orbit": orbit, "start": float(rng.uniform(0, 2 * np.pi)),
                       "breath": CAMERA_BREATH * s * scale, "turn": 1.0 if rng.random() < 0.5 else -1.0}
        travel = orbit * (SUBJECT_PARALLAX if self.plan.layers else 1.0)
        self.camera["zoom"] = 1.0 + 2.2 * travel / min(w, h)  # margin: no edge ever comes into view
        self.details["camera"] = {"motion": "closed orbit with a breath of zoom", "orbit_px": round(orbit, 1),
                                  "zoom": [round(self.camera["zoom"], 4),
                                           round(self.camera["zoom"] * (1 + self.camera["breath"]), 4)]}
        if self.plan.layers:
            self._add_subject_layer(travel)

    def _add_subject_layer(self, travel: float) -> None:
        h, w = self.photo.shape[:2]
        subject = self.scene.regions["subject"]
        alpha = _full_size(subject.mask, (w, h))
        # the background behind the subject, as far as it can be uncovered, is painted in
        self.background = _inpaint_behind(self.photo, subject.mask, alpha, self.scene.analysis_size)
        x0, y0, x1, y1 = self.layer_box = _box(alpha, 2)
        self.layer = np.ascontiguousarray(self.photo[y0:y1, x0:x1])
        self.layer_alpha = np.ascontiguousarray(alpha[y0:y1, x0:x1])
        # where the layer can go during the cycle: one fixed box, with buffers made once
        corners = np.float32([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]])
        reached = np.concatenate([corners @ self._subject_matrix(t).T for t in np.linspace(0, 1, 33)])
        bx0, by0 = (max(0, int(v) - 2) for v in reached.min(axis=0))
        bx1, by1 = min(w, int(reached[:, 0].max()) + 3), min(h, int(reached[:, 1].max()) + 3)
        self.moved_box = (bx0, by0, bx1, by1)
        self._moved = np.empty((by1 - by0, bx1 - bx0, 3), np.uint8)
        self._moved_alpha = np.empty((by1 - by0, bx1 - bx0), np.float32)
        self._moved_beta = np.empty_like(self._moved_alpha)
        self.details["subject"] = {"motion": f"parallax layer, {SUBJECT_PARALLAX:g}x the background's travel",
                                   "travel_px": round(travel, 1), "behind": "uncovered background inpainted (Telea)",
                                   "warped": False}

    def _camera_matrix(self, t: float, factor: float = 1.0, zoom_extra: float = 0.0) -> np.ndarray:
        """The camera at cycle time t: a closed orbit (``factor`` times the background's) and a breath
        of zoom about the frame's centre. At t = 0 it is only the margin zoom that hides the edges."""
        cam = self.camera
        h, w = self.photo.shape[:2]
        angle = cam["start"] + cam["turn"] * 2 * np.pi * t
        dx = factor * cam["orbit"] * (math.cos(angle) - math.cos(cam["start"]))
        dy = factor * cam["orbit"] * 0.7 * (math.sin(angle) - math.sin(cam["start"]))
        breath = 0.5 - 0.5 * math.cos(2 * np.pi * t)
        zoom = cam["zoom"] * (1.0 + cam["breath"] * breath) * (1.0 + zoom_extra * breath)
        cx, cy = (w - 1) / 2, (h - 1) / 2
        return np.float32([[zoom, 0, cx - zoom * cx + dx], [0, zoom, cy - zoom * cy + dy]])

    def _subject_matrix(self, t: float) -> np.ndarray:
        return self._camera_matrix(t, SUBJECT_PARALLAX, 0.004)

    # -- frames ------------------------------------------------------------------------------------
    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` of the cycle (any integer: the motion is periodic), uint8 (H, W, 3)."""
        return self.render(index, np.empty_like(self.photo))

    def render(self, index: int, out: np.ndarray) -> np.ndarray:
        """Frame ``index`` written into ``out`` (uint8 (H, W, 3)): no frame-sized allocation."""
        t = (index % self.cycle) / self.cycle
        h, w = self.photo.shape[:2]
        canvas = out if self.camera is None else self._scratch()
        np.copyto(canvas, self.background)
        for _, part in self.moving:
            x0, y0, x1, y1 = part.box
            region = canvas[y0:y1, x0:x1]
            cv2.blendLinear(part.render(t), region, part.alpha, part.beta, dst=region)
        if self.camera is None:
            return out
        cv2.warpAffine(canvas, self._camera_matrix(t), (w, h), dst=out, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT)
        if self.plan.layers:
            self._composite_subject(out, t)
        return out

    def _scratch(self) -> np.ndarray:
        if getattr(self, "_canvas", None) is None:
            self._canvas = np.empty_like(self.photo)
        return self._canvas

    def _composite_subject(self, out: np.ndarray, t: float) -> None:
        """The subject's layer, moved rigidly (never warped) by its own, larger, camera travel."""
        x0, y0, _, _ = self.layer_box
        bx0, by0, bx1, by1 = self.moved_box
        matrix = self._subject_matrix(t)
        matrix[:, 2] += matrix[:, 0] * x0 + matrix[:, 1] * y0 - (bx0, by0)  # crop in, crop out
        size = (bx1 - bx0, by1 - by0)
        cv2.warpAffine(self.layer, matrix, size, dst=self._moved, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT)
        cv2.warpAffine(self.layer_alpha, matrix, size, dst=self._moved_alpha, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        np.subtract(np.float32(1.0), self._moved_alpha, out=self._moved_beta)
        region = out[by0:by1, bx0:bx1]
        cv2.blendLinear(self._moved, region, self._moved_alpha, self._moved_beta, dst=region)

    def describe(self) -> dict[str, Any]:
        """Which regions moved and how, for the job report."""
        still = [name for name in ("sky", "water", "foliage") if name in self.scene.regions
                 and name not in self.details]
        return {"style": self.plan.style, "moved": self.details, "found_but_still": still,
                "faces": len(self.scene.faces), "faces_warped": False, "cycle_frames": self.cycle,
                "notes": list(self.plan.notes)}


def _inpaint_behind(photo: np.ndarray, subject_small: np.ndarray, alpha: np.ndarray,
                    small_size: tuple[int, int]) -> np.ndarray:
    """The background plate: the photo, with what lies under the subject painted in from around it
    (inpainted at analysis size, where a hole a little larger than the subject keeps its colours out).
    Only under the subject: everywhere it does not cover, the plate is the photo itself."""
    h, w = photo.shape[:2]
    small = cv2.resize(photo, small_size, interpolation=cv2.INTER_AREA)
    hole = (cv2.dilate(subject_small, np.ones((5, 5), np.uint8)) > 0.05).astype(np.uint8)
    filled = cv2.inpaint(small, hole, 5, cv2.INPAINT_TELEA)
    big = cv2.resize(filled, (w, h), interpolation=cv2.INTER_CUBIC)
    weight = np.clip(alpha * 2.0, 0.0, 1.0)  # under the subject and the inner half of its feathered edge
    return cv2.blendLinear(big, photo, weight, 1.0 - weight)
