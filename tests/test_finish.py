"""Finishing a clip into a story: loop order, crossfade, per-job options and presets, and the whole
finish on real frames (flow interpolation, resize, visible label)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.finish import StoryOptions, crossfade_cycle, finish, loop_order, story_settings
from pipeline.settings import load_settings


def ramp(count: int, size=(16, 8), step: int = 10) -> np.ndarray:
    """Frames whose value is their index * step: easy to read back."""
    return np.stack([np.full((*size, 3), i * step, np.uint8) for i in range(count)])


def test_pingpong_does_not_repeat_the_turn_around_frames():
    order, cycle = loop_order(4, "pingpong", 10)
    assert cycle == 6
    assert order == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    # no frame shown twice in a row anywhere, including at the ends of the cycle
    assert all(a != b for a, b in zip(order, order[1:]))


def test_none_replays_and_trims_to_the_length():
    assert loop_order(3, "none", 7)[0] == [0, 1, 2, 0, 1, 2, 0]
    assert loop_order(10, "none", 4)[0] == [0, 1, 2, 3]
    with pytest.raises(ConfigError):
        loop_order(3, "bounce", 4)


def test_crossfade_cycle_ends_where_it_starts():
    frames = ramp(12)
    cycle = crossfade_cycle(frames, 3)
    assert len(cycle) == 9 and cycle[0, 0, 0, 0] == 30  # starts at frames[3]
    # the tail moves from the clip's end towards its head: each step is smaller than the raw jump
    tail = cycle[-3:, 0, 0, 0].astype(int)
    raw_jump = abs(int(frames[-1, 0, 0, 0]) - int(frames[3, 0, 0, 0]))
    wrap_jump = abs(int(cycle[-1, 0, 0, 0]) - int(cycle[0, 0, 0, 0]))
    assert wrap_jump < raw_jump / 3, (tail, wrap_jump)
    assert crossfade_cycle(frames, 0) is frames


def test_story_options_and_preset_layering():
    settings = load_settings()
    job = story_settings(settings, StoryOptions.build(preset="whatsapp-status", duration_s=10, loop="crossfade",
                                                      language="id", ambience="rain"))
    assert (job.story.width, job.story.height, job.story.max_duration_s) == (720, 1280, 60)
    assert job.encode.max_bytes == 16_000_000 and job.encode.profile == "main"
    assert (job.story.duration_s, job.story.loop, job.overlay.language, job.audio.ambience) == (10, "crossfade", "id", "rain")
    assert story_settings(settings, None) is settings
    with pytest.raises(ConfigError, match="whatsapp-status"):  # 90 s exceeds WhatsApp's 60 s
        story_settings(settings, StoryOptions.build(preset="whatsapp-status", duration_s=90))
    with pytest.raises(ConfigError, match="unknown preset"):
        story_settings(settings, StoryOptions.build(preset="myspace"))
    with pytest.raises(ConfigError, match="loop"):
        StoryOptions.build(loop="bounce")


def test_load_settings_with_preset_keeps_explicit_overrides():
    s = load_settings(preset="reels", story={"fps": 24})
    assert (s.story.width, s.story.height, s.story.fps, s.encode.maxrate) == (1080, 1920, 24, "8M")


def test_finish_makes_the_story_frames(settings):
    """7 fps clip of a moving gradient -> 12 fps, 1 s pingpong, 144x256 story with the label drawn."""
    h, w = 128, 72
    xs = np.linspace(0, 255, w, dtype=np.float32)
    clip = np.stack([np.repeat(np.roll(xs, 3 * i)[None, :, None], h, 0).repeat(3, 2) for i in range(5)]).astype(np.uint8)
    done = finish(clip, 7.0, settings)
    assert done.fps == 12 and len(done.frames) == 12 and done.size == (144, 256)
    assert done.record["retime"]["frames_out"] == 7  # (5 - 1) * 12 / 7 + 1 = 7.86 -> 7
    assert done.record["loop"]["mode"] == "pingpong" and done.record["overlay"]["text"] == "AI-generated"
    x0, y0, x1, y1 = done.record["overlay"]["box"]
    assert 0 <= x0 < x1 <= 144 and 0 <= y0 < y1 <= 256
    assert 0 <= done.poster_index < 12 and done.record["flicker"] >= 0
    kinds = [a["action"] for a in done.actions]
    assert kinds.count("c2pa.edited") == 3 and "c2pa.resized" in kinds  # fps, loop, label; resize
    assert all(isinstance(a["parameters"]["description"], str) for a in done.actions)


def test_long_clip_pingpong_turns_within_the_story(settings):
    """A 4 s motion-engine-like clip in a 1 s story: only the frames shown are interpolated, and the
    pingpong turns inside the story so that a player's repeat is seamless."""
    clip = ramp(96, size=(128, 72), step=2)
    done = finish(clip, 24.0, settings)
    assert len(done.frames) == 12 and done.record["retime"]["frames_out"] == 7
    assert done.record["retime"]["frames_in"] == 14 and done.record["loop"]["cycle_frames"] == 12
    # frame values run up and back down: the last frame is next to the first in the cycle
    probe = [int(f[5, 5, 0]) for f in done.frames]
    assert probe.index(max(probe)) == 6 and abs(probe[-1] - probe[0]) <= abs(probe[1] - probe[0]) + 1
