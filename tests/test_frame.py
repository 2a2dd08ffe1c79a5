import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.frame import fit_clip_to_story, fit_to_size, generation_size_for, haar_available


def _photo(w, h):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    return Image.fromarray(arr)


def test_crop_keeps_the_centre_and_reports_it():
    img, rec = fit_to_size(_photo(512, 512), 576, 1024, "crop")
    assert img.size == (576, 1024) and img.mode == "RGB"
    assert rec["strategy"] == "crop"
    x0, y0, x1, y1 = rec["crop_box"]
    assert (y0, y1) == (0, 512) and x1 - x0 == 288 and x0 == 112
    assert rec["kept_fraction"] == pytest.approx(288 / 512, abs=1e-3)
    assert rec["upscaled"] is True


def test_pad_keeps_the_whole_photo():
    img, rec = fit_to_size(_photo(600, 400), 576, 1024, "pad")
    assert img.size == (576, 1024)
    assert rec["strategy"] == "pad"
    x0, y0, x1, y1 = rec["placed_box"]
    assert x1 - x0 == 576 and y1 - y0 == 384


def test_auto_pads_wide_photos_and_crops_near_portrait_ones():
    assert fit_to_size(_photo(600, 400), 576, 1024)[1]["strategy"] == "pad"
    assert fit_to_size(_photo(600, 900), 576, 1024)[1]["strategy"] == "crop"


def test_unknown_strategy():
    with pytest.raises(ConfigError, match="crop"):
        fit_to_size(_photo(100, 100), 64, 64, "stretch")


# -- crop focus ------------------------------------------------------------------------------------
def _bright_spot(w=256, h=144, cx=210, cy=60, r=15, seed=0):
    """Grey noise with one bright disc off-centre: the only thing that stands out."""
    arr = np.random.default_rng(seed).normal(100, 12, (h, w, 3)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    arr[(xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2] = 250
    return Image.fromarray(arr)


def _astronaut_on_the_right(sample_photo):
    """The public-domain NASA portrait in examples/, on the right of a plain grey canvas: a centre
    crop misses the face entirely."""
    canvas = Image.new("RGB", (1024, 512), (120, 120, 120))
    with Image.open(sample_photo) as photo:
        canvas.paste(photo.convert("RGB"), (512, 0))
    return canvas


def test_saliency_crop_follows_a_bright_object_off_centre():
    _, centred = fit_to_size(_bright_spot(), 72, 128, "crop")
    img, rec = fit_to_size(_bright_spot(), 72, 128, "crop", focus="saliency")
    assert img.size == (72, 128) and rec["focus"] == "saliency"
    assert centred["crop_box"][2] < 195  # the centre crop misses the disc (195..225)
    x0, y0, x1, y1 = rec["crop_box"]
    assert x0 <= 195 and x1 >= 225 and (x1 - x0, y1 - y0) == (81, 144)
    assert abs(rec["salient_centre"][0] - 210) <= 6


def test_saliency_crop_stays_inside_the_photo():
    _, rec = fit_to_size(_bright_spot(cx=250, r=6), 72, 128, "crop", focus="saliency")
    assert rec["crop_box"][2] == 256


def test_face_focus_without_a_detector_falls_back_to_saliency_and_says_so():
    _, rec = fit_to_size(_bright_spot(), 72, 128, "crop", focus="face", face_backend="none")
    assert rec["fallback"] == "saliency" and "face_backend=none" in rec["fallback_reason"]
    assert "face_box" not in rec and rec["crop_box"][0] > 150


@pytest.mark.skipif(not haar_available(), reason="cv2 has no CascadeClassifier: OpenCV 5 moved it to "
                                                 "opencv-contrib-python-headless")
def test_haar_face_crop_centres_on_the_face(sample_photo):
    _, rec = fit_to_size(_astronaut_on_the_right(sample_photo), 288, 512, "crop", focus="face", face_backend="haar")
    fx0, fy0, fx1, fy1 = rec["face_box"]
    assert 660 <= fx0 < fx1 <= 810 and 40 <= fy0 < fy1 <= 190  # Eileen Collins' face
    x0, _, x1, _ = rec["crop_box"]
    assert x0 <= fx0 and x1 >= fx1 and abs((x0 + x1) / 2 - (fx0 + fx1) / 2) <= 1
    assert "fallback" not in rec


@pytest.mark.skipif(not haar_available(), reason="cv2 has no CascadeClassifier: OpenCV 5 moved it to "
                                                 "opencv-contrib-python-headless")
def test_haar_without_a_face_falls_back_to_saliency():
    _, rec = fit_to_size(_bright_spot(), 72, 128, "crop", focus="face", face_backend="haar")
    assert rec["fallback"] == "saliency" and rec["fallback_reason"] == "no face found"


@pytest.mark.skipif(haar_available(), reason="this OpenCV has CascadeClassifier")
def test_haar_without_cascade_support_says_what_to_install(sample_photo):
    with pytest.raises(ConfigError, match="opencv-contrib-python-headless") as caught:
        fit_to_size(_astronaut_on_the_right(sample_photo), 288, 512, "crop", focus="face", face_backend="haar")
    assert caught.value.code == "face_backend_unavailable"


def test_unknown_focus_and_bad_darken_are_refused():
    with pytest.raises(ConfigError, match="saliency"):
        fit_to_size(_photo(100, 100), 64, 64, "crop", focus="eyes")
    with pytest.raises(ConfigError, match="darken"):
        fit_to_size(_photo(100, 100), 64, 64, "pad", darken=1.5)


def test_pad_darken_controls_the_background():
    means = []
    for darken in (0.0, 0.8):
        img, rec = fit_to_size(Image.new("RGB", (200, 100), (200, 200, 200)), 72, 128, "pad", darken=darken)
        assert rec["darken"] == darken
        means.append(np.asarray(img)[:10].mean())  # above the placed photo: background only
    assert means[0] == pytest.approx(200, abs=2) and means[1] == pytest.approx(40, abs=2)


# -- fit-generate ----------------------------------------------------------------------------------
@pytest.mark.parametrize("photo, size", [
    ((600, 900), (576, 1024)), ((1080, 1920), (576, 1024)), ((3000, 4000), (576, 1024)),  # portrait
    ((600, 400), (1024, 576)), ((1920, 1080), (1024, 576)),  # landscape
    ((512, 512), (768, 768)), ((4000, 3000), (768, 768)), ((900, 1000), (768, 768)),  # near square
])
def test_generation_size_follows_the_photo_shape(photo, size):
    assert generation_size_for(photo, (576, 1024)) == size


def test_generation_sizes_are_multiples_of_8_for_any_base():
    for base in ((320, 576), (576, 1024), (300, 500)):
        for photo in ((100, 300), (300, 300), (300, 100)):
            w, h = generation_size_for(photo, base)
            assert w % 8 == 0 and h % 8 == 0
    assert generation_size_for((500, 500), (320, 576)) == (448, 448)  # same pixels, multiples of 64


def test_fit_generate_crops_only_a_little():
    photo = _photo(600, 400)
    size = generation_size_for(photo.size, (576, 1024))
    img, rec = fit_to_size(photo, *size, "fit-generate")
    assert img.size == (1024, 576) and rec["strategy"] == "fit-generate"
    x0, y0, x1, y1 = rec["crop_box"]
    assert (x0, x1) == (0, 600) and y1 - y0 == 338 and rec["kept_fraction"] > 0.84
    assert fit_to_size(photo, 576, 1024, "crop")[1]["kept_fraction"] < 0.4  # the portrait size would lose most


# -- clip -> story ---------------------------------------------------------------------------------
def _clip(w, h, frames=3):
    return np.stack([np.asarray(_photo(w, h))] * frames)


def test_clip_of_the_story_aspect_is_resized():
    out, rec = fit_clip_to_story(_clip(72, 128), 144, 256)
    assert out.shape == (3, 256, 144, 3) and out.dtype == np.uint8
    assert rec == {"from": [72, 128], "to": [144, 256], "how": "resize", "resampler": "lanczos", "aspect_change": 0.0}
    assert fit_clip_to_story(_clip(288, 512), 144, 256)[1]["resampler"] == "area"
    assert fit_clip_to_story(_clip(72, 128), 144, 256, resampler="cubic")[1]["resampler"] == "cubic"
    # the picture survives: the gradient still runs left to right and top to bottom
    assert out[0, 128, 10, 0] < out[0, 128, 130, 0] and out[0, 10, 72, 1] < out[0, 240, 72, 1]


def test_clip_of_the_story_size_is_left_alone():
    clip = _clip(64, 96)
    out, rec = fit_clip_to_story(clip, 64, 96)
    assert out is clip and rec["how"] == "none"


def test_landscape_clip_is_padded_whole_over_a_darkened_blur():
    clip = np.full((2, 72, 128, 3), 200, np.uint8)
    out, rec = fit_clip_to_story(clip, 144, 256, darken=0.5)
    assert out.shape == (2, 256, 144, 3) and rec["how"] == "pad"
    x0, y0, x1, y1 = rec["placed_box"]
    assert (x0, x1) == (0, 144) and y1 - y0 == 81 and y0 == (256 - 81) // 2
    assert out[0, y0 + 5:y1 - 5].mean() == pytest.approx(200, abs=1)  # the clip itself, whole
    assert out[0, :y0 - 2].mean() == pytest.approx(100, abs=2)  # its blurred copy, half as bright


def test_bad_resampler_is_refused():
    with pytest.raises(ConfigError, match="lanczos"):
        fit_clip_to_story(_clip(72, 128), 144, 256, resampler="nearest")
