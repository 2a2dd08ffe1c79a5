"""What every generation engine has in common: bounded per-clip options, the clip it returns,
and the small interface the run, the workers and the API call."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.settings import StorySettings

ProgressFn = Callable[[int, int], None]
"""Called with (step done, steps in all) while an engine works."""


class GenerationOptions(BaseModel):
    """Per-clip options. Bounds live here so bad values never reach a model.

    ``None`` means "the engine's own default" (SVD-XT: 25 frames at 7 fps, 576x1024; tiny: 144x256;
    motion: the story's size and frame rate and one seamless cycle of it, see ``resolve_for_story``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="random seed; None picks one and reports it")
    num_frames: int | None = Field(None, ge=2, le=240, description="frames to generate")
    num_inference_steps: int = Field(25, ge=1, le=100, description="denoising steps (svd/tiny)")
    fps: int | None = Field(None, ge=1, le=60, description="frames per second of the generated clip")
    motion_bucket_id: int = Field(127, ge=0, le=1023, description="amount of motion (svd); strength (motion)")
    noise_aug_strength: float = Field(0.02, ge=0.0, le=1.0, description="noise added to the conditioning image")
    min_guidance_scale: float = Field(1.0, ge=0.0, le=20.0)
    max_guidance_scale: float = Field(3.0, ge=0.0, le=20.0, description="1.0 disables classifier-free guidance")
    decode_chunk_size: int = Field(8, ge=1, le=64, description="frames decoded by the VAE at once (memory)")
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="generation width, multiple of 8")
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="generation height, multiple of 8")
    motion_style: Literal["auto", "parallax", "sky", "still-camera"] = Field(
        "auto", description="motion engine: what moves; auto = what the scene analysis found (sky, water, "
                            "foliage, a parallax camera), parallax = camera and subject layer only, sky = only the "
                            "sky (and water), still-camera = everything that moves by itself, camera still")

    @model_validator(mode="after")
    def _guidance_ordered(self) -> "GenerationOptions":
        if self.min_guidance_scale > self.max_guidance_scale:
            raise ValueError(
                f"min_guidance_scale ({self.min_guidance_scale}) must not exceed "
                f"max_guidance_scale ({self.max_guidance_scale})"
            )
        return self

    @classmethod
    def build(cls, **values: Any) -> "GenerationOptions":
        """Validate options, turning pydantic's error into a ConfigError a user can read."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            parts = [
                f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']} (got {e.get('input')!r})"
                for e in exc.errors()
            ]
            raise ConfigError("invalid generation options: " + "; ".join(parts), code="bad_option") from exc


@dataclass
class Clip:
    """Frames an engine made: uint8 RGB, shape (frames, height, width, 3)."""

    frames: np.ndarray
    fps: float
    seed: int
    notes: list[str] = field(default_factory=list)
    looped: bool = False  # the frames are one seamless cycle: the last one flows into the first
    details: dict[str, Any] = field(default_factory=dict)  # per-clip facts for the report (what moved, how)

    def __post_init__(self) -> None:
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ValueError(f"clip frames must be uint8 (F, H, W, 3), got {self.frames.dtype} {self.frames.shape}")

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[2]), int(self.frames.shape[1])


class Engine(abc.ABC):
    """A generation engine: load once, then turn framed images into clips."""

    name: str = "engine"
    default_size: tuple[int, int] = (576, 1024)  # portrait 9:16, the size SVD-XT was fine-tuned near
    digital_source_type: ClassVar[str]
    """The IPTC digital source type of the frames this engine makes: what actually made them. It is
    decided here, once per engine class, and flows to the C2PA ``c2pa.created`` action, the visible
    label ("AI-generated" only for a trained model), the report and ``alive verify``. Every concrete
    engine sets it; there is no default, so a new engine cannot inherit a label that is not true of it."""

    renders_story: ClassVar[bool] = False
    """Whether this engine, given the story's size and frame rate (``resolve_for_story``), renders
    seamless cycles at exactly that size and rate: then ``finish`` only repeats, labels and measures
    them (no retime, no resize). The generative engines do not."""

    def resolve(self, options: GenerationOptions) -> GenerationOptions:
        """Fill the size the caller left open with this engine's default."""
        width, height = options.width or self.default_size[0], options.height or self.default_size[1]
        return options.model_copy(update={"width": width, "height": height})

    def resolve_for_story(self, options: GenerationOptions, story: "StorySettings") -> GenerationOptions:
        """``resolve`` for a job that makes ``story``; engines that render the story directly
        (``renders_story``) take its size and frame rate when the caller left them open."""
        return self.resolve(options)

    @abc.abstractmethod
    def load(self) -> None:
        """Make the engine ready (weights in memory). Idempotent; never called at import."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What ran, for the report and the C2PA softwareAgent: engine, model, revision, device, dtype."""

    @abc.abstractmethod
    def generate(self, image: Image.Image, options: GenerationOptions, progress: ProgressFn | None = None) -> Clip:
        """Animate one RGB image that is already framed to options.width x options.height."""

    def generate_batch(self, images: list[Image.Image], options: GenerationOptions, seeds: list[int | None],
                       progress: ProgressFn | None = None) -> list[Clip]:
        """Several framed images of one size with the same options (one seed each). Engines that can
        run them as one model batch override this; the default makes them one after another."""
        return [self.generate(image, options.model_copy(update={"seed": seed}), progress)
                for image, seed in zip(images, seeds)]

    def __call__(self, image: Image.Image, options: GenerationOptions, progress: ProgressFn | None = None) -> Clip:
        return self.generate(image, options, progress)

    @property
    def software_agent(self) -> str:
        d = self.describe()
        model = d.get("model")
        rev = d.get("revision")
        return f"alive {self.name} engine" + (f" ({model}{'@' + rev if rev else ''})" if model else "")


def pick_seed(seed: int | None) -> int:
    """The seed to use: the caller's, or a fresh random one (always reported)."""
    if seed is not None:
        return seed
    return int(np.random.default_rng().integers(0, 2**31 - 1))
