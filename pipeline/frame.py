"""Fit a photo to the generation size (portrait 576x1024 by default) and say exactly what was done.

``crop`` cuts the centre to the target aspect; ``pad`` keeps the whole photo over a blurred, darkened
copy of itself; ``auto`` crops unless that would throw away more than 40% of the picture.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageEnhance, ImageFilter

from pipeline.errors import ConfigError

STRATEGIES = ("auto", "crop", "pad")
_AUTO_MIN_KEPT = 0.6


def _crop_box(w: int, h: int, tw: int, th: int) -> tuple[int, int, int, int]:
    target = tw / th
    if w / h > target:  # too wide: cut the sides
        cw = round(h * target)
        x0 = (w - cw) // 2
        return x0, 0, x0 + cw, h
    ch = round(w / target)
    y0 = (h - ch) // 2
    return 0, y0, w, y0 + ch


def fit_to_size(image: Image.Image, width: int, height: int, strategy: str = "auto") -> tuple[Image.Image, dict[str, Any]]:
    """Return the framed RGB image of exactly ``width`` x ``height`` and a JSON-able record of the change."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"frame strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}", code="bad_option")
    w, h = image.size
    box = _crop_box(w, h, width, height)
    kept = ((box[2] - box[0]) * (box[3] - box[1])) / float(w * h)
    chosen = strategy
    if strategy == "auto":
        chosen = "crop" if kept >= _AUTO_MIN_KEPT else "pad"

    record: dict[str, Any] = {"strategy": chosen, "requested": strategy, "source_size": [w, h], "size": [width, height]}
    if chosen == "crop":
        region = image.crop(box)
        framed = region.resize((width, height), Image.Resampling.LANCZOS)
        record.update(crop_box=list(box), kept_fraction=round(kept, 4), scale=round(width / region.size[0], 4))
    else:
        scale = min(width / w, height / h)
        fw, fh = max(1, round(w * scale)), max(1, round(h * scale))
        background = image.resize((width, height), Image.Resampling.BILINEAR)
        background = background.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 30))
        background = ImageEnhance.Brightness(background).enhance(0.55)
        framed = background
        framed.paste(image.resize((fw, fh), Image.Resampling.LANCZOS), ((width - fw) // 2, (height - fh) // 2))
        record.update(placed_box=[(width - fw) // 2, (height - fh) // 2, (width - fw) // 2 + fw, (height - fh) // 2 + fh],
                      scale=round(scale, 4), background="blurred, darkened copy of the photo")
    record["upscaled"] = record["scale"] > 1.0
    return framed.convert("RGB"), record
