"""Moderation: the real opennsfw model on built-in-code images, prompts, frame sampling, enforcement.

No mocks: every image check runs the bundled open_nsfw ONNX model (about 30 ms per image after a
one-off load of about half a second).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter

import moderation
from moderation import (
    BackendResult,
    Verdict,
    check_frames,
    check_image,
    check_prompt,
    enforce,
    get_image_backends,
    sample_indices,
)
from moderation.backends import decide, opennsfw
from pipeline.errors import ConfigError, InputRejected, ModerationBlocked
from pipeline.settings import ModerationSettings, Settings

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.jpg"))

SKIN = (200, 150, 120)  # a flat skin-tone frame: open_nsfw scores it about 0.3, photos below 0.01


# ---------------------------------------------------------------- images built in code


def landscape(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """Sky gradient, grass, sun, a mountain and a red house, with sensor-like noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    sky = np.array([70, 130, 210]) * (1 - y) + np.array([190, 220, 245]) * y
    pixels = np.broadcast_to(sky, (height, width, 3)).copy()
    horizon = int(height * 0.6)
    g = np.linspace(0, 1, height - horizon)[:, None, None]
    pixels[horizon:] = np.array([60, 120, 50]) * (1 - g) + np.array([30, 80, 30]) * g
    pixels += rng.normal(0, 6, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.7, height * 0.1, width * 0.7 + 60, height * 0.1 + 60), fill=(250, 230, 120))
    mountain = [(width * 0.1, horizon), (width * 0.3, height * 0.3), (width * 0.5, horizon)]
    draw.polygon(mountain, fill=(110, 110, 120))
    draw.rectangle((width * 0.55, horizon - 80, width * 0.75, horizon + 20), fill=(150, 60, 50))
    return image.filter(ImageFilter.GaussianBlur(1.5))


def still_life(size: int = 512) -> Image.Image:
    """A table-top: wooden gradient, a blue bowl and green fruit, portrait-ish lighting."""
    x = np.linspace(0, 1, size)[None, :, None]
    pixels = np.broadcast_to(np.array([120, 80, 40]) * (1 - x) + np.array([90, 60, 30]) * x, (size, size, 3))
    image = Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 250, 420, 420), fill=(40, 70, 160))
    for cx in (190, 260, 330):
        draw.ellipse((cx - 40, 210, cx + 40, 290), fill=(90, 160, 60))
    return image.filter(ImageFilter.GaussianBlur(2))


def flat(color: tuple[int, int, int], size: int = 256) -> np.ndarray:
    frame = np.empty((size, size, 3), np.uint8)
    frame[:] = color
    return frame


PHOTOS = [
    pytest.param(lambda: landscape(), id="landscape"),
    pytest.param(lambda: landscape(480, 854, seed=3), id="portrait-landscape"),
    pytest.param(lambda: np.asarray(still_life()), id="still-life-array"),
    *(pytest.param(lambda p=p: Image.open(p).convert("RGB"), id=f"examples/{p.name}") for p in EXAMPLES),
]


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("make", PHOTOS)
def test_ordinary_photos_are_allowed_with_low_scores(make):
    verdict = check_image(make())
    assert verdict.decision == "allow"
    assert not verdict.blocked and not verdict.needs_review
    nsfw = next(r for r in verdict.results if r.backend == "opennsfw")
    assert 0.0 <= nsfw.scores["nsfw"] < 0.1
    assert nsfw.checked == ("nsfw",)
    assert nsfw.version.startswith("0.1.0+sha256.864bb37bf886")


def test_zero_thresholds_block_and_enforce_raises_with_verdict_attached():
    settings = ModerationSettings(nsfw_review_threshold=0.0, nsfw_block_threshold=0.0)
    verdict = check_image(landscape(), settings)
    assert verdict.decision == "block" and verdict.blocked
    with pytest.raises(ModerationBlocked) as caught:
        enforce(verdict, settings)
    error = caught.value
    assert error.code == "blocked_image"
    assert error.exit_code == 4
    assert error.verdict is verdict
    assert "photo" in error.message and "opennsfw" in error.message
    assert "block threshold 0.00" in error.message
    assert error.to_dict()["verdict"]["decision"] == "block"
    json.dumps(error.to_dict())


def test_review_proceeds_by_default_and_blocks_when_configured():
    settings = ModerationSettings(nsfw_review_threshold=0.0, nsfw_block_threshold=1.0)
    verdict = check_image(landscape(), settings)
    assert verdict.decision == "review" and verdict.needs_review
    assert enforce(verdict, settings) is None  # on_review = "proceed"
    strict = settings.model_copy(update={"on_review": "block"})
    with pytest.raises(ModerationBlocked) as caught:
        enforce(verdict, strict)
    assert caught.value.code == "review_required"
    assert "review threshold 0.00" in caught.value.message


def test_allow_never_raises_even_when_review_blocks():
    verdict = check_image(landscape(), ModerationSettings(on_review="block"))
    assert enforce(verdict, ModerationSettings(on_review="block")) is None


def test_unchecked_categories_are_reported_and_never_as_checked():
    verdict = check_image(landscape())
    for category in ("violence", "gore", "weapons"):
        assert category in verdict.unchecked
        assert category not in verdict.checked
        assert all(category not in result.checked for result in verdict.results)
    assert verdict.checked == ("nsfw",)
    unchecked = next(r for r in verdict.results if r.backend == "unchecked")
    assert unchecked.reasons == ("not checked: no offline model for violence, gore, weapons",)
    data = verdict.to_dict()
    assert data["unchecked"] == ["violence", "gore", "weapons"]


def test_custom_unchecked_categories_and_empty_backend_list_report_nsfw_unchecked():
    settings = ModerationSettings(image_backends=[], unchecked_categories=["self-harm"])
    verdict = check_image(landscape(), settings)
    assert verdict.decision == "allow"
    assert set(verdict.unchecked) == {"self-harm", "nsfw"}
    assert verdict.checked == ()


def test_a_checked_category_cannot_also_be_declared_unchecked():
    with pytest.raises(ConfigError) as caught:
        get_image_backends(ModerationSettings(unchecked_categories=["nsfw"]))
    assert caught.value.code == "category_conflict"


def test_disabled_moderation_reports_every_category_unchecked():
    settings = ModerationSettings(enabled=False)
    for verdict in (
        check_image(landscape(), settings),
        check_frames([np.asarray(landscape())] * 3, settings),
    ):
        assert verdict.decision == "allow"
        assert [r.backend for r in verdict.results] == ["disabled"]
        assert verdict.checked == ()
        assert set(verdict.unchecked) == {"nsfw", "violence", "gore", "weapons"}
    prompt = check_prompt("naked", settings)
    assert prompt.decision == "allow" and prompt.unchecked == ("prompt_terms",) and prompt.checked == ()


def test_unknown_backend_is_a_config_error_listing_available_names():
    with pytest.raises(ConfigError) as caught:
        check_image(landscape(), ModerationSettings(image_backends=["clip-magic"]))
    assert caught.value.code == "unknown_backend"
    assert "opennsfw" in caught.value.message and "clip-magic" in caught.value.message
    assert moderation.available_image_backends() == ["opennsfw"]


def test_nudenet_is_named_as_unavailable_not_unknown():
    with pytest.raises(ConfigError) as caught:
        get_image_backends(ModerationSettings(image_backends=["nudenet"]))
    assert caught.value.code == "backend_unavailable"
    assert "AGPL" in caught.value.message and "opennsfw" in caught.value.message


@pytest.mark.parametrize(
    "bad",
    [
        Image.new("RGBA", (64, 64)),
        Image.new("L", (64, 64)),
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64), np.uint8),
        np.zeros((0, 64, 3), np.uint8),
        [[0, 0, 0]],
        b"\xff\xd8\xff",
    ],
    ids=["rgba", "grey", "float", "2d", "empty", "list", "bytes"],
)
def test_anything_but_rgb_uint8_is_refused(bad):
    with pytest.raises(ValueError) as caught:
        check_image(bad)
    assert isinstance(caught.value, InputRejected)
    assert caught.value.code == "moderation_input"


def test_whole_settings_object_is_accepted():
    strict = ModerationSettings(nsfw_block_threshold=0.0, nsfw_review_threshold=0.0)
    verdict = check_image(landscape(), Settings(moderation=strict))
    assert verdict.blocked


def test_classifier_is_loaded_once_per_process():
    check_image(landscape())
    first = opennsfw.load_classifier(1)
    check_image(still_life())
    check_image(landscape(), ModerationSettings(nsfw_block_threshold=0.5))  # new thresholds, same model
    assert opennsfw.load_classifier(1) is first
    assert opennsfw.load_count(1) == 1
    assert get_image_backends(ModerationSettings())[0] is get_image_backends(ModerationSettings())[0]


def test_concurrent_first_calls_share_one_backend_list():
    settings = ModerationSettings(nsfw_review_threshold=0.123)  # a key no other test uses
    seen: list[list] = []
    threads = [threading.Thread(target=lambda: seen.append(get_image_backends(settings))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and all(backends[0] is seen[0][0] for backends in seen)


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.0, "allow"),
        (0.399, "allow"),
        (0.4, "review"),
        (0.79, "review"),
        (0.8, "block"),
        (1.0, "block"),
        (float("nan"), "block"),
    ],
)
def test_threshold_rule(score, expected):
    decision, reason = decide("nsfw", score, 0.4, 0.8)
    assert decision == expected
    assert "nsfw" in reason


# ---------------------------------------------------------------- video


@pytest.mark.parametrize(
    ("total", "count", "expected"),
    [
        (100, 4, [0, 33, 66, 99]),
        (10, 4, [0, 3, 6, 9]),
        (3, 4, [0, 1, 2]),
        (25, 2, [0, 24]),
        (7, 1, [6]),
        (1, 4, [0]),
    ],
)
def test_sample_indices_examples(total, count, expected):
    assert sample_indices(total, count) == expected


@given(total=st.integers(1, 2000), count=st.integers(1, 64))
def test_sample_indices_are_distinct_sorted_and_span_the_clip(total, count):
    indices = sample_indices(total, count)
    assert len(indices) == min(count, total)
    assert indices == sorted(set(indices))
    assert indices[-1] == total - 1
    if len(indices) > 1:
        assert indices[0] == 0


def test_no_frames_is_refused():
    with pytest.raises(InputRejected) as caught:
        check_frames([])
    assert caught.value.code == "no_frames"


def clip(total: int, skin_at: int | None) -> np.ndarray:
    photo = np.asarray(landscape(256, 256))
    frames = np.stack([photo] * total)
    if skin_at is not None:
        frames[skin_at] = flat(SKIN)
    return frames


def test_worst_sampled_frame_decides_and_is_named():
    settings = ModerationSettings(nsfw_review_threshold=0.1, nsfw_block_threshold=0.9, video_sample_frames=4)
    frames = clip(10, skin_at=9)  # sampled: 0, 3, 6, 9
    verdict = check_frames(frames, settings)
    assert verdict.subject == "video"
    assert verdict.frames == (0, 3, 6, 9)
    assert verdict.decision == "review"
    nsfw = next(r for r in verdict.results if r.backend == "opennsfw")
    skin_score = check_image(flat(SKIN), settings).results[0].scores["nsfw"]
    assert nsfw.scores["nsfw"] == pytest.approx(skin_score)  # max over frames
    assert nsfw.reasons and all(reason.startswith("frame 9: ") for reason in nsfw.reasons)
    assert "violence" in verdict.unchecked and "violence" not in verdict.checked
    with pytest.raises(ModerationBlocked) as caught:
        enforce(verdict, settings.model_copy(update={"on_review": "block"}))
    assert caught.value.code == "review_required" and "frame 9" in caught.value.message


def test_frames_between_samples_are_not_checked():
    settings = ModerationSettings(nsfw_review_threshold=0.1, video_sample_frames=4)
    assert check_frames(clip(10, skin_at=4), settings).decision == "allow"
    assert check_frames(clip(10, skin_at=3), settings).decision == "review"


def test_blocked_video_and_list_of_frames():
    settings = ModerationSettings(nsfw_review_threshold=0.0, nsfw_block_threshold=0.0, video_sample_frames=2)
    frames = [np.asarray(landscape(128, 128, seed=i)) for i in range(5)]
    verdict = check_frames(frames, settings)
    assert verdict.frames == (0, 4) and verdict.blocked
    with pytest.raises(ModerationBlocked) as caught:
        enforce(verdict, settings)
    assert caught.value.code == "blocked_video"
    assert "generated video" in caught.value.message


def test_clip_array_must_be_four_dimensional():
    with pytest.raises(InputRejected):
        check_frames(np.zeros((64, 64, 3), np.uint8))


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    ("prompt", "term"),
    [
        ("a nude figure on a beach", "nude"),
        ("NAKED", "naked"),
        ("Sex!", "sex"),
        ("nudes, please", "nude"),
        ("(porn)", "porn"),
        ("child-abuse scene", "child abuse"),
        ("Child   Abuse", "child abuse"),
        ("Ｎüde", "nude"),
    ],
)
def test_block_terms_block(prompt, term):
    verdict = check_prompt(prompt)
    assert verdict.decision == "block"
    assert f"matched block term {term!r}" in verdict.results[0].reasons
    with pytest.raises(ModerationBlocked) as caught:
        enforce(verdict, ModerationSettings())
    assert caught.value.code == "blocked_prompt" and term in caught.value.message


@pytest.mark.parametrize(
    ("prompt", "term"),
    [
        ("n.u.d.e", "nude"),
        ("nud3 photo", "nude"),
        ("s e x", "sex"),
        ("s3x", "sex"),
        ("n@ked", "naked"),
        ("p-0-r-n", "porn"),
        ("show me a n u d e woman", "nude"),
        ("c.h.i.l.d a.b.u.s.e", "child abuse"),
    ],
)
def test_simple_obfuscation_is_caught(prompt, term):
    verdict = check_prompt(prompt)
    assert verdict.decision == "block"
    assert f"matched block term {term!r} (obfuscated)" in verdict.results[0].reasons


@pytest.mark.parametrize(
    "prompt",
    [
        "A sunny afternoon in Essex",
        "Middlesex cricket ground",
        "an old brass sextant on a desk",
        "Sussex coastline at dawn, 1970, 5 gulls",
        "the gunwale of a boat",
        "a gorgeous sunset",  # contains "gore"
        "skill at killing time? no: a bloodhound",  # "kill"/"blood" inside longer words
        "pornographic",  # a block term's prefix is not the term
        "Plan B: a 5 x 7 print of a U.S. express train",  # single letters and digits, no term
    ],
)
def test_innocent_words_containing_terms_pass(prompt):
    verdict = check_prompt(prompt)
    assert verdict.decision == "allow", verdict.reasons


def test_review_terms_review_and_block_wins_over_review():
    review = check_prompt("a man holding a Gun")
    assert review.decision == "review" and review.needs_review
    assert review.results[0].reasons == ("matched review term 'gun'",)
    assert enforce(review, ModerationSettings()) is None
    both = check_prompt("naked with guns and blood")
    assert both.decision == "block"
    assert both.results[0].reasons == (
        "matched block term 'naked'",
        "matched review term 'blood'",  # terms are reported in the configured order
        "matched review term 'gun'",
    )
    assert both.results[0].scores == {"block_terms": 1.0, "review_terms": 2.0}


@pytest.mark.parametrize("prompt", [None, "", "   \n"])
def test_no_prompt_is_allowed(prompt):
    verdict = check_prompt(prompt)
    assert verdict.decision == "allow" and verdict.results[0].reasons == ("no prompt",)


def test_custom_term_lists_and_version_tracks_them():
    settings = ModerationSettings(prompt_block_terms=["zombie apocalypse"], prompt_review_terms=[])
    assert check_prompt("a Zombie-Apocalypse movie", settings).decision == "block"
    assert check_prompt("nude", settings).decision == "allow"
    assert check_prompt("x", settings).results[0].version != check_prompt("x").results[0].version


# ---------------------------------------------------------------- reports


def test_every_verdict_serialises_to_json():
    verdicts = [
        check_image(landscape()),
        check_prompt("a gun"),
        check_prompt(None),
        check_frames(clip(6, skin_at=None)),
        check_image(landscape(), ModerationSettings(enabled=False)),
    ]
    for verdict in verdicts:
        assert isinstance(verdict, Verdict) and all(isinstance(r, BackendResult) for r in verdict.results)
        data = json.loads(json.dumps(verdict.to_dict()))
        assert data["decision"] == verdict.decision and data["subject"] == verdict.subject
        for backend in data["backends"]:
            assert backend["backend"] and backend["version"]
            assert set(backend) >= {"scores", "decision", "reasons", "checked", "unchecked"}
    image = verdicts[0].to_dict()
    assert [b["backend"] for b in image["backends"]] == ["opennsfw", "unchecked"]
    assert image["unchecked"] == ["violence", "gore", "weapons"]
    assert verdicts[3].to_dict()["frames"] == [0, 2, 3, 5]
