"""Intake against a hostile corpus built in code (tests/corpus.py): every refusal has its code,
every accepted file comes out as clean 8-bit sRGB RGB with no metadata left."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from pipeline.errors import ConfigError, InputRejected
from pipeline.intake import IntakeResult, load_image
from pipeline.settings import IntakeSettings
from tests import corpus
from tests.deadlines import scaled

REPO = Path(__file__).resolve().parents[1]


def rejected(source, limits: IntakeSettings | None = None) -> InputRejected:
    with pytest.raises(InputRejected) as info:
        load_image(source, limits)
    return info.value


def close(pixel, expected, tol: int = 6) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True))


def assert_clean(result: IntakeResult) -> None:
    assert isinstance(result, IntakeResult)
    assert result.image.mode == "RGB"
    assert result.image.info == {}
    assert len(result.image.getexif()) == 0
    json.dumps(result.facts)  # must be serialisable into the job report
    assert (result.facts["width"], result.facts["height"]) == result.image.size


def reencode(img: Image.Image) -> dict[str, bytes]:
    return {fmt: corpus.encode(img, fmt) for fmt in ("JPEG", "PNG")}


# ------------------------------------------------------------------------------- accepted input


@pytest.mark.parametrize("build", [corpus.plain_jpeg, corpus.plain_png, corpus.plain_webp])
def test_plain_images_are_accepted_from_bytes_and_paths(build, tmp_path):
    data = build()
    from_bytes = load_image(data)
    assert_clean(from_bytes)
    assert close(from_bytes.image.getpixel((10, 10)), (120, 80, 40))
    path = tmp_path / "photo.bin"
    path.write_bytes(data)
    for source in (path, str(path), bytearray(data), memoryview(data)):
        again = load_image(source)
        assert again.image.tobytes() == from_bytes.image.tobytes()
        assert again.facts["bytes"] == len(data)
    assert from_bytes.facts["format"] in ("JPEG", "PNG", "WEBP")
    assert from_bytes.facts["exif_transposed"] is False
    assert from_bytes.facts["metadata_removed"] == []


def test_wrong_source_type_is_a_programming_error():
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


def test_exif_rotation_gps_xmp_comment_and_icc_are_applied_then_removed():
    data = corpus.rotated_jpeg_with_everything(orientation=6)
    # The fixture really carries what we claim to strip.
    for marker in (corpus.GPS_MARKER.encode(), corpus.COMMENT_MARKER, corpus.XMP_MARKER, b"Exif", b"ICC_PROFILE"):
        assert marker in data

    result = load_image(data)
    assert_clean(result)
    facts = result.facts
    assert (facts["source_width"], facts["source_height"]) == (192, 96)
    assert result.image.size == (96, 192)  # orientation 6: turned 90 degrees clockwise
    assert facts["exif_transposed"] is True and facts["exif_orientation"] == 6
    assert facts["icc_converted"] is True
    assert set(facts["metadata_removed"]) >= {"exif", "gps", "xmp", "comment", "icc"}
    # Stored quadrants TL red, TR green, BL blue, BR white; turned clockwise they read
    # TL blue, TR red, BL white, BR green (a mirror or a counter-clockwise turn would not).
    img = result.image
    assert close(img.getpixel((24, 48)), corpus.BLUE, 12)
    assert close(img.getpixel((72, 48)), corpus.RED, 12)
    assert close(img.getpixel((24, 144)), corpus.WHITE, 12)
    assert close(img.getpixel((72, 144)), corpus.GREEN, 12)

    for fmt, out in reencode(img).items():
        for marker in (
            corpus.GPS_MARKER.encode(),
            corpus.COMMENT_MARKER,
            corpus.XMP_MARKER,
            b"Exif",
            b"ICC_PROFILE",
            b"iCCP",
            b"acsp",  # the signature inside every ICC profile
            b"http://ns.adobe.com/xap",
        ):
            assert marker not in out, (fmt, marker)
        reread = Image.open(io.BytesIO(out))
        assert "exif" not in reread.info and "icc_profile" not in reread.info and "comment" not in reread.info


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation):
    data = corpus.encode(corpus.quadrants((192, 96)), "JPEG", quality=95, exif=corpus.exif_with_gps(orientation))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    result = load_image(data)
    assert result.image.size == expected.size
    assert result.image.tobytes() == expected.tobytes()
    assert result.facts["exif_transposed"] is (orientation != 1)


def test_out_of_range_orientation_is_ignored_and_noted():
    data = corpus.encode(corpus.quadrants((192, 96)), "JPEG", exif=corpus.exif_with_gps(9))
    result = load_image(data)
    assert result.image.size == (192, 96)
    assert result.facts["exif_transposed"] is False
    assert any("orientation" in note for note in result.facts["notes"])


@pytest.mark.parametrize("build", [corpus.png_with_metadata, corpus.webp_with_metadata])
def test_png_text_chunks_and_webp_metadata_are_dropped(build):
    data = build()
    result = load_image(data)
    assert_clean(result)
    assert {"exif", "gps", "icc"} <= set(result.facts["metadata_removed"])
    for out in reencode(result.image).values():
        assert corpus.TEXT_MARKER.encode() not in out and corpus.GPS_MARKER.encode() not in out
        assert corpus.XMP_MARKER not in out and b"acsp" not in out


def test_sixteen_bit_grey_png_is_scaled_not_clipped():
    result = load_image(corpus.png16_gray(value=0x8000))
    assert result.facts["source_mode"] == "I;16"
    # Pillow's convert("L") would clip 32768 to 255 (white); half scale must stay mid-grey.
    assert result.image.getpixel((5, 5)) == (128, 128, 128)
    assert load_image(corpus.png16_gray(value=0xFFFF)).image.getpixel((0, 0)) == (255, 255, 255)
    assert load_image(corpus.png16_gray(value=0x00FF)).image.getpixel((0, 0)) == (0, 0, 0)


def test_sixteen_bit_rgb_png_keeps_the_high_byte():
    result = load_image(corpus.png16_rgb(rgb16=(0xFFFF, 0x8000, 0x0100)))
    assert result.image.getpixel((3, 3)) == (255, 128, 1)


def test_cmyk_jpeg_becomes_rgb():
    result = load_image(corpus.cmyk_jpeg(cmyk=(0, 255, 255, 0)))
    assert result.facts["source_mode"] == "CMYK"
    assert close(result.image.getpixel((40, 40)), corpus.RED, 8)


def test_rgba_is_composited_over_white():
    result = load_image(corpus.rgba_png())
    assert result.facts["alpha_flattened"] is True
    assert result.image.getpixel((5, 5)) == (255, 255, 255)  # transparent (stored black) -> white
    assert result.image.getpixel((90, 5)) == (255, 0, 0)


def test_palette_transparency_becomes_white():
    result = load_image(corpus.palette_png_with_transparency())
    assert result.facts["source_mode"] == "P" and result.facts["alpha_flattened"] is True
    assert result.image.getpixel((5, 5)) == (255, 255, 255)  # stored green, transparent
    assert result.image.getpixel((90, 5)) == (0, 0, 255)


def test_grey_alpha_and_one_bit_images():
    la = load_image(corpus.la_png())
    assert la.image.getpixel((5, 5)) == (255, 255, 255)
    assert la.image.getpixel((90, 5)) == (100, 100, 100)
    one = load_image(corpus.one_bit_png())
    assert one.image.getpixel((5, 5)) == (0, 0, 0) and one.image.getpixel((90, 5)) == (255, 255, 255)
    assert one.facts["alpha_flattened"] is False


def _png_with_icc(icc: bytes, color=(200, 0, 0), mode="RGB") -> bytes:
    return corpus.encode(Image.new(mode, (96, 96), color if mode == "RGB" else 90), "PNG", icc_profile=icc)


def test_embedded_icc_profile_is_converted_to_srgb():
    # Same stored pixel, two profiles: sRGB keeps it red; red/blue-swapped primaries make it blue.
    as_srgb = load_image(_png_with_icc(corpus.srgb_icc()))
    assert as_srgb.facts["icc_converted"] is True and "icc" in as_srgb.facts["metadata_removed"]
    assert close(as_srgb.image.getpixel((10, 10)), (200, 0, 0), 3)
    swapped = load_image(_png_with_icc(corpus.swapped_primaries_icc()))
    assert swapped.facts["icc_converted"] is True
    assert close(swapped.image.getpixel((10, 10)), (0, 0, 200), 3)
    assert swapped.image.info == {}
    assert b"iCCP" not in corpus.encode(swapped.image, "PNG")


def test_broken_icc_profile_does_not_fail_the_upload():
    result = load_image(_png_with_icc(b"this is not an ICC profile at all" * 4))
    assert_clean(result)
    assert result.facts["icc_converted"] is False
    assert "icc" in result.facts["metadata_removed"]
    assert any(note.startswith("icc_profile_unusable") for note in result.facts["notes"])
    assert result.image.getpixel((10, 10)) == (200, 0, 0)  # raw values kept


def test_icc_profile_of_the_wrong_colour_space_is_not_applied():
    result = load_image(_png_with_icc(corpus.srgb_icc(), mode="L"))  # RGB profile on a grey image
    assert result.facts["icc_converted"] is False
    assert any(note.startswith("icc_profile_mismatch") for note in result.facts["notes"])
    assert result.image.getpixel((10, 10)) == (90, 90, 90)


def test_gif_is_refused_by_default_and_read_when_configured():
    assert rejected(corpus.single_gif()).code == "unsupported_format"
    with_gif = IntakeSettings(formats=["JPEG", "PNG", "WEBP", "GIF"])
    result = load_image(corpus.single_gif(), with_gif)
    assert_clean(result)
    assert result.facts["format"] == "GIF"


# ------------------------------------------------------------------------------- refused input


def test_empty_bytes_and_empty_file(tmp_path):
    assert rejected(b"").code == "empty"
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    err = rejected(path)
    assert err.code == "empty" and "0 bytes" in err.message


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "holiday.jpg"
    path.write_bytes(corpus.text_as_jpg())
    err = rejected(path)
    assert err.code == "not_an_image"
    assert "JPEG, PNG or WEBP" in err.message


def test_truncated_jpeg_is_caught_by_the_full_decode():
    data = corpus.truncated_jpeg(0.6)
    Image.open(io.BytesIO(data)).verify()  # verify() alone lets this one through
    err = rejected(data)
    assert err.code == "truncated"
    assert "truncated" in err.message and err.details["format"] == "JPEG"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_and_path_input(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(corpus.truncated_png(0.6))
    err = rejected(path)
    assert err.code == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("build", "fmt"),
    [(corpus.apng, "PNG"), (corpus.animated_webp, "WEBP")],
)
def test_multi_frame_files_are_refused(build, fmt):
    err = rejected(build())
    assert err.code == "animated"
    assert err.details == {"format": fmt, "frames": 2}


def test_animated_gif():
    assert rejected(corpus.animated_gif()).code == "unsupported_format"
    err = rejected(corpus.animated_gif(), IntakeSettings(formats=["JPEG", "PNG", "WEBP", "GIF"]))
    assert err.code == "animated"


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (corpus.eps(), "EPS"),
        (b"\xc5\xd0\xd3\xc6" + bytes(60), "EPS"),
        (corpus.bmp(), "BMP"),
        (corpus.tiff(), "TIFF"),
    ],
)
def test_formats_outside_the_list_are_named_and_refused(data, name):
    start = time.perf_counter()
    err = rejected(data)
    assert time.perf_counter() - start < scaled(1.0)  # no Ghostscript, no decoder run
    assert err.code == "unsupported_format"
    assert name in err.message and "JPEG, PNG or WEBP" in err.message
    assert err.details["format"] == name


def test_png_bomb_is_refused_from_the_header_quickly():
    data = corpus.png_bomb(20_000, 20_000)
    assert len(data) < 100_000  # a few tens of KB on the wire, 400 MP once decoded
    start = time.perf_counter()
    err = rejected(data)
    assert time.perf_counter() - start < 0.5
    assert err.code == "too_many_pixels"
    assert err.details["pixels"] == 400_000_000
    assert "40.0 MP" in err.message


def test_png_bomb_keeps_memory_low_in_a_fresh_process():
    """Peak RSS of a process that builds and refuses the bomb stays near an idle interpreter's."""
    script = textwrap.dedent(
        """
        import resource, sys
        from pipeline.errors import InputRejected
        from pipeline.intake import load_image
        from tests import corpus
        data = corpus.png_bomb(20_000, 20_000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_image(data)
        except InputRejected as exc:
            print(exc.code)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    code, grown_mb = out.stdout.split()
    assert code == "too_many_pixels"
    assert int(grown_mb) < 20  # decoding would need 400 MB for the 1-bit plane alone


def test_our_pixel_limit_applies_below_pillows_default():
    data = corpus.png_bomb(7_000, 7_000)  # 49 MP: under Pillow's 89.5 MP default, over our 40 MP
    err = rejected(data)
    assert err.code == "too_many_pixels"
    assert err.details == {"width": 7000, "height": 7000, "pixels": 49_000_000, "limit": 40_000_000}
    small = rejected(corpus.plain_png((96, 96)), IntakeSettings(max_pixels=5_000))
    assert small.code == "too_many_pixels"
    assert small.details == {"width": 96, "height": 96, "pixels": 9216, "limit": 5000}


def test_pillow_bomb_warning_is_a_refusal_without_touching_global_warning_filters():
    before = list(warnings.filters)
    data = corpus.png_bomb(10_000, 10_000)  # 100 MP: Pillow warns (does not raise) by default
    err = rejected(data, IntakeSettings(max_pixels=1_000_000_000))
    assert err.code == "too_many_pixels"
    assert warnings.filters == before


def test_concurrent_calls_leave_warning_filters_as_they_were():
    before = list(warnings.filters)
    inputs = [corpus.png_bomb(10_000, 10_000), corpus.rotated_jpeg_with_everything(), corpus.apng()] * 8
    limits = IntakeSettings(max_pixels=1_000_000_000)

    def one(data: bytes) -> str:
        try:
            return load_image(data, limits).facts["format"]
        except InputRejected as exc:
            return exc.code

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(one, inputs))
    assert codes == ["too_many_pixels", "JPEG", "animated"] * 8
    assert warnings.filters == before


def test_too_small_and_bad_aspect():
    err = rejected(corpus.plain_png((32, 32)))
    assert err.code == "too_small"
    assert "64 pixels" in err.message and err.details["limit"] == 64
    for size in ((100, 500), (500, 100)):
        err = rejected(corpus.plain_png(size))
        assert err.code == "bad_aspect"
        assert "5.00:1" in err.message and "4:1" in err.message
    assert load_image(corpus.plain_png((100, 400))).image.size == (100, 400)  # exactly 4:1 is fine


def test_too_large_bytes_and_paths(tmp_path):
    data = corpus.plain_png()
    err = rejected(data, IntakeSettings(max_bytes=100))
    assert err.code == "too_large"
    assert err.details == {"bytes": len(data), "limit": 100}
    assert "100 bytes" in err.message
    # A 10 GB sparse file is refused from stat alone: nothing is read.
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as fh:
        fh.truncate(10_000_000_000)
    start = time.perf_counter()
    err = rejected(huge)
    assert time.perf_counter() - start < 0.5
    assert err.code == "too_large" and "20.0 MB" in err.message


def test_missing_path_directory_and_fifo(tmp_path):
    err = rejected(tmp_path / "nope.jpg")
    assert err.code == "not_found" and "nope.jpg" in err.message
    assert rejected(tmp_path).code == "unreadable"
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert rejected(fifo).code == "unreadable"  # and it did not block waiting for a writer


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(corpus.plain_png())
    path.chmod(0)
    assert rejected(path).code == "unreadable"


@pytest.mark.parametrize(
    ("data", "limits", "code", "mentions"),
    [
        (corpus.plain_png(), IntakeSettings(max_bytes=50), "too_large", "50 bytes"),
        (corpus.plain_png((200, 200)), IntakeSettings(max_pixels=30_000), "too_many_pixels", "0.0 MP"),
        (corpus.plain_png((70, 70)), IntakeSettings(min_side=80), "too_small", "80 pixels"),
        (corpus.plain_png((100, 250)), IntakeSettings(max_aspect=2.0), "bad_aspect", "2:1"),
        (corpus.bmp(), None, "unsupported_format", "JPEG, PNG or WEBP"),
        (b"", None, "empty", "0 bytes"),
    ],
)
def test_messages_are_sentences_that_name_the_limit(data, limits, code, mentions):
    err = rejected(data, limits)
    assert err.code == code
    assert err.message[0].isupper() and err.message.endswith(".")
    assert mentions in err.message
    assert err.to_dict()["code"] == code
    json.dumps(err.to_dict())


def test_truncated_images_flag_set_by_someone_else_is_refused(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigError) as info:
        load_image(corpus.plain_png())
    assert info.value.code == "pillow_truncated_images"


def test_heif_needs_pillow_heif():
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError) as info:
            load_image(corpus.plain_png(), IntakeSettings(formats=["JPEG", "HEIF"]))
        assert info.value.code == "heif_unavailable"
    else:
        pytest.skip("pillow-heif is installed; see test_heic_when_pillow_heif_is_installed")


def test_heic_when_pillow_heif_is_installed():
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    data = corpus.encode(corpus.quadrants((192, 96)), "HEIF")
    result = load_image(data, IntakeSettings(formats=["JPEG", "PNG", "WEBP", "HEIF"]))
    assert_clean(result)
    assert result.facts["format"] == "HEIF"


# ------------------------------------------------------------------------------- fuzzing

SEEDS = [
    corpus.encode(corpus.quadrants((96, 96)), "JPEG", exif=corpus.exif_with_gps(6), icc_profile=corpus.srgb_icc()),
    corpus.png_with_metadata(),
    corpus.webp_with_metadata(),
    corpus.palette_png_with_transparency(),
    corpus.png16_gray(),
    corpus.cmyk_jpeg(),
    corpus.apng(),
    corpus.encode(corpus.quadrants((96, 96)), "WEBP", quality=80),
]
MAGICS = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x01\x00\x00WEBPVP8 ", b"GIF89a", b"%!PS", b"BM"]


def _accepts_or_rejects(data: bytes) -> None:
    try:
        result = load_image(data)
    except InputRejected as exc:
        assert exc.code and exc.message
        return
    assert_clean(result)


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        # Bias towards the first few hundred bytes, where the headers and metadata live.
        limit = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 400)
        pos = draw(st.integers(0, max(limit, 0)))
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        if op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(MAGICS), body=st.binary(max_size=2048))
def test_random_bytes_never_escape_as_raw_errors(prefix, body):
    _accepts_or_rejects(prefix + body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_mutated_images_never_escape_as_raw_errors(data):
    _accepts_or_rejects(data)


def test_multi_picture_jpeg_from_a_phone_uses_the_photo():
    """Phones write MPO (photo + gain/depth map): the first picture is the photo and is accepted."""
    photo = Image.new("RGB", (200, 150), (200, 30, 30))
    gain_map = Image.new("RGB", (100, 75), (10, 10, 10))
    buf = io.BytesIO()
    photo.save(buf, "MPO", save_all=True, append_images=[gain_map])
    result = load_image(buf.getvalue())
    assert result.image.size == (200, 150)
    assert result.image.getpixel((100, 75))[0] > 150  # the red photo, not the dark map
    assert result.facts["format"] == "MPO"
    assert any("multi-picture" in n for n in result.facts["notes"])
    with pytest.raises(InputRejected) as info:
        load_image(buf.getvalue(), IntakeSettings(formats=["PNG"]))
    assert info.value.code == "unsupported_format"
