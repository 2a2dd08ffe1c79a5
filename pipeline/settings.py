"""All configuration, in one place.

This is the only module that reads configuration files or the environment. Precedence, highest
first: keyword overrides (tests, CLI flags) > ``ALIVE_*`` environment variables (nested with
``__``, e.g. ``ALIVE_ENCODE__CRF=20``) > the YAML file given with ``--config`` or ``ALIVE_CONFIG``
> the defaults below. ``configs/default.yaml`` mirrors these defaults with one comment per line; a
test keeps the two identical.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from pipeline.errors import ConfigError

EngineName = Literal["motion", "svd", "tiny"]


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "alive"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IntakeSettings(_Section):
    max_bytes: int = Field(20_000_000, ge=1, description="largest upload accepted, in bytes")
    max_audio_bytes: int = Field(50_000_000, ge=1, description="largest sound file a job may bring, in bytes")
    max_pixels: int = Field(40_000_000, ge=1, description="largest decoded image, width x height")
    min_side: int = Field(64, ge=1, description="smallest accepted width or height, in pixels")
    max_aspect: float = Field(4.0, ge=1.0, description="widest accepted ratio long side / short side")
    formats: list[str] = Field(["JPEG", "PNG", "WEBP"], description="Pillow format names accepted")


class ModerationSettings(_Section):
    enabled: bool = True
    image_backends: list[str] = Field(["opennsfw"], description="image classifiers, in order")
    unchecked_categories: list[str] = Field(
        ["violence", "gore", "weapons"], description="categories no offline model covers here"
    )
    nsfw_review_threshold: float = Field(0.4, ge=0.0, le=1.0)
    nsfw_block_threshold: float = Field(0.8, ge=0.0, le=1.0)
    on_review: Literal["proceed", "block"] = "proceed"
    prompt_block_terms: list[str] = Field(
        ["nude", "naked", "nsfw", "porn", "sex", "gore", "beheading", "child abuse"]
    )
    prompt_review_terms: list[str] = Field(["blood", "gun", "weapon", "kill", "drugs"])
    video_sample_frames: int = Field(4, ge=1, le=64, description="frames of the clip checked again")
    onnx_threads: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _ordered(self) -> "ModerationSettings":
        if self.nsfw_review_threshold > self.nsfw_block_threshold:
            raise ValueError("nsfw_review_threshold must not exceed nsfw_block_threshold")
        return self


class EngineSettings(_Section):
    name: EngineName = Field("motion", description="motion (CPU, no weights), svd, tiny (tests)")
    model: str = Field("stabilityai/stable-video-diffusion-img2vid-xt", description="hub id or local dir")
    revision: str | None = None
    variant: str | None = Field("fp16", description="weights variant used on CUDA (None on CPU)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    cache_dir: Path | None = Field(None, description="hub cache; None = huggingface default")
    unet_weights: Path | None = Field(
        None, description="a UNet state dict (.safetensors) loaded over the model's UNet, e.g. "
                          "AnimateLCM-SVD-xt-1.1.safetensors for the few-step consistency sampler")


class FrameSettings(_Section):
    """How the photo becomes the generation input (see pipeline/frame.py)."""

    strategy: Literal["auto", "crop", "pad", "fit-generate"] = Field(
        "auto", description="crop, pad over a blurred copy, auto (crop unless >40% is lost), or fit-generate "
                            "(generate at the model size nearest the photo's shape, pad the clip into the story)"
    )
    crop_focus: Literal["centre", "saliency", "face"] = Field(
        "centre", description="where a crop is centred: the middle, the most salient region, or the largest face"
    )
    face_backend: Literal["none", "haar"] = Field(
        "none", description="face detector for crop_focus=face (haar: OpenCV's bundled cascade); none = saliency"
    )
    pad_darken: float = Field(0.45, ge=0.0, le=1.0, description="how much the blurred pad background is darkened")
    generation_size: Literal["engine", "fast", "standard"] = Field(
        "engine", description="engine = the engine's own default; fast = 320x576; standard = 576x1024"
    )


class StorySettings(_Section):
    """The finished story video (see pipeline/finish.py): size, rate, length, looping."""

    width: int = Field(1080, ge=64, le=4096, multiple_of=2, description="story width in pixels (even)")
    height: int = Field(1920, ge=64, le=4096, multiple_of=2, description="story height in pixels (even)")
    fps: int = Field(30, ge=1, le=60, description="story frame rate; the clip is interpolated up to it")
    duration_s: float = Field(4.0, gt=0, le=120, description="story length, reached by looping the clip")
    max_duration_s: float = Field(60.0, gt=0, description="longest story allowed (platform limit)")
    loop: Literal["none", "pingpong", "crossfade"] = Field(
        "pingpong", description="none (play once, hold the last frame), pingpong, or crossfade (seamless)"
    )
    crossfade_s: float = Field(0.5, gt=0, le=5, description="length of the crossfade for loop=crossfade")
    interpolation: Literal["flow", "blend", "repeat"] = Field(
        "flow", description="new in-between frames: optical flow warping, plain blending, or repeating"
    )
    resampler: Literal["auto", "lanczos", "area", "cubic"] = Field(
        "auto", description="resize filter; auto = Lanczos up, area down"
    )
    preview_width: int = Field(240, ge=32, le=1080, description="width of the animated WebP preview")
    preview_fps: int = Field(12, ge=1, le=30, description="frame rate of the animated WebP preview")
    preview_quality: int = Field(60, ge=1, le=100, description="WebP quality of the preview")

    @model_validator(mode="after")
    def _duration_fits(self) -> "StorySettings":
        if self.duration_s > self.max_duration_s:
            raise ValueError(f"duration_s ({self.duration_s}) exceeds max_duration_s ({self.max_duration_s})")
        return self


class OverlaySettings(_Section):
    """The visible "AI-generated" label drawn into every frame (see pipeline/overlay.py)."""

    enabled: bool = Field(True, description="draw the visible label (the C2PA label is always added)")
    language: str = Field("en", description="language of the default text: en, id, ...")
    text: str | None = Field(None, description="label text; None = the default text in `language`")
    position: Literal["top-left", "top-right", "bottom-left", "bottom-right", "top", "bottom"] = "bottom-left"
    opacity: float = Field(0.85, ge=0.05, le=1.0, description="opacity of the label")
    font_size: float = Field(0.028, gt=0, le=0.2, description="text height as a fraction of the frame height")
    font: Path | None = Field(None, description="TTF font file; None = the bundled DejaVu Sans Bold")
    margin: float = Field(0.04, ge=0, le=0.3, description="distance from the frame edge, fraction of the width")


class AudioSettings(_Section):
    """The sound track (see pipeline/audio.py). Per job: --audio FILE or --ambience NAME."""

    default: Literal["silent", "none"] = Field("silent", description="track when no audio is asked for")
    ambience: Literal["waves", "wind", "rain", "room"] | None = Field(None, description="procedural bed")
    file: Path | None = Field(None, description="a music/sound file mixed under the video")
    volume: float = Field(1.0, ge=0.0, le=4.0, description="gain applied to the file or ambience")
    fade_s: float = Field(0.5, ge=0.0, le=10.0, description="fade in and out")
    codec: str = Field("aac", description="audio encoder (aac for MP4; opus for WebM)")
    bitrate: str = Field("128k", description="audio bitrate")
    sample_rate: int = Field(48000, ge=8000, le=96000)


class PerformanceSettings(_Section):
    """How the svd engine runs on a GPU (see pipeline/engines/svd.py and benchmarks/). Each switch is
    measured on and off in benchmarks/RESULTS.md."""

    attention: Literal["sdpa", "default"] = Field("sdpa", description="PyTorch scaled-dot-product attention")
    channels_last: bool = Field(True, description="channels_last memory format for the UNet and VAE (pays off on CUDA)")
    compile: bool = Field(False, description="torch.compile the UNet and VAE decoder, one graph per shape (pays off on CUDA)")
    memory: Literal["auto", "max-speed", "balanced", "low-vram"] = Field(
        "auto", description="auto picks from free GPU memory; low-vram = CPU offload + small decode chunks"
    )
    warmup: bool = Field(True, description="run one tiny generation when a GPU worker starts")
    cfg_last_fraction: float = Field(0.0, ge=0.0, le=1.0, description="last steps run without CFG (0 = off)")
    cache_interval: int = Field(1, ge=1, le=10, description="reuse deep UNet features for N steps (1 = off)")
    batch_clips: int = Field(1, ge=1, le=16, description="clips per UNet batch in `alive batch` (same size and options)")
    sampler: Literal["euler", "consistency"] = Field(
        "euler", description="euler = SVD's own scheduler; consistency = few-step sampling for AnimateLCM-SVD "
                             "UNet weights (engine.unet_weights), 4 steps and no CFG unless options say otherwise")
    few_steps: int = Field(4, ge=1, le=40, description="steps the consistency sampler takes when a job sets none")


class EncodeSettings(_Section):
    codec: str = Field("auto", description="auto (h264_nvenc where this machine's ffmpeg can use an NVENC engine, "
                                           "else libx264), libx264, libx265, libsvtav1, libvpx-vp9, h264_nvenc")
    crf: int = Field(18, ge=0, le=63, description="quality (libx264/5: 0..51, svtav1/vp9: 0..63); lower is better")
    preset: str = Field("medium", description="encoder speed/size trade-off (x264/x265 names; mapped for others)")
    profile: str = "high"
    maxrate: str | None = Field(None, description="peak video bitrate, e.g. 8M (platform presets); None = crf only")
    max_bytes: int | None = Field(None, ge=1, description="largest output accepted (platform limit); None = any")
    poster_quality: int = Field(90, ge=1, le=100)
    timeout_s: float = Field(300.0, gt=0)


class LabelSettings(_Section):
    """Every output is labelled; there is deliberately no switch to turn labelling off."""

    cert_chain: Path | None = Field(None, description="leaf + intermediate PEM; None = dev chain")
    private_key: Path | None = None
    trust_anchors: Path | None = Field(None, description="root PEM(s) used to verify; dev root when None")
    tsa_url: str | None = None
    include_thumbnail: bool = Field(False, description="embed a thumbnail of the source photo (privacy!)")
    claim_generator: str = "alive"
    title: str = "AI-generated story video"
    watermark: bool = Field(True, description="an invisible watermark with the credential id in every published frame "
                                              "(video, poster, preview): finds the manifest after a re-encode")
    watermark_strength: float = Field(2.65, ge=0.5, le=8.0, description="watermark amplitude in luma levels at "
                                      "average texture (2.65: PSNR ~40.5 dB on a default story, measured)")
    watermark_backend: Literal["alive", "trustmark"] = Field(
        "alive", description="alive: built in, no weights (the default, chosen by benchmarks/watermark_bench.py); "
                             "trustmark: Adobe TrustMark Q (MIT), weights fetched once by `alive models pull trustmark`, "
                             "needs the `trustmark` extra")
    keep_manifests: bool = Field(True, description="keep every signed manifest in the manifest repository (the job "
                                                   "database) so copies without metadata can be looked up")
    resolver_url: str | None = Field(None, description="manifest repository `alive verify` also asks, e.g. "
                                                       "https://alive.example/v1/credentials; None = local only")


class S3Settings(_Section):
    """An S3-compatible object store (AWS S3, SeaweedFS, MinIO, R2 ...). Credentials come from the standard
    AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance role), never from here."""

    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://seaweedfs:8333; None = AWS")
    bucket: str | None = Field(None, description="bucket holding every job file (must exist)")
    prefix: str = Field("", description="key prefix inside the bucket, e.g. alive/ (several deployments, one bucket)")
    region: str | None = Field(None, description="region name; None = the AWS chain's (us-east-1 for most servers)")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "path", description="path (bucket in the path: what most self-hosted servers need) or virtual (bucket.host)")
    multipart_threshold_bytes: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024,
                                           description="objects above this are uploaded in parts")
    multipart_chunk_bytes: int = Field(16 * 1024 * 1024, ge=5 * 1024 * 1024, description="size of one part")


class StorageSettings(_Section):
    backend: Literal["local", "s3"] = Field("local", description="local folder, or an S3-compatible object store")
    root: Path | None = Field(None, description="local store for job files; None = <data_dir>/store")
    public_base_url: str | None = Field(None, description="URL prefix for shareable links; None = file paths")
    retention_hours: float = Field(168.0, gt=0, description="finished jobs' outputs are deleted after this")
    s3: S3Settings = S3Settings()
    presign_ttl_s: int = Field(900, ge=1, le=7 * 24 * 3600, description="lifetime of a presigned download URL")
    scratch_dir: Path | None = Field(None, description="worker-local temp folder of running tasks, emptied when "
                                                       "each task ends; None = <data_dir>/scratch")

    @model_validator(mode="after")
    def _s3_complete(self) -> "StorageSettings":
        if self.backend == "s3" and not self.s3.bucket:
            raise ValueError("storage.backend is s3 but storage.s3.bucket is not set (ALIVE_STORAGE__S3__BUCKET)")
        return self


class WorkerSettings(_Section):
    broker_url: str | None = Field(None, description="redis:// or amqp:// URL; None = embedded Redis in data_dir")
    result_backend: str | None = Field(None, description="None = the broker URL when it is Redis")
    cpu_queue: str = "cpu"
    gpu_queue: str = "gpu"
    webhook_queue: str = Field("webhooks", description="outbound webhook deliveries, served by their own workers")
    visibility_timeout_s: int = Field(900, ge=60, description="Redis: a dead worker's task is redelivered after this")
    unacked_restore_interval_s: float = Field(2.0, gt=0, description="Redis: how often lost tasks are looked for")
    generate_soft_time_limit_s: int = Field(600, ge=1, description="alive.generate: SoftTimeLimitExceeded after")
    generate_time_limit_s: int = Field(720, ge=1, description="alive.generate: the child is killed after")
    cpu_soft_time_limit_s: int = Field(300, ge=1, description="every other task: soft limit")
    cpu_time_limit_s: int = Field(420, ge=1, description="every other task: hard limit")
    max_retries: int = Field(3, ge=0, le=20, description="retries of a TransientError before the job fails")
    retry_backoff_s: int = Field(2, ge=0, description="first retry delay; doubles each time (with jitter)")
    disk_full_retries: int = Field(8, ge=0, le=50, description="retries of a stage that found the store or "
                                                              "scratch disk full (backoff doubling to 5 min)")
    heartbeat_interval_s: float = Field(5.0, gt=0, description="a running stage writes its heartbeat this often")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="a stage whose heartbeat is older is stalled: the "
                                                               "reconciler dispatches it again with a new token")
    max_stage_attempts: int = Field(3, ge=1, le=20, description="lost or crashed attempts of one stage before the "
                                                                "job fails with worker_lost")
    reconcile_interval_s: float = Field(5.0, gt=0, description="how often the reconciler looks for stalled and "
                                                                "lost jobs (alive worker --beat, alive serve)")
    rabbitmq_queue_type: Literal["classic", "quorum"] = Field(
        "quorum", description="RabbitMQ: quorum queues (replicated, delivery limit + dead letters) or classic")
    rabbitmq_delivery_limit: int = Field(5, ge=1, description="RabbitMQ quorum: deliveries of one message before "
                                                              "it is dead-lettered")
    dead_letter_queue: str = Field("dead", description="RabbitMQ: where messages past the delivery limit go; the "
                                                       "reconciler fails their jobs with a reason")
    shutdown_grace_s: int = Field(780, ge=1, description="SIGTERM: the running task may finish for this long, then "
                                                         "it is re-queued; give orchestrators more than this")

    @model_validator(mode="after")
    def _limits_fit(self) -> "WorkerSettings":
        hard = max(self.generate_time_limit_s, self.cpu_time_limit_s)
        if self.visibility_timeout_s <= hard:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed the longest hard time limit "
                f"({hard}), or a running task is delivered to a second worker"
            )
        if self.generate_soft_time_limit_s >= self.generate_time_limit_s or \
                self.cpu_soft_time_limit_s >= self.cpu_time_limit_s:
            raise ValueError("each soft time limit must be below its hard time limit")
        if self.heartbeat_timeout_s <= 2 * self.heartbeat_interval_s:
            raise ValueError(f"heartbeat_timeout_s ({self.heartbeat_timeout_s}) must exceed twice "
                             f"heartbeat_interval_s ({self.heartbeat_interval_s}), or live stages look stalled")
        return self


class JobsSettings(_Section):
    store: Literal["files", "database"] = Field(
        "files", description="job records as JSON files in the store, or rows in the database"
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; None = SQLite file <data_dir>/alive.db")


class ApiSettings(_Section):
    host: str = Field("127.0.0.1", description="address `alive serve` listens on")
    port: int = Field(8000, ge=1, le=65535)
    public_url: str | None = Field(None, description="base URL used in links; None = taken from each request")
    rate_limit_per_minute: int = Field(60, ge=1, description="requests per API key per minute (default per key)")
    max_concurrent_jobs: int = Field(4, ge=1, description="queued + running jobs per API key (default per key)")
    share_ttl_hours: float = Field(72.0, gt=0, description="default lifetime of a share link")
    share_ttl_max_hours: float = Field(720.0, gt=0, description="longest lifetime a client may ask for")
    reports_to_hide: int = Field(3, ge=1, description="abuse reports that hide a video's share links")
    cors_origins: list[str] = Field([], description="origins allowed to call the API from a browser")
    webhook_timeout_s: float = Field(5.0, gt=0, description="one whole delivery attempt: connect + send + read")
    webhook_max_attempts: int = Field(6, ge=1, le=20, description="deliveries tried, with exponential backoff")
    webhook_allow_private: bool = Field(False, description="let webhooks reach loopback, private, link-local ... "
                                                           "addresses (on-prem only; never on the internet)")
    webhook_allow_hosts: list[str] = Field([], description="hosts, IPs or CIDRs a webhook may reach even when private "
                                                           "(tests, on-prem receivers)")
    webhook_max_response_bytes: int = Field(4096, ge=0, le=1_000_000, description="most of a receiver's reply read")
    trusted_hosts: list[str] = Field(["localhost", "127.0.0.1", "::1"],
                                     description="Host headers accepted when public_url is unset (links are built "
                                                 "from the Host header then)")
    docs: bool = Field(True, description="serve /docs (Swagger UI from the package, no CDN) and /openapi.json")
    metrics_token: str | None = Field(None, description="bearer token /metrics asks for; None = open")
    metrics_cache_s: float = Field(5.0, ge=0, description="/metrics queries the database at most this often")
    engines_allowed: list[EngineName] | None = Field(
        None, description="engines a client may ask for; None = this server's engine.name and motion")
    unauthenticated_rate_per_minute: int = Field(
        120, ge=1, description="requests per client address per minute on routes without a key (/s/..., the page)")
    reports_per_address_per_hour: int = Field(20, ge=1, description="viewer reports one address may send per hour")
    rate_limit_redis_url: str | None = Field(
        None, description="Redis holding the rate limits shared by every API process; None = the broker's Redis "
                          "(or the result backend's when the broker is RabbitMQ)")
    download: Literal["redirect", "proxy"] = Field(
        "redirect", description="files of an object store: 302 to a presigned URL, or streamed through the API "
                                "(a local store is always served by the API)")
    secret_key_file: Path | None = Field(
        None, description="key that encrypts webhook secrets at rest; None = <data_dir>/secret.key (made once, 0600); "
                          "every API and webhook host needs the same file")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ALIVE_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    intake: IntakeSettings = IntakeSettings()
    moderation: ModerationSettings = ModerationSettings()
    engine: EngineSettings = EngineSettings()
    performance: PerformanceSettings = PerformanceSettings()
    frame: FrameSettings = FrameSettings()
    story: StorySettings = StorySettings()
    overlay: OverlaySettings = OverlaySettings()
    audio: AudioSettings = AudioSettings()
    encode: EncodeSettings = EncodeSettings()
    label: LabelSettings = LabelSettings()
    storage: StorageSettings = StorageSettings()
    worker: WorkerSettings = WorkerSettings()
    jobs: JobsSettings = JobsSettings()
    api: ApiSettings = ApiSettings()

    @model_validator(mode="after")
    def _store_fits_storage(self) -> "Settings":
        if self.storage.backend == "s3" and self.jobs.store == "files":
            raise ValueError("storage.backend s3 needs jobs.store: database (ALIVE_JOBS__STORE=database): job "
                             "records on files cannot be locked across hosts")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @property
    def dev_credentials_dir(self) -> Path:
        return self.data_dir / "dev-c2pa"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def store_root(self) -> Path:
        return self.storage.root or self.data_dir / "store"

    @property
    def scratch_root(self) -> Path:
        return self.storage.scratch_dir or self.data_dir / "scratch"


PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs" / "presets"
"""Platform presets (tiktok, reels, shorts, whatsapp-status): YAML files holding only differences."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The settings a platform preset changes, as nested dicts (its ``description`` left out)."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}",
                          code="bad_preset")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data.pop("description", None)
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_settings(config_file: str | Path | None = None, preset: str | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, an optional YAML file, the environment, a platform preset and
    overrides (highest first: overrides > preset > environment > file > defaults)."""
    path = config_file or os.environ.get("ALIVE_CONFIG")
    cls: type[Settings] = Settings
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", code="config_missing")
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}", code="config_yaml") from exc
        cls = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": path}})
    if preset:
        overrides = _merge(load_preset(preset), overrides)
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {_explain(exc)}") from exc


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


def environment_flag(name: str) -> str | None:
    """Read one non-ALIVE environment variable (kept here so no other module touches os.environ)."""
    return os.environ.get(name)
