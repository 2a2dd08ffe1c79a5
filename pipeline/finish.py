"""Generated clip -> story frames: frame rate, loop and length, story size, visible label.

SVD-XT gives ~25 frames at ~7 fps near 576x1024; a story is 1080x1920 at 24-30 fps, a few seconds
long, and says visibly how it was made ("AI-generated" for a trained model, "Animated photo" for the
classical motion engine). ``finish`` closes that gap in a fixed order chosen for cost and quality:

1. **retime** to the story fps at the generation size (optical flow is 3-4x cheaper there than at
   1080x1920, and the in-between frames are then upscaled like every other frame);
2. **loop** to the target duration: ``none`` replays the clip, ``pingpong`` plays it forward then
   backward without repeating the turn-around frames, ``crossfade`` blends the tail into the head so
   the cut is invisible. Length comes from looping only, never from slowing frames down;
3. **fit** to the story size (Lanczos up, area down; a clip of another aspect is padded over a
   blurred copy of itself);
4. **label** drawn into every frame (on by default, localised; its words follow the engine's IPTC
   digital source type, the same one the C2PA manifest carries);
5. measure **flicker** (motion-compensated luminance change) and choose the **poster** frame.

Only the frames of one loop cycle are resized and labelled; the story is a list of references into
them, so a 30 s story costs the memory of one cycle.

A clip that an engine rendered as the story (``looped``, at the story's size and frame rate: the
motion engine) skips steps 1-3: ``finish_rendered`` repeats its seamless cycle, labels it in place,
measures it and chooses the poster, and records the same keys.

Every edit is listed in ``Finished.actions`` as a C2PA action with its parameters, so the signed
label says what happened after generation. ``story_settings`` applies a platform preset and the
per-job story options to the settings, for the CLI, the workers and the API alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.encode import check_encoder
from pipeline.errors import ConfigError
from pipeline.frame import fit_clip_to_story
from pipeline.interpolate import retime
from pipeline.overlay import draw_label
from pipeline.previews import best_frame
from pipeline.provenance import is_ai_generated
from pipeline.quality import flicker
from pipeline.settings import Settings, StorySettings, load_preset

StepProgress = Callable[[int, int], None]

LOOP_MODES = ("none", "pingpong", "crossfade")


class StoryOptions(BaseModel):
    """What one job may choose about its story; ``None`` keeps the configured value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = Field(None, description="platform preset: tiktok, reels, shorts, whatsapp-status")
    fps: int | None = Field(None, ge=1, le=60, description="story frame rate")
    duration_s: float | None = Field(None, gt=0, le=120, description="story length in seconds")
    loop: Literal["none", "pingpong", "crossfade"] | None = None
    language: str | None = Field(None, max_length=16, description="language of the visible label")
    ambience: Literal["waves", "wind", "rain", "room"] | None = Field(None, description="procedural sound bed")

    @classmethod
    def build(cls, **values: Any) -> "StoryOptions":
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()]
            raise ConfigError("invalid story options: " + "; ".join(parts), code="bad_option") from exc


def story_settings(settings: Settings, options: StoryOptions | None) -> Settings:
    """The settings one job runs with: the configured ones, then its preset, then its own options."""
    if options is None or not options.model_dump(exclude_none=True):
        return settings
    doc = settings.model_dump()
    layers: list[dict[str, Any]] = []
    if options.preset:
        layers.append(load_preset(options.preset))
    own = {"story": {k: getattr(options, k) for k in ("fps", "duration_s", "loop") if getattr(options, k) is not None}}
    if options.language is not None:
        own["overlay"] = {"language": options.language}
    if options.ambience is not None:
        own["audio"] = {"ambience": options.ambience}
    layers.append(own)
    for layer in layers:
        for section, values in layer.items():
            doc[section] = {**doc.get(section, {}), **values}
    try:
        return type(settings).model_validate(doc)
    except ValidationError as exc:
        reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        where = f" with preset {options.preset}" if options.preset else ""
        raise ConfigError(f"invalid story options for this job{where}: {reason}", code="bad_option") from exc


# -- loop and length -------------------------------------------------------------------------------
def frames_wanted(mode: str, total: int, overlap: int = 0) -> int:
    """How many clip frames (at the story fps) a story of ``total`` frames can use.

    ``pingpong`` wants half the story plus one, so the turn-around happens within the story and
    the story loops seamlessly when a player repeats it; ``crossfade`` needs the overlap on top.
    """
    if mode == "pingpong":
        return max(2, total // 2 + 1)
    return total + overlap
def loop_order(count: int, mode: str, total: int) -> tuple[list[int], int]:
    """Indices into a cycle of frames for a story of ``total`` frames, and the cycle length.

    For ``none``/``pingpong`` the cycle is the clip's own frames; for ``crossfade`` it is the cycle
    ``crossfade_cycle`` builds. Index lists only: no pixels are copied here.
    """
    if mode not in LOOP_MODES:
        raise ConfigError(f"loop must be one of {', '.join(LOOP_MODES)}, got {mode!r}", code="bad_option")
    if count < 1 or total < 1:
        raise ConfigError(f"a story needs at least one frame (clip {count}, story {total})", code="bad_option")
    if mode == "pingpong" and count > 2:
        cycle = list(range(count)) + list(range(count - 2, 0, -1))
    else:
        cycle = list(range(count))
    return [cycle[i % len(cycle)] for i in range(total)], len(cycle)


def crossfade_cycle(frames: np.ndarray, overlap: int) -> np.ndarray:
    """A seamless cycle: frames[overlap:], with its last ``overlap`` frames blended into the clip's
    first ones, so the cycle's end leads straight into its start (frames[overlap])."""
    count = len(frames)
    overlap = max(0, min(overlap, count // 3))
    if overlap == 0:
        return frames
    body = frames[overlap:].copy()
    tail_start = len(body) - overlap
    for j in range(overlap):
        weight = (j + 1) / (overlap + 1)  # towards the head, reaching it just after the cycle's end
        mixed = frames[count - overlap + j].astype(np.float32) * (1 - weight) + frames[j].astype(np.float32) * weight
        body[tail_start + j] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return body


# -- the whole finish --------------------------------------------------------------------------------
@dataclass
class Finished:
    frames: list[np.ndarray]  # the story, frame by frame (references into the labelled cycle)
    fps: int
    poster_index: int  # index into ``frames`` of the chosen poster frame
    record: dict[str, Any]  # what was done, for the job report
    actions: list[dict[str, Any]] = field(default_factory=list)  # the same, as C2PA actions

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames[0].shape[1]), int(self.frames[0].shape[0])

    @property
    def duration_s(self) -> float:
        return len(self.frames) / self.fps


def finish(frames: np.ndarray, clip_fps: float, settings: Settings, progress: StepProgress | None = None, *,
           digital_source_type: str | None = None, looped: bool = False) -> Finished:
    """Make the story frames from the generated clip (uint8 (F, H, W, 3) at ``clip_fps``).

    ``digital_source_type`` is the IPTC term of the engine that made the clip; it picks the visible
    label's words. None (not known) draws the "AI-generated" text: over-disclosing beats hiding AI.
    ``looped`` says the clip is one seamless cycle; one already at the story's size and frame rate
    is taken as it is (``finish_rendered``).
    """
    story: StorySettings = settings.story
    if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ConfigError(f"finish needs uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}",
                          code="bad_frames")
    clip_count, (clip_h, clip_w) = len(frames), frames.shape[1:3]
    if looped and (clip_w, clip_h) == (story.width, story.height) and abs(clip_fps - story.fps) < 1e-6:
        return finish_rendered(frames, settings, progress, digital_source_type=digital_source_type)
    total = max(1, round(story.duration_s * story.fps))
    report = _Progress(progress, 4)
    actions: list[dict[str, Any]] = []

    overlap = round(story.crossfade_s * story.fps) if story.loop == "crossfade" else 0
    wanted = frames_wanted(story.loop, total, overlap)
    # only the part of the clip the story shows is interpolated (a long clip in a short story)
    source = frames[: min(clip_count, math.ceil((wanted - 1) * clip_fps / story.fps) + 2)]
    timed = retime(source, clip_fps, story.fps, method=story.interpolation) if len(source) > 1 else source
    timed = timed[:wanted]
    retimed = {"from_fps": round(float(clip_fps), 3), "to_fps": story.fps, "method": story.interpolation,
               "frames_in": len(source), "frames_out": len(timed)}
    if len(source) < clip_count:
        retimed["clip_frames_unused"] = clip_count - len(source)
    if story.fps != clip_fps and clip_count > 1:
        actions.append(_edited(f"frame rate converted from {clip_fps:g} to {story.fps} fps ({_METHOD[story.interpolation]})",
                               retimed))
    report.step()

    cycle = crossfade_cycle(timed, overlap) if overlap else timed
    order, cycle_len = loop_order(len(cycle), story.loop, total)
    looped = {"mode": story.loop, "duration_s": round(total / story.fps, 3), "frames": total,
              "cycle_frames": cycle_len, "repeats": round(total / cycle_len, 2)}
    if story.loop == "crossfade":
        looped["crossfade_frames"] = len(timed) - len(cycle)  # as crossfade_cycle clamped it
    if cycle_len < total or story.loop != "none":
        actions.append(_edited(f"looped ({story.loop}) to {total / story.fps:g} s", looped))
    report.step()

    used = sorted(set(order))  # frames of the cycle the story shows (a short story may not use them all)
    fitted, fit = fit_clip_to_story(np.ascontiguousarray(cycle[used]), story.width, story.height,
                                    resampler=story.resampler, darken=settings.frame.pad_darken)
    if fit.get("how") != "none" and (clip_w, clip_h) != (story.width, story.height):
        actions.append({"action": "c2pa.resized", "parameters": {
            "description": f"resized from {clip_w}x{clip_h} to {story.width}x{story.height} ({fit.get('how')})",
            **_json_params(fit)}})
    report.step()

    overlay = _label(fitted, settings, digital_source_type, actions)
    report.step()
    return _assemble(fitted, used, order, story, {"retime": retimed, "loop": looped, "fit": _json_params(fit),
                                                   "overlay": overlay}, actions)


def finish_rendered(frames: np.ndarray, settings: Settings, progress: StepProgress | None = None, *,
                    digital_source_type: str | None = None) -> Finished:
    """The story from a clip an engine rendered as the story: one seamless cycle at the story's size
    and frame rate (the motion engine). Nothing is retimed, blended or resized: the cycle is repeated
    to the story's length and labelled **in place** (a 1080x1920 cycle is too large to copy); the
    record has the same keys as ``finish``'s, with ``retime.method`` and ``fit.how`` "none" and
    ``loop.mode`` "cycle". Read-only frames (a worker's, mapped from the store) are copied once."""
    story: StorySettings = settings.story
    if not frames.flags.writeable:
        frames = frames.copy()
    count, (height, width) = len(frames), frames.shape[1:3]
    total = max(1, round(story.duration_s * story.fps))
    report = _Progress(progress, 4)
    actions: list[dict[str, Any]] = []
    retimed = {"from_fps": float(story.fps), "to_fps": story.fps, "method": "none", "frames_in": count,
               "frames_out": count}
    report.step()
    order = [i % count for i in range(total)]
    looped = {"mode": "cycle", "duration_s": round(total / story.fps, 3), "frames": total, "cycle_frames": count,
              "repeats": round(total / count, 2), "seamless": total % count == 0,
              "how": "the engine's own seamless cycle, repeated (no pingpong, no crossfade)"}
    if count < total:
        actions.append(_edited(f"looped (the engine's seamless {count}-frame cycle) to {total / story.fps:g} s",
                               looped))
    report.step()
    fit = {"from": [width, height], "to": [story.width, story.height], "how": "none"}
    report.step()
    overlay = _label(frames, settings, digital_source_type, actions)
    report.step()
    used = sorted(set(order))
    # flicker over one cycle and its seam (what a viewer sees again and again), at most 2 s
    seam = count + 1 if count < total else count
    return _assemble(frames, used, order, story, {"retime": retimed, "loop": looped, "fit": fit, "overlay": overlay},
                     actions, measure=min(seam, 2 * story.fps))


def _label(frames: np.ndarray, settings: Settings, digital_source_type: str | None,
           actions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Draw the visible label into ``frames`` (in place) when it is on, and record the edit."""
    if not settings.overlay.enabled:
        return None
    ai_generated = digital_source_type is None or is_ai_generated(digital_source_type)
    overlay = draw_label(frames, settings.overlay, ai_generated=ai_generated)
    actions.append(_edited(f"visible label \"{overlay['text']}\" drawn into every frame", overlay))
    return overlay


def _assemble(cycle: np.ndarray, used: list[int], order: list[int], story: StorySettings, steps: dict[str, Any],
              actions: list[dict[str, Any]], measure: int | None = None) -> Finished:
    """The story as references into the labelled ``cycle`` (its rows are the clip frames ``used``),
    with the poster chosen and flicker measured over its first ``measure`` frames (2 s by default)."""
    position = {index: i for i, index in enumerate(used)}
    story_frames = [cycle[position[index]] for index in order]
    poster_in_cycle, poster_scores = best_frame(cycle)
    poster_index = order.index(used[poster_in_cycle])
    total = len(order)
    measured = [_flicker_size(frame) for frame in story_frames[: min(total, measure or 2 * story.fps)]]
    record = {
        "size": [story.width, story.height], "fps": story.fps, "frames": total,
        "duration_s": round(total / story.fps, 3), **steps,
        "flicker": round(flicker(np.stack(measured)), 3),
        "poster": {"frame": poster_index, **poster_scores},
    }
    return Finished(frames=story_frames, fps=story.fps, poster_index=poster_index, record=record, actions=actions)


def _flicker_size(frame: np.ndarray, max_side: int = 256) -> np.ndarray:
    """The copy ``flicker`` measures (long side 256, area-averaged, as it makes itself), made one
    frame at a time, so two seconds of full-size story are never stacked."""
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return frame
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


_METHOD = {"flow": "optical-flow interpolation", "blend": "frame blending", "repeat": "frame repetition"}


def _edited(description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"action": "c2pa.edited", "parameters": {"description": description, **_json_params(parameters)}}


def _json_params(values: dict[str, Any]) -> dict[str, Any]:
    """Only JSON scalars and short lists: C2PA action parameters are CBOR-encoded as given."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (int, float, str)) for v in value):
            out[key] = list(value)
    return out


class _Progress:
    def __init__(self, callback: StepProgress | None, total: int):
        self.callback, self.total, self.done = callback, total, 0
        if callback:
            callback(0, total)

    def step(self) -> None:
        self.done += 1
        if self.callback:
            self.callback(self.done, self.total)



# -- output names ----------------------------------------------------------------------------------
VIDEO_SUFFIXES = {".mp4": "MP4"}
"""Containers a labelled story can be written to. WebM is not here: c2pa-rs 0.91 cannot embed a
manifest in Matroska/WebM, and alive never hands out an unlabelled video (VP9 goes into MP4)."""


def check_output_name(output: Path, settings: Settings) -> None:
    """Refuse, before any work is done, an output alive cannot label or an encoder it cannot run."""
    if output.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"cannot write {output.name}: stories are written as MP4 (with the C2PA label "
                          f"embedded); name the output *.mp4", code="bad_output_name")
    check_encoder(settings.encode, output)
