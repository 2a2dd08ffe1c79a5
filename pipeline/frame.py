"""Fit a photo to the generation size, and the generated clip to the story size, saying exactly what was done.

Photo -> generation input (``fit_to_size``):

- ``crop`` cuts a window of the target aspect, centred on the middle, the most salient region
  (spectral residual, Hou & Zhang 2007) or the largest face (OpenCV's Haar cascade);
- ``pad`` keeps the whole photo over a blurred, darkened copy of itself;
- ``auto`` crops unless that would throw away more than 40% of the picture;
- ``fit-generate`` crops minimally to a generation size chosen near the photo's own shape
  (``generation_size_for``); the clip is then padded into the portrait story by ``fit_clip_to_story``.

Clip -> story frames (``fit_clip_to_story``): a plain resize when the aspect matches, else each frame
whole over a blurred, darkened copy of itself.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from pipeline.errors import ConfigError

STRATEGIES = ("auto", "crop", "pad", "fit-generate")
FOCUSES = ("centre", "saliency", "face")
FACE_BACKENDS = ("none", "haar")
RESAMPLERS = ("auto", "lanczos", "area", "cubic")
_AUTO_MIN_KEPT = 0.6
_SALIENCY_SIDE = 64  # Hou & Zhang compute the spectral residual at about 64 px: the scale of "objects"
_FACE_SIDE = 640  # faces are looked for on a copy at most this large (speed; faces stay >= 24 px)
_SAME_ASPECT = 0.02  # clips within 2% of the story's aspect (320x576 in 9:16) are resized: no visible stretch
_PAD_BLUR_SIDE = 96  # the pad background is blurred at about this short side, then scaled up
HAAR_CASCADE = Path(__file__).resolve().parent / "assets" / "cascades" / "haarcascade_frontalface_default.xml"
_CV2_RESAMPLERS = {"lanczos": cv2.INTER_LANCZOS4, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}", code="bad_option")


# -- where a crop goes -----------------------------------------------------------------------------
def _crop_size(w: int, h: int, tw: int, th: int) -> tuple[int, int]:
    """The largest window of the target aspect inside a ``w`` x ``h`` photo."""
    target = tw / th
    if w / h > target:  # too wide: cut the sides
        return min(w, round(h * target)), h
    return w, min(h, round(w / target))


def _window(w: int, h: int, cw: int, ch: int, cx: float, cy: float) -> tuple[int, int, int, int]:
    """A ``cw`` x ``ch`` box centred on (cx, cy) as far as the photo allows."""
    x0 = min(max(0, math.floor(cx - cw / 2)), w - cw)
    y0 = min(max(0, math.floor(cy - ch / 2)), h - ch)
    return x0, y0, x0 + cw, y0 + ch


def saliency_map(image: Image.Image) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang, CVPR 2007) of a small grey copy, normalised to 0..1.

    The log amplitude spectrum minus its local average is what is *unexpected* in the image; back in
    the spatial domain (with the original phase) it lights up regions that stand out.
    """
    w, h = image.size
    scale = _SALIENCY_SIDE / max(w, h)
    grey = np.asarray(image.convert("L").resize((max(8, round(w * scale)), max(8, round(h * scale))),
                                                Image.Resampling.BOX), dtype=np.float32)
    spectrum = np.fft.fft2(grey)
    log_amplitude = np.log(np.abs(spectrum) + 1e-8).astype(np.float32)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3), borderType=cv2.BORDER_REPLICATE)
    back = np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))
    saliency = cv2.GaussianBlur((np.abs(back) ** 2).astype(np.float32), (0, 0), sigmaX=2.5)
    top = float(saliency.max())
    return saliency / top if top > 0 else saliency


def _salient_centre(image: Image.Image) -> tuple[float, float]:
    """Centroid of the clearly salient part (above 3x the mean, as Hou & Zhang threshold objects),
    in photo coordinates; the photo's middle when nothing stands out."""
    saliency = saliency_map(image)
    weights = np.clip(saliency - 3.0 * saliency.mean(), 0.0, None)
    total = float(weights.sum())
    w, h = image.size
    if total <= 0:
        return w / 2, h / 2
    ys, xs = np.indices(weights.shape)
    sx, sy = w / weights.shape[1], h / weights.shape[0]
    return (float((weights * xs).sum()) / total + 0.5) * sx, (float((weights * ys).sum()) / total + 0.5) * sy


def haar_available() -> bool:
    """Whether this OpenCV build has ``CascadeClassifier``: OpenCV 5 moved it from opencv-python(-headless)
    to opencv-contrib-python(-headless). Check at start-up when ``frame.face_backend`` is ``haar``."""
    return hasattr(cv2, "CascadeClassifier")


_loaded = threading.local()  # one classifier per thread: detectMultiScale keeps state in the object


def _haar_cascade() -> Any:
    if getattr(_loaded, "cascade", None) is not None:
        return _loaded.cascade
    if not haar_available():
        raise ConfigError("frame.face_backend=haar needs cv2.CascadeClassifier, which OpenCV 5's "
                          "opencv-python-headless no longer has; install opencv-contrib-python-headless "
                          "instead, or set frame.face_backend=none (saliency)", code="face_backend_unavailable")
    cascade = cv2.CascadeClassifier(str(HAAR_CASCADE))
    if cascade.empty():
        raise ConfigError(f"could not load the face cascade {HAAR_CASCADE}; reinstall alive",
                          code="face_backend_unavailable")
    _loaded.cascade = cascade
    return cascade


def largest_face(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The largest frontal face as [x0, y0, x1, y1] in photo coordinates, or None."""
    cascade = _haar_cascade()
    w, h = image.size
    scale = min(1.0, _FACE_SIDE / max(w, h))
    small = image.convert("L")
    if scale < 1:
        small = small.resize((round(w * scale), round(h * scale)), Image.Resampling.BOX)
    grey = cv2.equalizeHist(np.asarray(small))
    min_side = max(24, round(min(grey.shape) * 0.06))
    faces = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(faces) == 0:
        return None
    x, y, fw, fh = max(faces, key=lambda f: int(f[2]) * int(f[3]))
    return (round(x / scale), round(y / scale), round((x + fw) / scale), round((y + fh) / scale))


def _crop_box(image: Image.Image, tw: int, th: int, focus: str,
              face_backend: str) -> tuple[tuple[int, int, int, int], dict[str, Any]]:
    """The crop window and a record of how its centre was chosen."""
    w, h = image.size
    cw, ch = _crop_size(w, h, tw, th)
    if focus == "centre" or (cw, ch) == (w, h):  # nothing to choose when the whole photo fits
        return _window(w, h, cw, ch, w / 2, h / 2), {"focus": "centre"}
    chosen: dict[str, Any] = {"focus": focus}
    if focus == "face":
        chosen["face_backend"] = face_backend
        face = largest_face(image) if face_backend == "haar" else None
        if face is not None:
            chosen["face_box"] = list(face)
            return _window(w, h, cw, ch, (face[0] + face[2]) / 2, (face[1] + face[3]) / 2), chosen
        chosen["fallback"] = "saliency"
        chosen["fallback_reason"] = ("no face found" if face_backend == "haar"
                                     else "no face detector (face_backend=none)")
    cx, cy = _salient_centre(image)
    chosen["salient_centre"] = [round(cx), round(cy)]
    return _window(w, h, cw, ch, cx, cy), chosen


# -- photo -> generation input ---------------------------------------------------------------------
def generation_size_for(photo_size: tuple[int, int], base_size: tuple[int, int]) -> tuple[int, int]:
    """The generation size nearest the photo's shape: the base size, the base turned sideways, or a
    square of the same pixel count (rounded to multiples of 64). Ties go to the base (the story's own
    orientation), then the square. Every side is a multiple of 8."""
    (pw, ph), (bw, bh) = photo_size, base_size
    side = max(64, round(math.sqrt(bw * bh) / 64) * 64)
    candidates = [(bw, bh), (side, side), (bh, bw)]
    photo = math.log(pw / ph)
    width, height = min(candidates, key=lambda size: round(abs(photo - math.log(size[0] / size[1])), 6))
    return max(8, round(width / 8) * 8), max(8, round(height / 8) * 8)


def fit_to_size(image: Image.Image, width: int, height: int, strategy: str = "auto", *, focus: str = "centre",
                face_backend: str = "none", darken: float = 0.45) -> tuple[Image.Image, dict[str, Any]]:
    """Return the framed RGB image of exactly ``width`` x ``height`` and a JSON-able record of the change.

    ``focus`` places a crop (centre, saliency, face); ``face_backend`` finds faces for ``focus="face"``
    (haar, or none = saliency); ``darken`` (0..1) is how much darker the pad background is.
    """
    _choice("frame strategy", strategy, STRATEGIES)
    _choice("frame crop focus", focus, FOCUSES)
    _choice("frame face backend", face_backend, FACE_BACKENDS)
    if not 0.0 <= darken <= 1.0:
        raise ConfigError(f"pad darken must be within 0..1, got {darken}", code="bad_option")
    image = image.convert("RGB")
    w, h = image.size
    cw, ch = _crop_size(w, h, width, height)
    kept = (cw * ch) / float(w * h)
    chosen = strategy
    if strategy == "auto":
        chosen = "crop" if kept >= _AUTO_MIN_KEPT else "pad"

    record: dict[str, Any] = {"strategy": chosen, "requested": strategy, "source_size": [w, h], "size": [width, height]}
    if chosen in ("crop", "fit-generate"):
        box, how = _crop_box(image, width, height, focus, face_backend)
        region = image.crop(box)
        framed = region.resize((width, height), Image.Resampling.LANCZOS)
        record.update(crop_box=list(box), kept_fraction=round(kept, 4), scale=round(width / region.size[0], 4), **how)
    else:
        scale = min(width / w, height / h)
        fw, fh = max(1, round(w * scale)), max(1, round(h * scale))
        background = image.resize((width, height), Image.Resampling.BILINEAR)
        background = background.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 30))
        framed = ImageEnhance.Brightness(background).enhance(1.0 - darken)
        x0, y0 = (width - fw) // 2, (height - fh) // 2
        framed.paste(image.resize((fw, fh), Image.Resampling.LANCZOS), (x0, y0))
        record.update(placed_box=[x0, y0, x0 + fw, y0 + fh], scale=round(scale, 4), darken=darken,
                      background="blurred, darkened copy of the photo")
    record["upscaled"] = record["scale"] > 1.0
    return framed, record


# -- clip -> story ---------------------------------------------------------------------------------
def _interpolation(resampler: str, upscaling: bool) -> tuple[str, int]:
    name = ("lanczos" if upscaling else "area") if resampler == "auto" else resampler
    return name, _CV2_RESAMPLERS[name]


def fit_clip_to_story(frames: np.ndarray, width: int, height: int, *, resampler: str = "auto",
                      darken: float = 0.45) -> tuple[np.ndarray, dict[str, Any]]:
    """Turn the generated clip (uint8 (F, h, w, 3), any size) into story frames (F, height, width, 3).

    Same aspect (within 2%, recorded as ``aspect_change``): a resize (``auto`` = Lanczos up, area down).
    Other aspects: each frame whole, centred over a blurred copy of itself that fills the story,
    darkened by ``darken``.
    Returns the frames and a record {how: none|resize|pad, from, to, resampler, ...}.
    """
    _choice("story resampler", resampler, RESAMPLERS)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ConfigError("fit_clip_to_story needs uint8 frames shaped (F, H, W, 3), "
                          f"got {frames.dtype} {frames.shape}", code="bad_frames")
    if not 0.0 <= darken <= 1.0:
        raise ConfigError(f"pad darken must be within 0..1, got {darken}", code="bad_option")
    src_h, src_w = frames.shape[1:3]
    record: dict[str, Any] = {"from": [src_w, src_h], "to": [width, height]}
    if (src_w, src_h) == (width, height):
        return frames, {**record, "how": "none"}

    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    stretch = (width / height) / (src_w / src_h) - 1.0  # how much wider the picture becomes
    if abs(stretch) <= _SAME_ASPECT:
        name, flag = _interpolation(resampler, width > src_w)
        for i, frame in enumerate(frames):
            cv2.resize(frame, (width, height), dst=out[i], interpolation=flag)
        return out, {**record, "how": "resize", "resampler": name, "aspect_change": round(stretch, 4)}

    scale = min(width / src_w, height / src_h)
    fw, fh = min(width, round(src_w * scale)), min(height, round(src_h * scale))
    x0, y0 = (width - fw) // 2, (height - fh) // 2
    name, flag = _interpolation(resampler, scale > 1.0)
    # the background: the middle of the frame at the story's aspect, shrunk, blurred, darkened, enlarged
    cw, ch = _crop_size(src_w, src_h, width, height)
    cx0, cy0 = (src_w - cw) // 2, (src_h - ch) // 2
    shrink = _PAD_BLUR_SIDE / min(width, height)
    small_size = (max(8, round(width * shrink)), max(8, round(height * shrink)))
    sigma = max(small_size) / 30
    for i, frame in enumerate(frames):
        small = cv2.resize(frame[cy0:cy0 + ch, cx0:cx0 + cw], small_size, interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma)
        if darken:
            small = cv2.convertScaleAbs(small, alpha=1.0 - darken)
        cv2.resize(small, (width, height), dst=out[i], interpolation=cv2.INTER_LINEAR)
        out[i, y0:y0 + fh, x0:x0 + fw] = cv2.resize(frame, (fw, fh), interpolation=flag)
    return out, {**record, "how": "pad", "resampler": name, "placed_box": [x0, y0, x0 + fw, y0 + fh],
                 "darken": darken, "background": "blurred, darkened copy of the frame"}


# -- frames that share pixels ----------------------------------------------------------------------
def pixels_key(frame: np.ndarray) -> tuple:
    """What identifies a frame's pixels in memory (data pointer, shape, strides): a looped story is a
    list of views of its cycle's frames, so two entries with one key are one frame shown twice."""
    return frame.__array_interface__["data"][0], frame.shape, frame.strides


def distinct_frames(frames) -> list[np.ndarray]:
    """The frames of ``frames`` that own distinct pixels (``pixels_key``), first view of each, in order."""
    seen: set[tuple] = set()
    distinct = []
    for frame in frames:
        key = pixels_key(frame)
        if key not in seen:
            seen.add(key)
            distinct.append(frame)
    return distinct
