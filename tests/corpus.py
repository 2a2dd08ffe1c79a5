"""A hostile (and a friendly) image corpus, built in code so no binary fixture is committed.

Every function returns the bytes of one file. Markers (``GPS_MARKER`` ...) are plain ASCII strings
embedded in metadata so a test can search re-encoded output for them.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageCms

GPS_MARKER = "GPSDATUM-MARKER-42"
COMMENT_MARKER = b"SECRET-COMMENT-123"
XMP_MARKER = b"XMP-MARKER-77"
TEXT_MARKER = "PNG-TEXT-MARKER-55"
GPS_LATITUDE = (52.0, 22.0, 12.5)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def solid(size: tuple[int, int] = (96, 96), color=(120, 80, 40), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def quadrants(size: tuple[int, int] = (80, 40)) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right white: shows any flip/turn."""
    w, h = size
    img = Image.new("RGB", size)
    img.paste(RED, (0, 0, w // 2, h // 2))
    img.paste(GREEN, (w // 2, 0, w, h // 2))
    img.paste(BLUE, (0, h // 2, w // 2, h))
    img.paste(WHITE, (w // 2, h // 2, w, h))
    return img


def noise(size: tuple[int, int] = (256, 256), seed: int = 7) -> Image.Image:
    """Incompressible content, so a cut lands in the middle of the entropy-coded data."""
    import random

    rnd = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rnd.getrandbits(8) for _ in range(size[0] * size[1] * 3)))


def png_from_rows(width: int, height: int, bit_depth: int, color_type: int, rows, extra: bytes = b"") -> bytes:
    """Write a PNG by hand (Pillow cannot write 16-bit RGB, and a bomb must stream its rows).

    ``rows`` yields each scanline without its filter byte; ``extra`` is inserted before IDAT.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    parts = []
    for row in rows:
        parts.append(comp.compress(b"\x00" + row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + extra
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------- friendly


def plain_jpeg(size=(96, 96), color=(120, 80, 40)) -> bytes:
    return encode(solid(size, color), "JPEG", quality=95)


def plain_png(size=(96, 96), color=(120, 80, 40)) -> bytes:
    return encode(solid(size, color), "PNG")


def plain_webp(size=(96, 96), color=(120, 80, 40)) -> bytes:
    return encode(solid(size, color), "WEBP", lossless=True)


# ---------------------------------------------------------------------------- hostile


def zero_bytes() -> bytes:
    return b""


def text_as_jpg() -> bytes:
    return b"Hello, this is a shopping list, not a photo.\n- milk\n- eggs\n"


def truncated_jpeg(fraction: float = 0.6) -> bytes:
    data = encode(noise(), "JPEG", quality=95)
    return data[: int(len(data) * fraction)]


def truncated_png(fraction: float = 0.6) -> bytes:
    data = encode(noise(), "PNG")
    return data[: int(len(data) * fraction)]


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG: tens of KB on disk, ``width * height`` pixels once decoded."""
    row = bytes((width + 7) // 8)
    return png_from_rows(width, height, 1, 0, (row for _ in range(height)))


def png16_gray(size=(64, 64), value: int = 0x8000) -> bytes:
    return encode(Image.new("I;16", size, value), "PNG")


def png16_rgb(size=(64, 64), rgb16=(0xFFFF, 0x8000, 0x0100)) -> bytes:
    w, h = size
    row = struct.pack(">HHH", *rgb16) * w
    return png_from_rows(w, h, 16, 2, (row for _ in range(h)))


def cmyk_jpeg(size=(96, 96), cmyk=(0, 255, 255, 0)) -> bytes:
    """Pure red in CMYK (no cyan, full magenta and yellow)."""
    return encode(Image.new("CMYK", size, cmyk), "JPEG", quality=95)


def _two_frames(size=(96, 96)) -> list[Image.Image]:
    return [solid(size, RED), solid(size, BLUE)]


def apng() -> bytes:
    first, second = _two_frames()
    return encode(first, "PNG", save_all=True, append_images=[second], duration=100, loop=0)


def animated_gif() -> bytes:
    first, second = _two_frames()
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def animated_webp() -> bytes:
    first, second = _two_frames()
    return encode(first, "WEBP", save_all=True, append_images=[second], duration=100, loop=0)


def mpo() -> bytes:
    """A multi-picture JPEG, the kind stereo and some phone cameras write."""
    first, second = _two_frames()
    return encode(first, "MPO", save_all=True, append_images=[second])


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def swapped_primaries_icc() -> bytes:
    """sRGB with the red and blue primaries exchanged: a stored (200, 0, 0) *means* sRGB blue."""
    data = bytearray(srgb_icc())
    (count,) = struct.unpack(">I", data[128:132])
    entries = {}
    for i in range(count):
        pos = 132 + 12 * i
        entries[bytes(data[pos : pos + 4])] = pos
    red, blue = entries[b"rXYZ"], entries[b"bXYZ"]
    data[red + 4 : red + 12], data[blue + 4 : blue + 12] = data[blue + 4 : blue + 12], data[red + 4 : red + 12]
    data[84:100] = bytes(16)  # profile ID (MD5) no longer matches: zero means "not computed"
    return bytes(data)


def exif_with_gps(orientation: int | None = 6) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x010F] = "CameraMaker"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = GPS_LATITUDE
    gps[3] = "E"
    gps[4] = (4.0, 53.0, 40.0)
    gps[18] = GPS_MARKER
    return exif


def xmp_packet() -> bytes:
    return (
        b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description>'
        + XMP_MARKER
        + b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def rotated_jpeg_with_everything(orientation: int = 6) -> bytes:
    """Camera-style JPEG: stored 192x96 quadrants, EXIF orientation + GPS, XMP, COM comment, ICC."""
    return encode(
        quadrants((192, 96)),
        "JPEG",
        quality=95,
        exif=exif_with_gps(orientation),
        xmp=xmp_packet(),
        comment=COMMENT_MARKER,
        icc_profile=srgb_icc(),
    )


def png_with_metadata() -> bytes:
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", TEXT_MARKER)
    text.add_itxt("Description", TEXT_MARKER, zip=True)
    return encode(
        quadrants((96, 96)), "PNG", pnginfo=text, exif=exif_with_gps(None), icc_profile=srgb_icc()
    )


def webp_with_metadata() -> bytes:
    return encode(
        quadrants((96, 96)),
        "WEBP",
        lossless=True,
        exif=exif_with_gps(None),
        xmp=xmp_packet(),
        icc_profile=srgb_icc(),
    )


def rgba_png(size=(96, 96)) -> bytes:
    """Left half fully transparent (stored black), right half opaque red."""
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return encode(img, "PNG")


def palette_png_with_transparency(size=(96, 96)) -> bytes:
    """Palette image: index 0 (stored green) is transparent, index 1 is blue."""
    img = Image.new("P", size, 0)
    img.putpalette([0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.paste(1, (size[0] // 2, 0, size[0], size[1]))
    return encode(img, "PNG", transparency=0)


def la_png(size=(96, 96)) -> bytes:
    """Grey+alpha: left half transparent (stored black), right half opaque grey 100."""
    img = Image.new("LA", size, (0, 0))
    img.paste((100, 255), (size[0] // 2, 0, size[0], size[1]))
    return encode(img, "PNG")


def one_bit_png(size=(96, 96)) -> bytes:
    img = Image.new("1", size, 0)
    img.paste(1, (size[0] // 2, 0, size[0], size[1]))
    return encode(img, "PNG")


def eps() -> bytes:
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n%%EndComments\n"
        b"newpath 0 0 moveto 100 100 lineto stroke\nshowpage\n%%EOF\n"
    )


def bmp() -> bytes:
    return encode(solid(), "BMP")


def tiff() -> bytes:
    return encode(solid(), "TIFF")


def single_gif() -> bytes:
    return encode(solid(), "GIF")
