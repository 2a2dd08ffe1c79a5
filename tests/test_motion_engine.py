"""The living motion engine: it renders the story directly (size, rate, a seamless cycle), moves only
what the scene analysis found, never warps a face, and finish takes its clip as it is.

Small pictures throughout (the suite's story is 144x256 at 12 fps, 1 s: tests/conftest.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import stages
from pipeline.engines import GenerationOptions
from pipeline.engines.motion import MotionEngine, cycle_frames
from pipeline.errors import ConfigError
from pipeline.frame import fit_to_size
from pipeline.living import LivingPhoto
from pipeline.scene import analyse


def sky_photo(width: int = 144, height: int = 256, seed: int = 0) -> Image.Image:
    """Blue sky with soft clouds over brown, textured ground (neither green nor blue: not foliage, not water)."""
    rng = np.random.default_rng(seed)
    horizon = int(0.55 * height)
    img = np.zeros((height, width, 3), np.float32)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = np.array([45, 110, 205], np.float32) * (1 - t) + np.array([150, 195, 240], np.float32) * t
    blobs = cv2.GaussianBlur(rng.random((horizon, width)).astype(np.float32), (0, 0), width / 14)
    blobs = np.clip((blobs - blobs.mean()) / (blobs.std() + 1e-6) - 0.3, 0, 1)[..., None]
    img[:horizon] = img[:horizon] * (1 - blobs) + 245 * blobs
    ground = cv2.GaussianBlur(rng.random((height - horizon, width)).astype(np.float32), (0, 0), 1.2)
    img[horizon:] = np.array([120, 85, 55], np.float32) * (0.6 + 0.8 * ground[..., None])
    img += rng.normal(0, 1.5, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))


def _story_options(settings, **values) -> GenerationOptions:
    options = GenerationOptions.build(seed=values.pop("seed", 3), **values)
    return MotionEngine().resolve_for_story(options, settings.story)


def _render(image: Image.Image, settings, **values):
    options = _story_options(settings, **values)
    framed, _ = fit_to_size(image, options.width, options.height, "crop")
    return MotionEngine().generate(framed, options), options


def _step(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_it_renders_the_story_size_rate_and_a_whole_cycle(settings):
    clip, options = _render(sky_photo(), settings)
    story = settings.story
    assert (options.width, options.height, options.fps) == (story.width, story.height, story.fps)
    assert clip.frames.shape == (round(story.duration_s * story.fps), story.height, story.width, 3)
    assert clip.fps == story.fps and clip.looped
    assert clip.details["motion"]["cycle_frames"] == len(clip.frames)


def test_a_default_story_is_whole_cycles_that_fit_the_memory_budget():
    assert cycle_frames(120, 1080 * 1920 * 3, 30) == 40  # 3 cycles, 237 MiB instead of 712
    assert cycle_frames(12, 144 * 256 * 3, 12) == 12  # a small story is one cycle
    assert 120 % cycle_frames(120, 720 * 1280 * 3, 30) == 0
    assert cycle_frames(127, 1080 * 1920 * 3, 30) <= 43  # no whole divisor: the largest that fits


@pytest.mark.parametrize("style", ["auto", "parallax", "still-camera"])
def test_the_loop_is_seamless(settings, style, sample_photo):
    photo = sky_photo() if style != "parallax" else Image.open(sample_photo)
    clip, _ = _render(photo, settings, motion_style=style)
    frames = clip.frames
    steps = [_step(frames[i], frames[i + 1]) for i in range(len(frames) - 1)]
    wrap = _step(frames[-1], frames[0])
    assert max(steps) > 0.05  # it moves
    assert wrap <= 1.5 * float(np.median(steps)) + 0.05  # last -> first like any neighbouring pair


def test_still_camera_moves_the_sky_and_leaves_the_rest_still(settings):
    clip, options = _render(sky_photo(), settings, motion_style="still-camera")
    motion = clip.details["motion"]
    assert set(motion["moved"]) == {"sky"} and "camera" not in motion["moved"]
    framed, _ = fit_to_size(sky_photo(), options.width, options.height, "crop")
    sky = cv2.resize(analyse(np.asarray(framed)).regions["sky"].mask, (options.width, options.height))
    frames = clip.frames
    ground = sky == 0
    assert ground.mean() > 0.3
    for frame in frames[1:]:  # every pixel outside the sky is the photo's own, bit for bit
        assert np.array_equal(frame[ground], frames[0][ground])
    middle = frames[len(frames) // 2]
    assert np.abs(middle.astype(int) - frames[0].astype(int))[sky > 0.9].mean() > 0.3  # the sky moves


def test_the_sky_style_without_a_sky_moves_nothing_and_says_so(settings, sample_photo):
    clip, _ = _render(Image.open(sample_photo), settings, motion_style="sky")
    assert clip.details["motion"]["moved"] == {}
    assert all(np.array_equal(frame, clip.frames[0]) for frame in clip.frames)
    assert any("no sky" in note for note in clip.notes)


def test_a_face_is_never_warped(settings, sample_photo):
    """The astronaut's face (found by the Haar cascade) moves rigidly with its layer in parallax, and
    not at all with a still camera."""
    story = settings.story.model_copy(update={"width": 288, "height": 512})
    photo = Image.open(sample_photo)
    framed, _ = fit_to_size(photo, 288, 512, "auto")
    options = MotionEngine().resolve_for_story(GenerationOptions.build(seed=1), story)
    scene = analyse(np.asarray(framed))
    assert scene.faces, "the cascade should find the astronaut's face"
    x0, y0, x1, y1 = scene.faces[0]
    parallax = MotionEngine().generate(framed, options.model_copy(update={"motion_style": "parallax"}))
    assert "subject" in parallax.details["motion"]["moved"] and parallax.details["motion"]["faces_warped"] is False
    face = parallax.frames[0][y0:y1, x0:x1]
    for frame in parallax.frames[1:]:
        window = frame[max(0, y0 - 12):y1 + 12, max(0, x0 - 12):x1 + 12]
        score = cv2.matchTemplate(window, face, cv2.TM_CCOEFF_NORMED).max()
        assert score > 0.97, score  # the same face, shifted: moved, not bent
    still = MotionEngine().generate(framed, options.model_copy(update={"motion_style": "still-camera"}))
    assert all(np.array_equal(f[y0:y1, x0:x1], still.frames[0][y0:y1, x0:x1]) for f in still.frames)


def test_same_seed_same_frames_other_seed_other_frames(settings):
    a, _ = _render(sky_photo(), settings, seed=11)
    b, _ = _render(sky_photo(), settings, seed=11)
    c, _ = _render(sky_photo(), settings, seed=12)
    assert np.array_equal(a.frames, b.frames) and a.seed == 11
    assert not np.array_equal(a.frames, c.frames)


def test_strength_zero_is_the_photo(settings):
    clip, options = _render(sky_photo(), settings, motion_bucket_id=0)
    framed, _ = fit_to_size(sky_photo(), options.width, options.height, "crop")
    assert all(np.array_equal(frame, np.asarray(framed)) for frame in clip.frames)


def test_motion_style_is_bounded():
    with pytest.raises(ConfigError, match="motion_style"):
        GenerationOptions.build(motion_style="wobble")
    with pytest.raises(ConfigError, match="motion style"):
        LivingPhoto(np.zeros((64, 64, 3), np.uint8), analyse(np.zeros((64, 64, 3), np.uint8)), style="wobble")


def test_finish_neither_retimes_nor_resizes_a_rendered_story(settings):
    clip, _ = _render(sky_photo(), settings)
    original = clip.frames.copy()
    finished = stages.finish(clip, clip.fps, settings)
    record = finished.record
    assert record["retime"]["method"] == "none" and record["fit"]["how"] == "none"
    assert record["loop"]["mode"] == "cycle" and record["loop"]["seamless"]
    assert record["overlay"]["text"] == "Animated photo"
    keys = {"size", "fps", "frames", "duration_s", "retime", "loop", "fit", "overlay", "flicker", "poster"}
    assert keys <= set(record)
    kinds = [a["action"] for a in finished.actions]
    assert "c2pa.resized" not in kinds
    assert not any("frame rate" in a["parameters"]["description"] for a in finished.actions)
    assert len(finished.frames) == round(settings.story.duration_s * settings.story.fps)
    assert all(np.shares_memory(frame, clip.frames) for frame in finished.frames)  # no copy, no upscale
    box = record["overlay"]["box"]
    outside = np.ones(original.shape[1:3], bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert np.array_equal(clip.frames[:, outside], original[:, outside])  # only the label was drawn


def test_a_clip_of_another_size_still_gets_the_usual_finish(settings):
    clip, _ = _render(sky_photo(72, 128), settings, width=72, height=128, num_frames=6)
    assert clip.frames.shape[1:3] == (128, 72) and clip.fps == 24  # a pinned size: the engine's own defaults
    finished = stages.finish(clip, clip.fps, settings)
    assert finished.record["fit"]["how"] == "resize" and finished.record["retime"]["method"] == "flow"


def test_the_report_says_what_moved(tmp_path, settings):
    from pipeline.run import animate

    photo = tmp_path / "sky.png"
    sky_photo().save(photo)
    result = animate(photo, tmp_path / "sky.mp4", settings, GenerationOptions.build(seed=2, motion_style="sky"))
    report = json.loads(result.report_path.read_text())
    motion = report["engine"]["motion"]
    assert motion["style"] == "sky" and set(motion["moved"]) == {"sky"}
    assert "drift" in motion["moved"]["sky"]["motion"] and report["engine"]["scene"]["regions"]["sky"]["fraction"] > 0.2
    assert report["options"]["motion_style"] == "sky"
    assert report["finish"]["loop"]["mode"] == "cycle" and report["finish"]["fit"]["how"] == "none"
    assert any("sky: clouds drift" in note for note in report["notes"])


def test_read_only_frames_of_a_rendered_story_are_labelled_on_a_copy(settings):
    """A worker reads the clip back from the store as a read-only array: the label goes onto a copy
    (seen: `ValueError: assignment destination is read-only` failed every motion job on workers)."""
    from pipeline import stages

    frames = np.full((4, settings.story.height, settings.story.width, 3), 90, np.uint8)
    frames.flags.writeable = False
    finished = stages.finish(frames, float(settings.story.fps), settings, looped=True)
    assert len(finished.frames) == round(settings.story.duration_s * settings.story.fps)
    assert not np.array_equal(finished.frames[0], frames[0])  # the label is drawn
    assert (frames == 90).all()
