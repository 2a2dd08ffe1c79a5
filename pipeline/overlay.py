"""The visible label drawn into every frame of the story: "AI-generated", or "Animated photo".

The C2PA manifest says how the video was made to software that looks; this label says it to people,
including after a platform strips the metadata. It says what the manifest says: "AI-generated" when a
trained model made the frames (svd, tiny: IPTC ``trainedAlgorithmicMedia``), "Animated photo" when the
classical motion engine moved the photo's own pixels (``algorithmicMedia``); a false "AI-generated" is
as much a transparency failure as a missing one. White text on a rounded, semi-transparent dark pill reads
on any background. The label is rendered once with Pillow (FreeType) and alpha-blended into each frame
with numpy, so the per-frame cost is one small blend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.errors import ConfigError
from pipeline.settings import OverlaySettings

AI_LABEL_TEXTS: dict[str, str] = {
    "en": "AI-generated",
    "id": "Dibuat dengan AI",
    "es": "Generado por IA",
    "pt": "Gerado por IA",
    "fr": "Généré par IA",
    "de": "KI-generiert",
}
"""Default label per language when a trained (generative AI) model made the frames."""

ANIMATED_LABEL_TEXTS: dict[str, str] = {
    "en": "Animated photo",
    "id": "Foto dianimasikan",
    "es": "Foto animada",
    "pt": "Foto animada",
    "fr": "Photo animée",
    "de": "Animiertes Foto",
}
"""Default label per language when an algorithm without a trained model animated the photo (motion)."""

LABEL_TEXTS = AI_LABEL_TEXTS
"""The languages with default texts (each has both texts). Only scripts the bundled DejaVu Sans covers
(Latin here); a language in another script (Hindi, Arabic, ...) needs ``overlay.text`` together with
an ``overlay.font`` that has its glyphs."""

BUNDLED_FONT = Path(__file__).resolve().parent / "assets" / "fonts" / "DejaVuSans-Bold.ttf"

_PILL_ALPHA = 0.6  # darkness of the pill at opacity 1: the text stays readable on white
_PAD_X, _PAD_Y = 0.6, 0.25  # padding around the text, in em
_MIN_FONT_PX = 4
_SUPERSAMPLE = 4  # the pill's rounded ends are drawn this much larger, then reduced: smooth edges


def label_text(settings: OverlaySettings, ai_generated: bool = True) -> str:
    """The label's words: ``settings.text`` when given, else the default in ``settings.language`` for
    what made the frames (``ai_generated``: a trained model; else a classical algorithm). A caller
    that does not say gets the AI text: over-disclosing beats hiding AI."""
    if settings.text:
        return settings.text
    if settings.language not in LABEL_TEXTS:
        raise ConfigError(
            f"overlay.language {settings.language!r} has no default label text; choose one of "
            f"{', '.join(sorted(LABEL_TEXTS))}, or set overlay.text", code="bad_option")
    return (AI_LABEL_TEXTS if ai_generated else ANIMATED_LABEL_TEXTS)[settings.language]


def _font(path: Path, size_px: int) -> ImageFont.FreeTypeFont:
    if not path.is_file():
        raise ConfigError(f"overlay.font {path} does not exist; give a TTF/OTF file or leave it unset "
                          "for the bundled DejaVu Sans Bold", code="bad_font")
    try:
        return ImageFont.truetype(str(path), size_px)
    except OSError as exc:
        raise ConfigError(f"overlay.font {path} is not a font Pillow can read ({exc}); give a TTF/OTF file "
                          "or leave it unset for the bundled DejaVu Sans Bold", code="bad_font") from exc


def render_label(text: str, font_path: Path, size_px: int, opacity: float) -> tuple[np.ndarray, np.ndarray]:
    """The label patch as premultiplied colour (h, w, 3) and alpha (h, w, 1), both float32 in 0..1."""
    font = _font(font_path, size_px)
    left, _, right, _ = font.getbbox(text)
    ascent, descent = font.getmetrics()
    pad_x, pad_y = round(_PAD_X * size_px), round(_PAD_Y * size_px)
    width, height = (right - left) + 2 * pad_x, ascent + descent + 2 * pad_y

    text_mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(text_mask).text((pad_x - left, pad_y), text, fill=255, font=font)
    big = Image.new("L", (width * _SUPERSAMPLE, height * _SUPERSAMPLE), 0)
    ImageDraw.Draw(big).rounded_rectangle((0, 0, big.width - 1, big.height - 1), radius=big.height // 2, fill=255)
    pill = big.resize((width, height), Image.Resampling.BOX)

    t = np.asarray(text_mask, dtype=np.float32)[..., None] / 255.0
    p = np.asarray(pill, dtype=np.float32)[..., None] / 255.0 * _PILL_ALPHA
    # white text over a black pill, "over" compositing, then scaled by the overall opacity
    alpha = (t + p * (1.0 - t)) * opacity
    colour = np.repeat(t * opacity, 3, axis=2)
    return colour, alpha


def _place(position: str, frame_w: int, frame_h: int, w: int, h: int, margin: int) -> tuple[int, int]:
    if position in ("top", "bottom"):
        x = (frame_w - w) // 2
    else:
        x = margin if position.endswith("left") else frame_w - margin - w
    y = margin if position.startswith("top") else frame_h - margin - h
    return x, y


def draw_label(frames: np.ndarray, settings: OverlaySettings, ai_generated: bool = True) -> dict[str, Any]:
    """Draw the label into uint8 frames (F, H, W, 3) in place and return what was drawn where.

    ``ai_generated`` picks the default text (see ``label_text``). The text height is ``font_size`` x
    the frame height; text too wide for the frame is set smaller until it fits (never under 4 px).
    The record (text, language, ai_generated, position, box [x0, y0, x1, y1], font, font_px, opacity)
    goes into the job report and the C2PA manifest.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ConfigError(f"draw_label needs uint8 frames shaped (F, H, W, 3), got {frames.dtype} {frames.shape}",
                          code="bad_frames")
    text = label_text(settings, ai_generated)
    font_path = Path(settings.font) if settings.font else BUNDLED_FONT
    frame_h, frame_w = frames.shape[1:3]
    margin = round(settings.margin * frame_w)
    room = frame_w - 2 * margin

    size_px = max(_MIN_FONT_PX, round(settings.font_size * frame_h))
    while True:
        colour, alpha = render_label(text, font_path, size_px, settings.opacity)
        if colour.shape[1] <= room or size_px == _MIN_FONT_PX:
            break
        size_px = max(_MIN_FONT_PX, min(size_px - 1, int(size_px * room / colour.shape[1])))
    h, w = colour.shape[:2]
    if w > room or h > frame_h - 2 * margin:
        raise ConfigError(f"the label {text!r} ({w}x{h} px even at {size_px} px) does not fit a {frame_w}x{frame_h} "
                          "frame; shorten overlay.text or reduce overlay.margin", code="label_too_big")

    x0, y0 = _place(settings.position, frame_w, frame_h, w, h, margin)
    # out = frame * (1 - alpha) + colour, in integers scaled by 255 (15x faster than float32). The sum
    # stays below 2**16: colour <= alpha, so frame * keep + add <= 255 * 255 plus rounding.
    keep = np.broadcast_to(np.round(255.0 * (1.0 - alpha)), (h, w, 3)).astype(np.uint16)
    add = (np.round(colour * 255.0 * 255.0) + 127).astype(np.uint16)
    work = np.empty((h, w, 3), dtype=np.uint16)
    for frame in frames:
        region = frame[y0:y0 + h, x0:x0 + w]
        np.multiply(region, keep, out=work)
        work += add
        work //= 255
        region[...] = work
    return {"text": text, "language": settings.language, "ai_generated": ai_generated,
            "position": settings.position, "box": [x0, y0, x0 + w, y0 + h], "font": font_path.name,
            "font_px": size_px, "opacity": settings.opacity}
