"""What is in a photo, for the motion engine: where the subject, the faces, the sky, water and
foliage are. Classical image analysis only (OpenCV, numpy); no model, nothing downloaded.

Everything is measured on a small copy (``ANALYSIS_SIDE`` px on the long side) and returned as soft
masks (float32 0..1) at that size; ``pipeline.living`` scales them to the frame. A region is only
reported when the evidence is clear: a region the analysis is not sure of is left out, and what is
left out stays still.

- **pad bands**: a photo that ``fit_to_size`` placed over a blurred copy of itself is analysed only
  inside the placed box (the band above and below is detail-free and symmetric);
- **faces**: OpenCV's frontal-face Haar cascade (the copy bundled in pipeline/assets), and its
  cat-face cascade where the OpenCV build ships one; faces are always subject and never warped;
- **subject**: GrabCut seeded by spectral-residual saliency (Hou & Zhang 2007) and the faces, the
  frame border as background;
- **sky**: blue (or bright cloud next to blue), smooth, connected to the top edge and above
  everything else in its column;
- **water**: blue-green, with mostly horizontal texture (ripples), below a sky that was found and
  reaching both sides of the picture;
- **foliage**: green and finely textured, away from the subject and the faces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.frame import HAAR_CASCADE, haar_available, saliency_map

ANALYSIS_SIDE = 384  # long side of the copy every mask is computed on
_MIN_SKY = 0.05  # a sky smaller than 5% of the picture is not worth moving (and more likely wrong)
_MIN_WATER = 0.05
_MIN_FOLIAGE = 0.03
_MIN_SUBJECT, _MAX_SUBJECT = 0.02, 0.70  # a "subject" outside these shares of the picture is no subject


@dataclass
class Region:
    """One part of the picture: a soft mask at analysis size and how sure the analysis is."""

    kind: str  # subject, sky, water, foliage
    mask: np.ndarray  # float32 0..1, analysis size
    confidence: float  # 0..1
    how: str  # what found it, in words

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())

    def describe(self) -> dict[str, Any]:
        ys, xs = np.nonzero(self.mask > 0.5)
        h, w = self.mask.shape
        box = [round(float(xs.min()) / w, 3), round(float(ys.min()) / h, 3),
               round(float(xs.max() + 1) / w, 3), round(float(ys.max() + 1) / h, 3)] if len(xs) else None
        return {"fraction": round(self.fraction, 3), "confidence": round(self.confidence, 2), "box": box,
                "found_by": self.how}


@dataclass
class Scene:
    """The analysis of one frame-sized photo. Boxes are [x0, y0, x1, y1] in photo pixels."""

    size: tuple[int, int]  # the photo's (width, height)
    analysis_size: tuple[int, int]
    placed_box: tuple[int, int, int, int]  # the real photo inside pad bands (the whole frame when none)
    faces: list[tuple[int, int, int, int]] = field(default_factory=list)
    protect: np.ndarray | None = None  # float32 0..1, analysis size: faces and subject, never displaced
    regions: dict[str, Region] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"faces": [list(f) for f in self.faces], "placed_box": list(self.placed_box),
                "regions": {name: region.describe() for name, region in self.regions.items()}}


# -- helpers -----------------------------------------------------------------------------------
def _small(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = min(1.0, ANALYSIS_SIDE / max(h, w))
    if scale >= 1.0:
        return rgb.copy()
    return cv2.resize(rgb, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)


def _texture(grey: np.ndarray) -> np.ndarray:
    """Local detail (0..255 scale): mean gradient magnitude over a 5x5 neighbourhood."""
    g = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 0.8)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.blur(np.sqrt(gx * gx + gy * gy) / 4.0, (5, 5))


def _touching_top(mask: np.ndarray, top: int, min_pixels: int) -> np.ndarray:
    """The connected parts of a binary mask that touch row ``top`` and have at least min_pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    keep = np.zeros(count, dtype=bool)
    for label in set(int(v) for v in labels[top]) - {0}:
        keep[label] = stats[label, cv2.CC_STAT_AREA] >= min_pixels
    return keep[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes enclosed by the mask (a cloud, a bird in the sky) become part of it."""
    inverse = (~mask).astype(np.uint8)
    count, labels, _, _ = cv2.connectedComponentsWithStats(inverse, connectivity=4)
    border = set(labels[0]) | set(labels[-1]) | set(labels[:, 0]) | set(labels[:, -1])
    hole = np.isin(labels, [label for label in range(1, count) if label not in border])
    return mask | hole


def _soft(mask: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    return np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma), 0.0, 1.0)


# -- pad bands -------------------------------------------------------------------------------------
def placed_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """Where the real photo is when ``fit_to_size`` padded it: two equal, detail-free bands (top and
    bottom, or left and right), each ending in a straight step (the photo's edge). The whole frame
    when there are none."""
    h, w = rgb.shape[:2]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    detail = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 1.5))
    for axis, length in ((1, h), (0, w)):  # rows (bands above and below), then columns
        flat = detail.mean(axis=axis) < 0.35  # a blur of radius max(w, h) / 30 leaves almost no detail
        band = 0
        while band < length // 2 and flat[band] and flat[length - 1 - band]:
            band += 1
        if band < max(4, length // 50) or band >= length // 2 or flat[band:length - band].mean() > 0.5:
            continue
        lines = grey if axis == 1 else grey.T
        step = np.abs(np.diff(lines, axis=0)).mean(axis=1)  # step[i]: between line i and i + 1
        near = slice(band - 1, min(length // 2, band + 8))
        top = band - 1 + int(np.argmax(step[near])) + 1  # first line of the photo
        bottom = length - 1 - (band - 1 + int(np.argmax(step[::-1][near])))  # one past its last line
        typical = float(np.median(step))
        if abs(top - (length - bottom)) <= 2 and min(step[top - 1], step[bottom - 1]) > max(3.0, 4.0 * typical):
            return (0, top, w, bottom) if axis == 1 else (top, 0, bottom, h)
    return (0, 0, w, h)


# -- faces -------------------------------------------------------------------------------------------
def _cascades() -> list[tuple[str, Any]]:
    if not haar_available():
        return []
    found = [("face", cv2.CascadeClassifier(str(HAAR_CASCADE)))]
    data = getattr(cv2, "data", None)
    cat = Path(getattr(data, "haarcascades", "")) / "haarcascade_frontalcatface_extended.xml"
    if data is not None and cat.is_file():
        found.append(("cat face", cv2.CascadeClassifier(str(cat))))
    return [(name, c) for name, c in found if not c.empty()]


def find_faces(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Frontal faces (people, and cats where OpenCV ships that cascade), [x0, y0, x1, y1] in pixels."""
    h, w = rgb.shape[:2]
    scale = min(1.0, 640 / max(h, w))
    grey = cv2.cvtColor(cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
                        if scale < 1 else rgb, cv2.COLOR_RGB2GRAY)
    grey = cv2.equalizeHist(grey)
    side = max(20, round(min(grey.shape) * 0.06))
    faces = []
    for _, cascade in _cascades():
        for x, y, fw, fh in cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(side, side)):
            faces.append((round(x / scale), round(y / scale), round((x + fw) / scale), round((y + fh) / scale)))
    if faces:  # beside a big face (a selfie), a much smaller "face" is far more likely a false match
        largest = max(f[2] - f[0] for f in faces)
        faces = [f for f in faces if f[2] - f[0] >= 0.4 * largest]
    return faces


# -- regions ---------------------------------------------------------------------------------------
def _sky(hsv: np.ndarray, texture: np.ndarray, inside: np.ndarray) -> Region | None:
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    blue = (hue >= 88) & (hue <= 132) & (sat >= 30) & (val >= 90) & (texture < 8.0)
    pale = (((hue >= 85) & (hue <= 135) & (sat >= 12)) | (sat <= 60)) & (val >= 150) & (texture < 20.0)  # cloud
    h, w = blue.shape
    top = int(np.argmax(inside.any(axis=1)))
    # blue and cloud together, as one region touching the top of the photo that is largely blue:
    # grey skies and bright walls look alike, so a sky without blue is left still
    candidate = cv2.morphologyEx(((blue | pale) & inside).astype(np.uint8), cv2.MORPH_CLOSE,
                                 np.ones((3, 3), np.uint8)) > 0
    candidate &= (texture < 10.0) | (val >= 170)  # a skyline's edge stops the sky; a cloud's edge is bright
    band = candidate[top:top + max(2, h // 20)]  # what the sky looks like at the top of the photo
    if band.any():  # a hazy blue hill is darker than the sky above it
        candidate &= val >= 0.8 * float(np.median(val[top:top + max(2, h // 20)][band]))
    candidate = _touching_top(candidate & inside, top, max(16, round(0.02 * h * w)))
    if float((blue & candidate).sum()) < 0.4 * max(1.0, float(candidate.sum())) or candidate.mean() < _MIN_SKY:
        return None
    candidate = _fill_holes(candidate) & inside
    candidate[:top] = True  # the pad band above the photo does not break the columns' runs
    # sky is above everything else in its column: below a long run of non-sky (not a cloud's edge) none
    side = max(3, h // 48)
    solid = cv2.morphologyEx((~candidate).astype(np.uint8), cv2.MORPH_OPEN, np.ones((side, side), np.uint8))
    run = _fill_holes(candidate & (np.cumsum(solid, axis=0) == 0)) & inside
    run = cv2.morphologyEx(run.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    fraction = float(run.mean())
    if fraction < _MIN_SKY or float(np.nonzero(run)[0].mean()) > 0.55 * h:
        return None
    blue_share = float((blue & run).sum()) / max(1.0, float(run.sum()))
    smooth = float((texture[run] < 8.0).mean())
    confidence = min(1.0, 0.5 * smooth + 0.5 * min(1.0, blue_share / 0.6))
    if confidence < 0.6:
        return None
    inner = cv2.erode(run.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # the feather stays inside the sky
    return Region("sky", _soft(inner, 1.0), confidence, "blue, smooth, connected to the top edge, above the rest")


def _water(hsv: np.ndarray, grey: np.ndarray, inside: np.ndarray, sky: Region, protect: np.ndarray) -> Region | None:
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    h, w = grey.shape
    g = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 0.8)
    gx, gy = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)), np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))
    ex, ey = cv2.blur(gx, (9, 9)), cv2.blur(gy, (9, 9))
    ripples = (ey > 1.25 * ex) & (ey > 6.0)  # horizontal streaks: brightness changes mostly up-down
    colour = (hue >= 80) & (hue <= 130) & (sat >= 25) & (val >= 40)
    sky_rows = np.nonzero(sky.mask > 0.5)[0]
    below = np.arange(h)[:, None] > (sky_rows.max() if len(sky_rows) else h // 3)
    candidate = cv2.morphologyEx((colour & ripples & below & inside).astype(np.uint8), cv2.MORPH_CLOSE,
                                 np.ones((7, 7), np.uint8))
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)) > 0
    candidate &= protect < 0.5
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidate.astype(np.uint8), connectivity=4)
    keep = [label for label in range(1, count)
            if stats[label, cv2.CC_STAT_WIDTH] >= 0.8 * w and stats[label, cv2.CC_STAT_AREA] >= 0.02 * h * w]
    water = np.isin(labels, keep)
    if water.mean() < _MIN_WATER:
        return None
    water = cv2.morphologyEx(water.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8)) > 0
    rows = np.arange(h)[:, None]  # water is one band: each column is water from its first to its last water pixel
    first = np.where(water.any(axis=0), np.argmax(water, axis=0), h)
    last = np.where(water.any(axis=0), h - 1 - np.argmax(water[::-1], axis=0), -1)
    water = (rows >= first[None, :]) & (rows <= last[None, :]) & inside & (protect < 0.5)
    water = cv2.erode(water.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    confidence = min(1.0, 0.4 + float(candidate[water].mean()) * 0.6)
    if confidence < 0.6:
        return None
    return Region("water", _soft(water, 1.0), confidence,
                  "blue-green with horizontal ripples, below the sky, from side to side")


def _foliage(hsv: np.ndarray, texture: np.ndarray, inside: np.ndarray, protect: np.ndarray,
             taken: np.ndarray) -> Region | None:
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    green = (hue >= 32) & (hue <= 88) & (sat >= 50) & (val >= 30)
    leafy = green & (texture >= 5.0) & inside & (protect < 0.3) & ~taken
    leafy = cv2.morphologyEx(leafy.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    leafy = cv2.morphologyEx(leafy, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    h, w = leafy.shape
    count, labels, stats, _ = cv2.connectedComponentsWithStats(leafy.astype(np.uint8), connectivity=8)
    keep = [label for label in range(1, count) if stats[label, cv2.CC_STAT_AREA] >= 0.005 * h * w]
    foliage = np.isin(labels, keep) & (protect < 0.3) & ~taken
    if foliage.mean() < _MIN_FOLIAGE:
        return None
    confidence = min(1.0, float((green & inside)[foliage].mean()))
    if confidence < 0.6:
        return None
    return Region("foliage", _soft(foliage, 1.5), confidence, "green and finely textured, away from the subject")


def _subject(small: np.ndarray, saliency: np.ndarray, faces_small: list[tuple[int, int, int, int]],
             background: np.ndarray, inside: np.ndarray) -> Region | None:
    """GrabCut seeded by saliency (analysis size, 0..1) and faces; the picture's border and the regions
    already found (sky, water, foliage) as background."""
    h, w = small.shape[:2]
    seeds = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    seeds[saliency > 0.35] = cv2.GC_PR_FGD
    for x0, y0, x1, y1 in faces_small:  # a face, and the body below it, belong to the subject
        fw, fh = x1 - x0, y1 - y0
        seeds[min(h, y1):min(h, y1 + 3 * fh), max(0, x0 - fw):min(w, x1 + fw)] = cv2.GC_PR_FGD
        seeds[max(0, y0 - fh // 4):y1, x0:x1] = cv2.GC_FGD
    seeds[background & (seeds != cv2.GC_FGD)] = cv2.GC_BGD
    border = max(2, round(0.02 * min(h, w)))
    frame_edge = np.zeros((h, w), bool)
    frame_edge[:border], frame_edge[:, :border], frame_edge[:, -border:] = True, True, True
    seeds[(frame_edge | ~inside) & (seeds != cv2.GC_FGD)] = cv2.GC_BGD
    if not ((seeds == cv2.GC_PR_FGD) | (seeds == cv2.GC_FGD)).any():
        return None
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), seeds, None, bgd, fgd, 4, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # all seeds one class: nothing to separate
        return None
    fg = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = [label for label in range(1, count) if areas[label] >= 0.25 * areas[largest]]
    subject = _fill_holes(np.isin(labels, keep))
    for x0, y0, x1, y1 in faces_small:
        subject[y0:y1, x0:x1] = True
    if not faces_small:  # saliency alone: a region along two or more sides is background, not a subject
        rows, cols = np.nonzero(inside)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        reach = border + 1
        edges = [subject[r0:r0 + reach].any(), subject[r1 - reach:r1].any(),
                 subject[:, c0:c0 + reach].any(), subject[:, c1 - reach:c1].any()]
        if sum(edges) >= 2:
            return None
    fraction = float(subject.mean()) / max(1e-6, float(inside.mean()))
    if not _MIN_SUBJECT <= fraction <= _MAX_SUBJECT:
        return None
    agreement = float(saliency[subject].mean()) / max(1e-6, float(saliency.mean()))
    confidence = 0.9 if faces_small else min(1.0, 0.3 + 0.25 * agreement)
    if confidence < 0.6:
        return None
    how = "GrabCut seeded by faces and saliency" if faces_small else "GrabCut seeded by saliency"
    return Region("subject", _soft(subject, 1.0), confidence, how)


# -- the whole analysis --------------------------------------------------------------------------
def analyse(photo: np.ndarray | Image.Image) -> Scene:
    """Find faces, subject, sky, water and foliage in an RGB photo (uint8 (H, W, 3) or a PIL image)."""
    rgb = np.asarray(photo.convert("RGB")) if isinstance(photo, Image.Image) else photo
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(f"scene analysis needs a uint8 RGB image (H, W, 3), got {rgb.dtype} {rgb.shape}",
                          code="bad_frames")
    h, w = rgb.shape[:2]
    small = _small(rgb)
    sh, sw = small.shape[:2]
    sx, sy = sw / w, sh / h
    box = placed_box(rgb)
    inside = np.zeros((sh, sw), bool)
    inside[round(box[1] * sy):round(box[3] * sy), round(box[0] * sx):round(box[2] * sx)] = True

    faces = find_faces(rgb)
    faces_small = [(round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)) for x0, y0, x1, y1 in faces]
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    texture = _texture(grey)
    face_mask = np.zeros((sh, sw), np.float32)
    for x0, y0, x1, y1 in faces_small:
        fw, fh = x1 - x0, y1 - y0
        body = face_mask[y1:y1 + 3 * fh, max(0, x0 - fw):x1 + fw]  # not foliage or water either
        body[...] = np.maximum(body, 0.5)
        face_mask[max(0, y0 - fh // 3):y1 + fh // 3, max(0, x0 - fw // 3):x1 + fw // 3] = 1.0  # hair and chin too

    scene = Scene(size=(w, h), analysis_size=(sw, sh), placed_box=box, faces=faces)
    sky = _sky(hsv, texture, inside)
    taken = np.zeros((sh, sw), bool)
    if sky is not None:
        sky.mask *= 1.0 - np.minimum(1.0, 2.0 * face_mask)
        scene.regions["sky"] = sky
        taken |= sky.mask > 0.5
        water = _water(hsv, grey, inside, sky, face_mask)
        if water is not None:
            scene.regions["water"] = water
            taken |= water.mask > 0.3
    foliage = _foliage(hsv, texture, inside, face_mask, taken)
    if foliage is not None:
        scene.regions["foliage"] = foliage
        taken |= foliage.mask > 0.5

    y0, y1 = round(box[1] * sy), round(box[3] * sy)
    x0, x1 = round(box[0] * sx), round(box[2] * sx)
    saliency = np.zeros((sh, sw), np.float32)
    saliency[y0:y1, x0:x1] = cv2.resize(saliency_map(Image.fromarray(small[y0:y1, x0:x1])), (x1 - x0, y1 - y0))
    subject = _subject(small, saliency, faces_small, taken, inside)
    protect = np.minimum(1.0, 2.0 * face_mask)
    if subject is not None:
        scene.regions["subject"] = subject
        protect = np.maximum(protect, (cv2.dilate(subject.mask, np.ones((5, 5), np.uint8)) > 0.05).astype(np.float32))
    for name in ("water", "foliage"):  # nothing that moves by itself overlaps the subject or a face
        if name in scene.regions:
            scene.regions[name].mask *= 1.0 - protect
    scene.protect = _soft(protect, 1.5)
    return scene
