"""Intake: turn untrusted upload bytes into one clean 8-bit sRGB RGB image, or refuse them.

Everything after this module trusts its output, so this is where hostile input stops:

1. size in bytes, checked before anything is decoded (a path is ``stat``-ed and never read past
   ``max_bytes + 1``);
2. the format, identified by Pillow restricted to ``limits.formats`` (an EPS never reaches
   Ghostscript, a BMP never reaches its decoder);
3. width x height from the header, against our own ``max_pixels`` (not Pillow's global 89.5 MP
   default) and with Pillow's ``DecompressionBombWarning`` turned into a refusal;
4. one frame only (APNG, animated WebP/GIF are refused: we animate stills; of a multi-picture
   JPEG (MPO, as phones write with gain or depth maps) only the first picture, the photo, is used);
5. minimum side and aspect ratio (both are the same before and after an EXIF rotation);
6. a full decode with ``load()``: ``verify()`` lets truncated JPEGs through, ``load()`` does not;
7. EXIF orientation applied, the embedded ICC profile converted to sRGB, 16-bit / CMYK / palette /
   grey reduced to 8-bit RGB, transparency composited over white;
8. the result rebuilt from raw pixels, so no EXIF, GPS, XMP, ICC, comment or text chunk survives.

Every refusal is an :class:`~pipeline.errors.InputRejected` with a stable ``code``; no Pillow,
``OSError`` or ``ValueError`` escapes for any input bytes.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageFile, UnidentifiedImageError

from pipeline.errors import ConfigError, InputRejected
from pipeline.settings import IntakeSettings

__all__ = ["IntakeResult", "load_image"]

# What Pillow's plugins raise on malformed data (their own fuzzers accept the same families).
# Caught only to be re-raised as InputRejected, never to carry on with a half-read image.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    zlib.error,
)

# Same mapping as PIL.ImageOps.exif_transpose. We apply it ourselves to the final 8-bit image so
# the (possibly malformed) EXIF block we are about to drop is never re-serialised.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Magic numbers, used only to name a refused format in the message (never to accept one).
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"\xffO\xffQ", "JPEG2000"),
    (4, b"jP  ", "JPEG2000"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIF"),
    (4, b"ftypheix", "HEIF"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftyphevc", "HEIF"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML/SVG"),
)


@dataclass(frozen=True)
class IntakeResult:
    """A decoded, cleaned still image and what we learnt about the upload.

    ``image`` is mode ``"RGB"``, 8 bits per channel, sRGB, upright, with ``info == {}``.
    ``facts`` is JSON-serialisable and goes into the job report: ``format``, ``bytes``,
    ``source_width``/``source_height``/``source_mode`` (as stored), ``width``/``height`` (after the
    EXIF turn), ``exif_orientation``, ``exif_transposed``, ``icc_converted``, ``alpha_flattened``,
    ``metadata_removed`` (sorted names of what the upload carried: exif, gps, xmp, icc, comment,
    iptc, text) and ``notes`` (what was tolerated: an unusable ICC profile, unreadable EXIF, ...).
    """

    image: Image.Image
    facts: dict[str, Any]


def load_image(
    source: bytes | bytearray | memoryview | str | os.PathLike[str],
    limits: IntakeSettings | None = None,
) -> IntakeResult:
    """Read an upload (bytes or a path), check it against ``limits`` and return a clean image.

    Raises :class:`InputRejected` (with ``code`` and ``details``) for anything we will not animate,
    :class:`ConfigError` when the process is set up so that intake cannot be safe.
    """
    limits = limits or IntakeSettings()
    _check_process_setup(limits)
    data = _read_source(source, limits)
    facts: dict[str, Any] = {"bytes": len(data)}
    notes: list[str] = []
    image = _decode(data, limits, facts, notes)
    facts["notes"] = notes
    return IntakeResult(image=image, facts=facts)


# --------------------------------------------------------------------------------------------
# 1. bytes


def _check_process_setup(limits: IntakeSettings) -> None:
    """Refuse to run when a global Pillow switch would let truncated files through silently."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ConfigError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated uploads would be "
            "accepted with grey bands; something imported before alive set it. Leave it False.",
            code="pillow_truncated_images",
        )
    if "HEIF" in (f.upper() for f in limits.formats):
        _register_heif()


@cache
def _register_heif() -> None:
    """Teach Pillow HEIF/HEIC through the optional pillow-heif package, once per process."""
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(
            "intake.formats lists HEIF but the optional package pillow-heif is not installed; "
            "install it or remove HEIF from intake.formats.",
            code="heif_unavailable",
        ) from exc
    pillow_heif.register_heif_opener()


def _read_source(source: Any, limits: IntakeSettings) -> bytes:
    """Return the upload's bytes, refusing empty or oversized input before reading it all."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        _check_byte_count(memoryview(source).nbytes, limits)  # before any copy
        return bytes(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_image expects bytes or a path, got {type(source).__name__}")
    path = os.fspath(source)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputRejected(
            f"No file at {path!r}; give the path of an existing image file.",
            code="not_found",
            details={"path": str(path)},
        ) from None
    except OSError as exc:
        raise _unreadable(path, exc.strerror or str(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise _unreadable(path, "it is a directory")
    if not stat.S_ISREG(st.st_mode):
        # FIFOs and devices could block or never end; uploads are plain files.
        raise _unreadable(path, "it is not a regular file")
    _check_byte_count(st.st_size, limits)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise _unreadable(path, exc.strerror or str(exc)) from None
    _check_byte_count(len(data), limits)  # the file may have changed since stat
    return data


def _unreadable(path: str, why: str) -> InputRejected:
    return InputRejected(
        f"Cannot read {path!r}: {why}. Give the path of a readable image file.",
        code="unreadable",
        details={"path": str(path), "reason": why},
    )


def _check_byte_count(size: int, limits: IntakeSettings) -> None:
    if size == 0:
        raise InputRejected(
            f"The upload is empty (0 bytes); send a {_accepted(limits.formats)} photo.",
            code="empty",
            details={"bytes": 0},
        )
    if size > limits.max_bytes:
        raise InputRejected(
            f"The upload is {_megabytes(size)}, larger than the {_megabytes(limits.max_bytes)} limit; "
            "send a smaller or more compressed image.",
            code="too_large",
            details={"bytes": size, "limit": limits.max_bytes},
        )


# --------------------------------------------------------------------------------------------
# 2-6. identify, check the header, decode


def _decode(data: bytes, limits: IntakeSettings, facts: dict[str, Any], notes: list[str]) -> Image.Image:
    allowed = [f.upper() for f in limits.formats]
    img = _open(data, allowed, limits, notes)

    with img:
        width, height = img.size
        facts.update(
            format=img.format,
            source_width=width,
            source_height=height,
            source_mode=img.mode,
        )
        _check_header(img, limits)
        if img.format == "MPO":
            notes.append(f"multi-picture JPEG with {img.n_frames} pictures: used the first (the photo)")
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(limits, exc) from None
        except _DECODE_ERRORS as exc:
            raise _damaged(data, allowed, exc) from None
        if img.size != (width, height):
            raise _damaged(data, allowed, ValueError(f"decoded size {img.size} differs from header"))
        return _clean(img, facts, notes)


# warnings.catch_warnings swaps process-wide filters (thread-local only from Python 3.14). The lock
# keeps two intake threads from restoring each other's filters, and the window is only Image.open,
# which reads the header: microseconds, during which other threads' warnings are recorded here.
_WARNINGS_LOCK = threading.Lock()


def _open(data: bytes, allowed: list[str], limits: IntakeSettings, notes: list[str]) -> ImageFile.ImageFile:
    """Identify the file among ``allowed`` formats and read its header, nothing more.

    Pillow's DecompressionBombWarning is made an error here; our own ``max_pixels`` check follows
    in :func:`_check_header` and is the limit that normally applies (it is lower than Pillow's).
    Other warnings (a malformed MPO header, ...) are kept as notes for the report.
    """
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=allowed)
        except UnidentifiedImageError:
            raise _unidentified(data, allowed) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(limits, exc) from None
        except _DECODE_ERRORS as exc:
            raise _damaged(data, allowed, exc) from None
    notes.extend(f"pillow: {w.message}" for w in caught)
    return img


def _check_header(img: Image.Image, limits: IntakeSettings) -> None:
    """Every check that needs only the header: pixels, frames, format, shape."""
    width, height = img.size
    dims = {"width": width, "height": height}
    if width * height > limits.max_pixels:
        raise InputRejected(
            f"The image is {width}x{height} ({_megapixels(width * height)}), more than the "
            f"{_megapixels(limits.max_pixels)} limit; send a smaller image.",
            code="too_many_pixels",
            details={**dims, "pixels": width * height, "limit": limits.max_pixels},
        )
    try:
        frames = int(getattr(img, "n_frames", 1))
        animated = bool(getattr(img, "is_animated", False)) or frames > 1
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(limits, exc) from None
    except _DECODE_ERRORS as exc:
        raise InputRejected(
            f"The {img.format} file's frame list could not be read ({exc}); send a single still image.",
            code="truncated",
            details={"format": img.format, "error": str(exc)},
        ) from None
    allowed = [f.upper() for f in limits.formats]
    # Phone cameras write multi-picture JPEGs (the photo plus an HDR gain map, depth map or preview).
    # The first picture is the photo itself: it is what gets decoded; the others are ignored.
    fmt = "JPEG" if img.format == "MPO" else img.format
    if animated and img.format != "MPO":
        raise InputRejected(
            f"The {img.format} file holds {frames} frames (animated or multi-picture); "
            "send a single still photo.",
            code="animated",
            details={"format": img.format, "frames": frames},
        )
    if fmt not in allowed:
        raise _unsupported(img.format or "unknown", allowed)
    short, long = sorted((width, height))
    if short < limits.min_side:
        raise InputRejected(
            f"The image is {width}x{height}; its shorter side must be at least {limits.min_side} pixels. "
            "Send a larger image.",
            code="too_small",
            details={**dims, "limit": limits.min_side},
        )
    aspect = long / short
    if aspect > limits.max_aspect:
        raise InputRejected(
            f"The image is {width}x{height}, an aspect ratio of {aspect:.2f}:1; at most "
            f"{limits.max_aspect:g}:1 is accepted. Crop it closer to a portrait or landscape shape.",
            code="bad_aspect",
            details={**dims, "aspect": round(aspect, 4), "limit": limits.max_aspect},
        )


def _sniff(data: bytes) -> str | None:
    head = data[:32]
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _accepted(allowed: list[str]) -> str:
    return ", ".join(allowed[:-1]) + f" or {allowed[-1]}" if len(allowed) > 1 else "".join(allowed)


def _unsupported(fmt: str, allowed: list[str]) -> InputRejected:
    return InputRejected(
        f"The upload is an image in {fmt} format; only {_accepted(allowed)} images are accepted. "
        f"Convert it to {allowed[0]} and send it again.",
        code="unsupported_format",
        details={"format": fmt, "accepted": allowed},
    )


def _unidentified(data: bytes, allowed: list[str]) -> InputRejected:
    fmt = _sniff(data)
    if fmt is not None and fmt not in allowed:
        return _unsupported(fmt, allowed)
    if fmt is not None:
        return _damaged(data, allowed, ValueError("header not recognised"))
    return InputRejected(
        f"The upload ({_megabytes(len(data))}) is not a recognisable image: its first bytes match none "
        f"of {_accepted(allowed)}. Send a photo in one of those formats.",
        code="not_an_image",
        details={"accepted": allowed, "head": data[:8].hex()},
    )


def _damaged(data: bytes, allowed: list[str], exc: BaseException) -> InputRejected:
    fmt = _sniff(data) or "image"
    return InputRejected(
        f"The {fmt} file could not be decoded completely ({exc}); it is truncated or damaged. "
        "Send the original file again.",
        code="truncated",
        details={"format": fmt, "error": str(exc)},
    )


def _bomb(limits: IntakeSettings, exc: BaseException) -> InputRejected:
    """Pillow's own guard fired inside Image.open, before our check could see the size."""
    limit = min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)
    found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (400000000 pixels) exceeds ..."
    pixels = int(found[1]) if found else None
    got = f"{_megapixels(pixels)} ({pixels} pixels)" if pixels else "more pixels than allowed"
    return InputRejected(
        f"The image declares {got}, more than the {_megapixels(limit)} limit; send a smaller image.",
        code="too_many_pixels",
        details={"pixels": pixels, "limit": limit, "error": str(exc)},
    )


# --------------------------------------------------------------------------------------------
# 7-8. orientation, colour, rebuild


def _clean(img: Image.Image, facts: dict[str, Any], notes: list[str]) -> Image.Image:
    """Apply orientation and colour management, then rebuild so no metadata survives."""
    orientation, present = _read_metadata(img, notes)
    icc = img.info.get("icc_profile") or None
    if icc:
        present.append("icc")

    color, alpha = _split_alpha(_to_8bit(img))
    rgb, icc_converted = _to_srgb(color, icc, notes)
    alpha_flattened = False
    if alpha is not None:
        alpha_flattened = alpha.getextrema()[0] < 255
        white = Image.new("RGB", rgb.size, (255, 255, 255))
        white.paste(rgb, (0, 0), alpha)
        rgb = white
    method = _ORIENTATION_TRANSPOSE.get(orientation) if orientation is not None else None
    if method is not None:
        rgb = rgb.transpose(method)

    # Copy the pixels into a fresh image: the one step that guarantees nothing rides along in .info
    # (convert/transpose copy it). Same effect as frombytes(tobytes()), 5x faster, one buffer less.
    clean = Image.new("RGB", rgb.size)
    clean.paste(rgb, (0, 0))
    facts.update(
        width=clean.width,
        height=clean.height,
        exif_orientation=orientation,
        exif_transposed=method is not None,
        icc_converted=icc_converted,
        alpha_flattened=alpha_flattened,
        metadata_removed=sorted(set(present)),
    )
    return clean


def _read_metadata(img: Image.Image, notes: list[str]) -> tuple[int | None, list[str]]:
    """Return the EXIF orientation and the names of the metadata blocks present."""
    info = img.info
    present: list[str] = []
    orientation: int | None = None
    if info.get("exif") or "Raw profile type exif" in info:
        present.append("exif")
    try:
        exif = img.getexif()
        value = exif.get(ExifTags.Base.Orientation)
        if len(exif):
            present.append("exif")
        if exif.get_ifd(ExifTags.IFD.GPSInfo):
            present.append("gps")
    except _DECODE_ERRORS as exc:
        notes.append(f"exif_unreadable: {exc}; orientation not applied")
    else:
        if isinstance(value, int) and 1 <= value <= 8:
            orientation = value
        elif value is not None:
            notes.append(f"exif_orientation_invalid: {value!r} ignored")
    if info.get("xmp") or info.get("XML:com.adobe.xmp"):
        present.append("xmp")
    if info.get("comment"):
        present.append("comment")
    if info.get("photoshop"):
        present.append("iptc")
    text = getattr(img, "text", None) or {}
    if any(k not in ("XML:com.adobe.xmp", "Raw profile type exif") for k in text):
        present.append("text")
    return orientation, present


def _to_8bit(img: Image.Image) -> Image.Image:
    """Reduce 16/32-bit and float grey to 8-bit "L" by scaling, where Pillow's convert would clip."""
    if img.mode.startswith("I;16") or img.mode == "I":
        # PNG is the only accepted format that yields these modes, always with 16-bit samples.
        values = np.asarray(img).astype(np.int64)
        return Image.fromarray(np.clip(values >> 8, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        values = np.nan_to_num(np.asarray(img), nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    return img


def _split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Return (colour image in L, RGB or CMYK, alpha mask or None)."""
    mode = img.mode
    keyed = "transparency" in img.info
    if mode in ("LA", "La") or (mode in ("L", "1") and keyed):
        la = img.convert("LA")
        return la.getchannel("L"), la.getchannel("A")
    if mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and keyed):
        rgba = img.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    if mode in ("L", "RGB", "CMYK"):
        return img, None
    if mode == "1":
        return img.convert("L"), None
    return img.convert("RGB"), None


_ICC_SPACE_FOR_MODE = {"RGB": "RGB", "L": "GRAY", "CMYK": "CMYK"}


@cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _to_srgb(color: Image.Image, icc: bytes | None, notes: list[str]) -> tuple[Image.Image, bool]:
    """Convert through the embedded ICC profile when it is usable; otherwise keep the raw values."""
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            space = profile.profile.xcolor_space.strip()
            if space != _ICC_SPACE_FOR_MODE.get(color.mode):
                notes.append(f"icc_profile_mismatch: {space} profile on a {color.mode} image; not applied")
            else:
                out = ImageCms.profileToProfile(color, profile, _srgb_profile(), outputMode="RGB")
                if out is not None:
                    return out, True
        except (ImageCms.PyCMSError, *_DECODE_ERRORS) as exc:
            notes.append(f"icc_profile_unusable: {exc}; colours used as stored")
    return (color if color.mode == "RGB" else color.convert("RGB")), False


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _megapixels(n: int) -> str:
    return f"{n / 1_000_000:.1f} MP"
