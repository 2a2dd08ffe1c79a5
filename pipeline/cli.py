"""The ``alive`` command line: argument parsing and progress display only; the work is in pipeline/.

Exit codes: 0 ok, 1 ``verify`` found no valid credential, 2 usage or configuration error,
3 input rejected, 4 blocked by moderation, 5 internal, model, encode or label failure, or a
transient one (``TransientError``: ``disk_full``, ``broker_unavailable``), which may succeed later.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pipeline import __version__
from pipeline.errors import AliveError, ConfigError

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 verify found no valid credential; 2 usage or configuration error; "
    "3 input rejected; 4 blocked by moderation; 5 internal, model, encode or label failure, or a "
    "transient one that may succeed when tried again (disk_full: no space left in the store; "
    "broker_unavailable)."
)

app = typer.Typer(
    name="alive",
    help="Turn a still photo into a moderated, animated, C2PA-labelled vertical story video.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(help="Get model weights onto this machine (the only commands that download).",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
_state: dict[str, Any] = {"debug": False}

# The motion engine's style, shared by animate and submit
MOTION_STYLE_OPTION = typer.Option(
    None, "--motion-style", help="motion engine: auto (what the photo holds), parallax (camera and subject "
    "layer), sky (only the sky and water move), still-camera (all that moves by itself, camera still) [auto].")
# Story options shared by animate, submit and batch (one definition, one help text)
PRESET_OPTION = typer.Option(None, "--preset", "-p", help="Platform preset: tiktok, reels, shorts, whatsapp-status.")
STORY_FPS_OPTION = typer.Option(None, "--fps", help="Story frame rate; the clip is interpolated up to it [30].")
DURATION_OPTION = typer.Option(None, "--duration", help="Story length in seconds, reached by looping (never by slowing frames) [4].")
LOOP_OPTION = typer.Option(None, "--loop", help="none, pingpong or crossfade [pingpong].")
LANGUAGE_OPTION = typer.Option(None, "--language", help="Language of the visible AI label: en, id, es, pt, fr, de [en].")
AMBIENCE_OPTION = typer.Option(None, "--ambience", help="Procedural sound: waves, wind, rain, room [silent track].")
AUDIO_OPTION = typer.Option(None, "--audio", help="Sound file mixed in, trimmed and faded to the story length.")


def _print_version(value: bool) -> None:
    if value:
        out.print(f"alive {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each stage does (INFO)."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)
    if not debug:  # third-party chatter (progress bars, deprecations) is noise for a user
        for noisy in ("diffusers", "transformers", "huggingface_hub", "httpx"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def _guard(work: Callable[[], int | None]) -> None:
    """Run a command body; expected failures become one clear line and their exit code."""
    try:
        code = work() or 0
    except AliveError as exc:
        if _state["debug"]:
            traceback.print_exc()
        # the message is text, not markup: "[trustmark]" or a file name in brackets must print as written
        err.print(f"[bold red]error[/] ({exc.code}): {escape(exc.message)}", markup=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - last line of defence: report, never continue
        if _state["debug"]:
            traceback.print_exc()
        err.print(f"[bold red]internal error[/]: {type(exc).__name__}: {escape(str(exc))} (run with --debug for a "
                  "traceback)", markup=True)
        raise typer.Exit(5) from None
    raise typer.Exit(code)


def _settings(config: Optional[Path], **overrides: Any):
    from pipeline.settings import load_settings

    return load_settings(config, **{k: v for k, v in overrides.items() if v})


@app.command(epilog=EXIT_CODES_HELP)
def animate(
    image: Path = typer.Argument(..., help="Photo to animate: JPEG, PNG or WebP."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="MP4 to write [default: IMAGE name + .mp4 here]."),
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help="motion (CPU, no weights; default), svd, tiny (tests)."),
    model: Optional[str] = typer.Option(None, "--model", help="svd: hub id or local diffusers folder."),
    revision: Optional[str] = typer.Option(None, "--revision", help="svd: model revision (commit or tag)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed [default: random, reported]."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames to generate [svd: 25; motion: the story's frames]."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (svd/tiny) [25]."),
    gen_fps: Optional[int] = typer.Option(None, "--gen-fps", help="Frame rate of the generated clip [svd: 7; motion: the story's rate]."),
    motion: Optional[int] = typer.Option(None, "--motion", help="Motion amount 0-1023 [127]."),
    motion_style: Optional[str] = MOTION_STYLE_OPTION,
    size: Optional[str] = typer.Option(None, "--size", help="Generation size: engine, fast (320x576), standard (576x1024)."),
    width: Optional[int] = typer.Option(None, "--width", help="Generation width, multiple of 8 [576; tiny: 144]."),
    height: Optional[int] = typer.Option(None, "--height", help="Generation height, multiple of 8 [1024; tiny: 256]."),
    decode_chunk: Optional[int] = typer.Option(None, "--decode-chunk", help="svd: frames decoded at once [8]."),
    max_guidance: Optional[float] = typer.Option(None, "--max-guidance", help="svd: guidance at the last frame [3.0]."),
    framing: Optional[str] = typer.Option(None, "--framing", help="auto, crop, pad or fit-generate [auto]."),
    focus: Optional[str] = typer.Option(None, "--focus", help="Where a crop centres: centre, saliency, face [centre]."),
    preset: Optional[str] = PRESET_OPTION,
    fps: Optional[int] = STORY_FPS_OPTION,
    duration: Optional[float] = DURATION_OPTION,
    loop: Optional[str] = LOOP_OPTION,
    language: Optional[str] = LANGUAGE_OPTION,
    audio: Optional[Path] = AUDIO_OPTION,
    ambience: Optional[str] = AMBIENCE_OPTION,
    codec: Optional[str] = typer.Option(None, "--codec", help="auto (NVENC where usable, else libx264), libx264, libx265, libsvtav1, libvpx-vp9, h264_nvenc [auto]."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Optional text; moderated and kept in the report."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file (see configs/default.yaml)."),
    report: Optional[Path] = typer.Option(None, "--report", help="JSON report path [default: OUTPUT with .json]."),
    poster: Optional[Path] = typer.Option(None, "--poster", help="Poster JPEG path [default: OUTPUT with .jpg; "
                                          "OUTPUT.poster.jpg when that is IMAGE]."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Animated WebP preview [default: OUTPUT with .webp]."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON report on stdout."),
) -> None:
    """Animate IMAGE into a labelled 9:16 story MP4: 1080x1920, 30 fps, 4 s pingpong loop, visible
    AI label, silent sound track (+ poster JPEG, WebP preview and JSON report).

    Never writes over IMAGE or the --audio file: a name you give (-o, --poster, --preview, --report)
    that is one of them (also through a link) is refused with exit 2; a default name that would hit
    one, or a file alive did not write, becomes a free one (cat.jpg -> poster cat.poster.jpg) and a
    note says so."""

    def work() -> int:
        from pipeline.engines import GenerationOptions
        from pipeline.run import animate as run_animate
        from service.stores import manifest_keeper as _manifest_keeper

        engine_over = {k: v for k, v in {"name": engine, "model": model, "revision": revision}.items() if v}
        if model and not engine:
            engine_over["name"] = "svd"
        frame_over = {k: v for k, v in {"strategy": framing, "crop_focus": focus, "generation_size": size}.items() if v}
        settings = _settings(config, engine=engine_over, frame=frame_over, encode={"codec": codec} if codec else None)
        options = GenerationOptions.build(
            seed=seed, num_frames=frames, num_inference_steps=steps, fps=gen_fps, motion_bucket_id=motion,
            width=width, height=height, decode_chunk_size=decode_chunk, max_guidance_scale=max_guidance,
            motion_style=motion_style,
        )
        story = _story_options(preset=preset, fps=fps, duration_s=duration, loop=loop, language=language,
                               ambience=ambience)
        if audio is not None and not audio.is_file():
            raise ConfigError(f"--audio {audio}: no such file", code="bad_option")
        with _StageBar(enabled=not json_out) as bar:  # output None: IMAGE's name + .mp4 here (pipeline/outputs.py)
            result = run_animate(image, output, settings, options, story=story, audio_file=audio, prompt=prompt,
                                 poster=poster, preview=preview, report=report, progress=bar.update,
                                 keep_manifest=_manifest_keeper(settings))
        doc = result.report
        if json_out:
            out.print_json(json.dumps(doc, default=str))
            return 0
        c2pa = doc["c2pa"]["verification"]
        o = doc["outputs"]
        out.print(f"video   {result.video}  ({o['width']}x{o['height']}, {o['frames']} frames at {o['fps']:g} fps, "
                  f"{o['duration_s']:g} s, {o['bytes'] / 1e6:.2f} MB)")
        out.print(f"poster  {result.poster}  (frame {doc['finish']['poster']['frame']})")
        out.print(f"preview {result.preview}")
        out.print(f"report  {result.report_path}")
        fin = doc["finish"]
        out.print(f"story   {fin['retime']['from_fps']:g} -> {fin['fps']} fps ({fin['retime']['method']}), "
                  f"loop {fin['loop']['mode']}, label: " + (f"\"{fin['overlay']['text']}\"" if fin["overlay"] else "off")
                  + f", sound: {doc['audio']['kind'] if doc['audio'] else 'none'}, flicker {fin['flicker']}")
        out.print(f"engine  {doc['engine']['engine']}" + (f" ({doc['engine']['model']})" if doc["engine"].get("model") else "")
                  + f", seed {doc['seed']}")
        term = (c2pa.get("digital_source_type") or "none").rstrip("/").rsplit("/", 1)[-1]  # made by what
        out.print(f"label   C2PA {c2pa['state']}, digitalSourceType {term}, "
                  f"AI-generated: {'yes' if c2pa['ai_generated'] else 'no'}"
                  + (" (development certificate: not trusted elsewhere)" if doc["c2pa"]["development_credentials"] else ""))
        for note in doc["notes"]:
            out.print(f"note    {note}")
        out.print(f"time    {doc['timings_s']['total']:.2f} s")
        return 0

    _guard(work)


@app.command(epilog=EXIT_CODES_HELP)
def verify(
    file: Path = typer.Argument(..., help="Video or image to check."),
    trust: Optional[Path] = typer.Option(None, "--trust", help="PEM file of trusted root certificates "
                                         "[default: configured anchors, else this machine's development root]."),
    resolver: Optional[str] = typer.Option(None, "--resolver", help="Manifest repository to ask when the file "
                                           "has no valid manifest, e.g. https://alive.example/v1/credentials "
                                           "[default: label.resolver_url; the local repository is always asked]."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON: embedded, watermark, recovered."),
) -> None:
    """Check the Content Credentials of FILE, and recover them when a copy lost them.

    1. The embedded C2PA manifest: exit 0 when it validates (and its watermark id is compared with
    the pixels'). 2. Otherwise the invisible watermark is decoded and its id looked up in the local
    manifest repository (this data dir's job database) and at --resolver; a hit counts only when the
    copy's perceptual fingerprint matches the signed one. Exit 0 when a credential was recovered
    whose signature validates: the file is a modified copy of that credentialed video.

    Exit 1 when neither: no credentials, invalid ones and none recovered, or FILE is not a video or
    image at all (state NotMedia, error not_a_video: empty, JSON such as an API error body, HTML, text)."""

    def work() -> int:
        from pipeline.provenance import NOT_MEDIA, NOT_MEDIA_CODE
        from pipeline.recovery import check_file
        from pipeline.softbinding import detectors
        from service.stores import existing_manifest_repository

        settings = _settings(config)
        anchors = _trust_anchors(trust, config)
        checked = check_file(file, anchors, existing_manifest_repository(settings),
                             resolver or settings.label.resolver_url, readers=detectors(settings))
        result = checked.embedded
        if json_out:
            doc = checked.to_dict()
            if result.state == NOT_MEDIA:
                doc["error"] = {"code": NOT_MEDIA_CODE, "message": result.detail}
            out.print_json(json.dumps(doc, default=str))
        elif result.state == NOT_MEDIA:
            out.print(f"file                {file}", markup=False)
            out.print(f"state               {result.state}", markup=False)
            err.print(f"[bold red]error[/] ({NOT_MEDIA_CODE}): {escape(result.detail or '')}", markup=True)
        else:
            for line in _verify_lines(file, checked):
                out.print(line, markup=False)  # texts from manifests are printed as they are
        return 0 if checked.ok else 1

    _guard(work)


def _verify_lines(file: Path, checked) -> list[str]:
    from pipeline.provenance import source_type_name

    result = checked.embedded
    name = source_type_name(result.digital_source_type)
    lines = [
        f"file                {file}",
        f"state               {result.state}",
        f"AI-generated        {'yes' if result.ai_generated else 'no'}",
        f"digitalSourceType   {result.digital_source_type}" + (f" ({name})" if name else ""),
        f"generator           {result.generator}",
        f"software agent      {result.software_agent}",
        f"title               {result.title}",
        f"signer              {result.signer}",
    ]
    if result.signer_trust:
        lines.append(f"signer trust        {result.signer_trust}")
    lines.append(f"source thumbnail    {'embedded' if result.has_ingredient_thumbnail else 'none'}")
    if result.status_codes:
        lines.append("status codes        " + ", ".join(result.status_codes))
    if result.detail:
        lines.append(f"detail              {result.detail}")
    mark = checked.bindings.watermark if checked.bindings else None
    if mark is not None:
        said = f"found, id {mark.credential_id}, confidence {mark.confidence:.2f}" if mark.found else "none found"
        if checked.watermark_agrees is not None:
            said += ", agrees with the manifest" if checked.watermark_agrees else ", DISAGREES with the manifest"
        lines.append(f"watermark           {said}")
    rec = checked.recovered
    if rec is not None:
        kind = source_type_name(rec["digital_source_type"])
        lines += [
            f"recovered           {rec['state']}: this file is a modified copy of a credentialed "
            f"{'AI-generated' if rec['ai_generated'] else 'animated'} video",
            f"  made by           {rec['generator']} ({rec['software_agent']})",
            f"  digitalSourceType {rec['digital_source_type']}" + (f" ({kind})" if kind else ""),
            f"  signed            {rec['signed_at']} by {rec['signer']}",
            f"  job               {rec['job_id']}  manifest {rec['manifest_id']}",
            f"  found             by {rec['found_by']} in {rec['found_in']} (similarity {rec['similarity']:.2f})",
        ]
        lines += [f"  lost              {what}" for what in rec["lost"]]
    elif result.state not in ("Valid", "Trusted"):
        lines.append("recovered           no: no repository holds a credential for this content")
    return lines


def _trust_anchors(trust: Optional[Path], config: Optional[Path]) -> bytes | None:
    if trust is not None:
        if not trust.is_file():
            raise ConfigError(f"--trust file {trust} does not exist", code="bad_option")
        return trust.read_bytes()
    from pipeline.provenance import default_trust_anchors

    return default_trust_anchors(_settings(config))


@app.command(epilog=EXIT_CODES_HELP)
def moderate(
    image: Path = typer.Argument(..., help="Photo to check."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Also check this text."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
    json_out: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
) -> None:
    """Check IMAGE (and an optional prompt) the way `animate` would; exit 4 when blocked."""

    def work() -> int:
        from moderation import check_image, check_prompt
        from pipeline.intake import load_image

        settings = _settings(config)
        taken = load_image(image, settings.intake)
        verdicts = [check_image(taken.image, settings.moderation)]
        if prompt:
            verdicts.append(check_prompt(prompt, settings.moderation))
        if json_out:
            out.print_json(json.dumps([v.to_dict() for v in verdicts], default=str))
        else:
            for v in verdicts:
                out.print(f"{v.subject}: {v.decision.upper()}")
                for r in v.results:
                    scores = ", ".join(f"{k}={s:.3f}" for k, s in r.scores.items())
                    out.print(f"  {r.backend} {r.version}: {r.decision}" + (f" ({scores})" if scores else ""))
                for reason in v.reasons:
                    out.print(f"  reason: {reason}")
                if v.unchecked:
                    out.print("  not checked: " + ", ".join(v.unchecked))
        blocked = any(v.decision == "block" or (v.decision == "review" and settings.moderation.on_review == "block")
                      for v in verdicts)
        return 4 if blocked else 0

    _guard(work)


@models_app.command("pull")
def models_pull(
    model: str = typer.Argument("stabilityai/stable-video-diffusion-img2vid-xt",
                                help="Hub model id, or `trustmark` (Adobe TrustMark Q watermark weights)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Commit or tag to fetch."),
    variant: Optional[str] = typer.Option("fp16", "--variant", help="Weights variant ('' for full precision)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where to put it [hub default; "
                                             "trustmark: the settings' model cache]."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file (trustmark)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", hidden=True),  # trustmark: a mirror, tests
) -> None:
    """Download model weights (needs internet; nothing else in alive ever downloads)."""

    if model == "trustmark":
        def work_trustmark() -> int:
            from pipeline import trustmark_backend as tmb

            root = cache_dir or _settings(config).model_cache_dir
            folder = tmb.pull(root, base_url=base_url or tmb.BASE_URL)
            out.print(f"TrustMark Q weights ({', '.join(tmb.WEIGHTS['Q'])}) are in {folder}, md5 checked")
            out.print("turn it on with `label.watermark_backend: trustmark` in your settings (or "
                      f"ALIVE_LABEL__WATERMARK_BACKEND=trustmark); it also needs `{tmb.PIP_EXTRA}`")
            return 0

        _guard(work_trustmark)
        return

    def work() -> int:
        from pipeline.models import pull

        folder = pull(model, revision=revision, variant=variant or None, cache_dir=cache_dir)
        out.print(f"model {model} is at {folder}")
        out.print(f"use it offline with: alive animate PHOTO --engine svd --model {model}  (or --model {folder})")
        return 0

    _guard(work)


@models_app.command("tiny")
def models_tiny(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file.")) -> None:
    """Build the tiny random test model (no download) and print where it is."""

    def work() -> int:
        from pipeline.engines.tiny import ensure_tiny_svd

        out.print(str(ensure_tiny_svd(_settings(config).model_cache_dir)))
        return 0

    _guard(work)


def _story_options(**values: Any):
    from pipeline.finish import StoryOptions

    return StoryOptions.build(**values)


def _generation_options(**values: Any):
    from pipeline.engines import GenerationOptions

    return GenerationOptions.build(**values)


@app.command(epilog=EXIT_CODES_HELP)
def worker(
    queues: str = typer.Option("cpu,gpu", "--queues", "-Q", help="Queues to consume: cpu, gpu or both."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Worker child processes."),
    pool: str = typer.Option("prefork", "--pool", help="prefork (time limits enforced; default) or solo."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Worker node name [alive-QUEUES@host]."),
    beat: bool = typer.Option(False, "--beat", help="Also run the periodic tasks: the reconciler (every "
                              "worker.reconcile_interval_s: stalled and lost stages) and the hourly cleanup of "
                              "expired jobs. Run exactly one worker with --beat."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l", help="Worker log level."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML settings file."),
) -> None:
    """Run a Celery worker (starts or joins the embedded broker when no broker URL is set).

    A GPU host runs `alive worker -Q gpu -c 1`; CPU hosts run `alive worker -Q cpu -c N`.
    SIGTERM lets the running task finish for up to worker.shutdown_grace_s, then (or at a second
    SIGTERM) stops it and puts it back in the queue.
    """

    def work() -> int:
        from workers.app import app as celery_app
        from workers.client import connect

        from service.api import harden_data_dir

        settings = _settings(config)
        harden_data_dir(settings, process_umask=True)  # umask 077: the store, logs, database and broker files it makes are 0600
        connect(settings)
        names = {"cpu": settings.worker.cpu_queue, "gpu": settings.worker.gpu_queue, "webhooks": settings.worker.webhook_queue}
        wanted = [names.get(q.strip(), q.strip()) for q in queues.split(",") if q.strip()]
        argv = ["worker", f"--queues={','.join(wanted)}", f"--concurrency={concurrency}", f"--pool={pool}",
                f"--loglevel={loglevel}", "--without-gossip", "--without-mingle",
                f"--hostname={name or 'alive-' + '-'.join(wanted) + '@%h'}"]
        reconciler = None
        if beat:
            from workers.reconcile import spawn_process

            argv.append("--beat")
            reconciler = spawn_process(config)
        from workers.app import declare_queues, install_shutdown_grace

        declare_queues(celery_app)
        install_shutdown_grace(settings)
        if settings.worker.cpu_queue in wanted:  # encoding runs here: its watermark backend must be able to run
            from pipeline.softbinding import embedder

            embedder(settings)
        if settings.worker.gpu_queue in wanted:
            from workers.app import warm_up_gpu_engine_in_children

            warm_up_gpu_engine_in_children(settings)
        try:
            celery_app.worker_main(argv)
        finally:
            if reconciler is not None:
                reconciler.terminate()
                reconciler.wait(10)
        return 0

    _guard(work)


@app.command(epilog=EXIT_CODES_HELP)
def submit(
    image: Path = typer.Argument(..., help="Photo to animate."),
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help="motion, svd or tiny [worker's setting]."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    frames: Optional[int] = typer.Option(None, "--frames"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    gen_fps: Optional[int] = typer.Option(None, "--gen-fps", help="Frame rate of the generated clip."),
    motion: Optional[int] = typer.Option(None, "--motion"),
    motion_style: Optional[str] = MOTION_STYLE_OPTION,
    preset: Optional[str] = PRESET_OPTION,
    story_fps: Optional[int] = STORY_FPS_OPTION,
    duration: Optional[float] = DURATION_OPTION,
    loop: Optional[str] = LOOP_OPTION,
    language: Optional[str] = LANGUAGE_OPTION,
    ambience: Optional[str] = AMBIENCE_OPTION,
    audio: Optional[Path] = AUDIO_OPTION,
    prompt: Optional[str] = typer.Option(None, "--prompt"),
    wait_: bool = typer.Option(False, "--wait", help="Wait for the job and print where its files are "
                               "(starting local workers for it when none answer)."),
    timeout: float = typer.Option(3600.0, "--timeout", help="With --wait: give up after this many seconds."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
) -> None:
    """Queue one photo on the broker and print its job id (see `alive status JOB_ID`).

    All or nothing: when the job cannot be stored or queued, nothing of it is kept. No space left
    in the store is error disk_full, exit 5 (free space, then submit again)."""

    def work() -> int:
        from workers.client import connect, local_workers_if_needed, submit as send, wait

        settings = _settings(config)
        connect(settings)
        options = _generation_options(seed=seed, num_frames=frames, num_inference_steps=steps, fps=gen_fps,
                                      motion_bucket_id=motion, motion_style=motion_style)
        story = _story_options(preset=preset, fps=story_fps, duration_s=duration, loop=loop, language=language,
                               ambience=ambience)
        job_id = send(image, settings, options, prompt=prompt, engine=engine, label=image.name, story=story,
                      audio=audio)
        out.print(job_id)
        if not wait_:
            return 0
        with local_workers_if_needed(settings, config, notify=err.print):
            record = wait([job_id], settings, timeout=timeout)[job_id]
        _print_status(record, settings)
        return _exit_for(record)

    _guard(work)


def _exit_for(record) -> int:
    return {"succeeded": 0, "rejected": 3, "blocked": 4}.get(record.status, 5 if record.finished else 1)


def _print_status(record, settings) -> None:
    from workers.attempts import liveness

    live = liveness(record, settings)
    out.print(f"job       {record.job_id}")
    out.print(f"status    {live['status']}" + (f" (stage {record.stage})" if record.stage else ""))
    if live["status"] == "stalled":
        out.print(f"heartbeat {live['heartbeat_at']} ({live['heartbeat_age_s']:.0f} s ago; the reconciler "
                  "dispatches the stage again)")
    if live["waiting_for"]:
        why = live["waiting_for"]
        out.print(f"waiting   ({why['code']}) {why['message']} (retry {why['retry']} of {why['of']})")
    if record.status == "running" and record.progress.get("total"):
        out.print(f"progress  {record.progress['done']}/{record.progress['total']}")
    if record.error:
        out.print(f"reason    ({record.error.get('code')}) {record.error.get('message')}")
    for name in ("video", "poster", "report"):
        if name in record.outputs:
            out.print(f"{name:<9} {record.outputs[name]}")
    if record.timings_s:
        out.print("timings   " + ", ".join(f"{k} {v:.2f}s" for k, v in record.timings_s.items()))


@app.command(epilog=EXIT_CODES_HELP)
def status(
    job_id: str = typer.Argument(..., help="Job id printed by `alive submit`."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
    json_out: bool = typer.Option(False, "--json", help="Print the whole job record as JSON."),
) -> None:
    """Show a job's state, stage and progress, and its files once done."""

    def work() -> int:
        from workers.client import status as job_status

        settings = _settings(config)
        record = job_status(job_id, settings)
        if json_out:
            from workers.attempts import liveness

            out.print_json(json.dumps({**record.to_dict(), "liveness": liveness(record, settings)}, default=str))
        else:
            _print_status(record, settings)
        return 0

    _guard(work)


@app.command(epilog=EXIT_CODES_HELP)
def batch(
    inputs: Path = typer.Argument(..., help="A folder of photos, a .txt list of paths or a .csv (column 'path')."),
    out_dir: Path = typer.Option(..., "--output", "-o", help="Folder for the videos, posters, reports and summary."),
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help="motion, svd or tiny."),
    local: bool = typer.Option(False, "--local", help="Run in this process, without a broker (encoding of one "
                                                      "photo overlaps generation of the next)."),
    batch_clips: Optional[int] = typer.Option(None, "--batch-clips", min=1, max=16,
                                              help="--local: photos generated together in one model batch "
                                                   "[performance.batch_clips: 1]."),
    broker: Optional[str] = typer.Option(None, "--broker", help="Broker URL [config, else the embedded Redis]."),
    spawn_workers: bool = typer.Option(True, "--spawn-workers/--no-spawn-workers",
                                       help="Start workers for this batch when none answer."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    frames: Optional[int] = typer.Option(None, "--frames"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    width: Optional[int] = typer.Option(None, "--width"),
    height: Optional[int] = typer.Option(None, "--height"),
    motion_style: Optional[str] = MOTION_STYLE_OPTION,
    preset: Optional[str] = PRESET_OPTION,
    story_fps: Optional[int] = STORY_FPS_OPTION,
    duration: Optional[float] = DURATION_OPTION,
    loop: Optional[str] = LOOP_OPTION,
    language: Optional[str] = LANGUAGE_OPTION,
    ambience: Optional[str] = AMBIENCE_OPTION,
    prompt: Optional[str] = typer.Option(None, "--prompt"),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up waiting after this many seconds."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
) -> None:
    """Animate many photos; resumable; writes OUT/summary.jsonl with a row per input.

    OUT may be the photos' own folder: no output ever replaces an input (a.jpg's poster is then
    a.poster.jpg; the row's notes and a `note` line say so), and an earlier run's posters found
    there are skipped, not animated.

    Exit 0 when every item is done or skipped, 1 when some were blocked, rejected or failed.
    """

    def work() -> int:
        from workers.batch import Batch, read_inputs

        settings = _settings(config, worker={"broker_url": broker} if broker else None,
                             performance={"batch_clips": batch_clips} if batch_clips else None)
        items = read_inputs(inputs)
        options = _generation_options(seed=seed, num_frames=frames, num_inference_steps=steps, width=width,
                                      height=height, motion_style=motion_style)
        progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=err)
        task = progress.add_task("batch", total=len(items))

        def on_update(rows) -> None:
            c = {}
            for r in rows:
                c[r.status] = c.get(r.status, 0) + 1
            finished = sum(c.get(k, 0) for k in ("done", "skipped", "blocked", "rejected", "failed"))
            progress.update(task, completed=finished, description=" ".join(f"{k} {v}" for k, v in sorted(c.items())))

        story = _story_options(preset=preset, fps=story_fps, duration_s=duration, loop=loop, language=language,
                               ambience=ambience)
        job = Batch(items, out_dir, settings, options, engine=engine, prompt=prompt, story=story, on_update=on_update)
        with progress:
            if local:
                job.run_local()
            else:
                from workers.client import local_workers_if_needed

                with local_workers_if_needed(settings, config, spawn=spawn_workers, notify=err.print):
                    job.run_queued(timeout=timeout)
        summary = job.write_summary(out_dir / "summary.jsonl")
        counts = job.counts()
        for row in job.rows:  # names moved off an input, earlier runs' posters not taken for photos
            for note in row.notes:
                out.print(f"note    {Path(row.input).name}: {note}")
            if row.code == "earlier_output":
                out.print(f"note    {Path(row.input).name} skipped, {row.reason}")
        out.print(" ".join(f"{k} {v}" for k, v in counts.items() if v) + f"  (summary: {summary})")
        if job.stats:
            s = job.stats
            out.print(f"{s['wall_s']:.1f} s, {s['clips_per_hour']:.0f} clips/hour, {s['batch_clips']} per model batch; "
                      f"the generator was idle {s['generator_idle_fraction']:.0%} of the time")
        return 0 if counts["blocked"] + counts["rejected"] + counts["failed"] == 0 else 1

    _guard(work)


@app.command(epilog=EXIT_CODES_HELP)
def cleanup(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file.")) -> None:
    """Delete finished jobs older than storage.retention_hours from the job store."""

    def work() -> int:
        from pipeline.jobs import cleanup as remove_expired
        from service.stores import open_job_store

        settings = _settings(config)
        removed = remove_expired(open_job_store(settings), settings.storage.retention_hours)
        out.print(f"removed {len(removed)} expired job(s)")
        return 0

    _guard(work)


@app.command(epilog=EXIT_CODES_HELP)
def serve(
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on [api.host: 127.0.0.1]."),
    port: Optional[int] = typer.Option(None, "--port", help="Port [api.port: 8000]."),
    spawn_workers: bool = typer.Option(True, "--spawn-workers/--no-spawn-workers", "--workers/--no-workers",
                                       help="Start gpu-queue, cpu-queue and webhooks-queue workers when none answer "
                                            "(--no-workers: this host serves the API only)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
) -> None:
    """Run the HTTP API (+ the page at /) with the embedded broker, workers and SQLite.

    When the database holds no live API key yet, a demo key is made and printed once (as the
    header to send); later starts print none: make keys with `alive keys create`. SIGTERM and
    Ctrl-C stop the server and the workers it started.
    """

    def work() -> int:
        import signal

        import uvicorn

        from service import db
        from service.api import create_app, harden_data_dir
        from workers.client import local_workers_if_needed

        settings = _settings(config, jobs={"store": "database"})
        harden_data_dir(settings, process_umask=True)
        url = db.database_url(settings)
        db.migrate(url)
        demo = None
        if not db.has_live_keys(url):
            row, demo = db.create_api_key(url, "demo (alive serve)")
        listen_host, listen_port = host or settings.api.host, port or settings.api.port
        app_ = create_app(settings)

        def _stop(signum, frame):  # uvicorn re-raises SIGTERM after its shutdown: end here, cleanly,
            raise SystemExit(128 + signum)  # so the workers started below are stopped too

        signal.signal(signal.SIGTERM, _stop)
        with local_workers_if_needed(settings, config, spawn=spawn_workers, notify=err.print,
                                     env={"ALIVE_JOBS__STORE": "database"}):
            from workers.reconcile import start_thread

            start_thread(settings)  # stalled and lost stages are dispatched again (workers/reconcile.py)
            out.print(f"alive API on http://{listen_host}:{listen_port}/  (OpenAPI: /docs)")
            if demo:
                out.print(f"demo API key (shown once; send it as a header, and type it into the page):")
                out.print(f"  Authorization: Bearer {demo}")
                out.print(f"webhook signing secret of that key (shown once): {row.plain_webhook_secret}")
            else:
                out.print("API keys: `alive keys list`; make one with `alive keys create --name NAME`")
            uvicorn.run(app_, host=listen_host, port=listen_port, log_level="info")
        return 0

    _guard(work)


keys_app = typer.Typer(help="API keys of the HTTP API (stored hashed; a key is shown once, when made).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _keys_db(config: Optional[Path]) -> str:
    from service import db

    settings = _settings(config, jobs={"store": "database"})
    url = db.database_url(settings)
    db.migrate(url)
    return url


def _change_live_key(config: Optional[Path], key_id: int, change: Callable[[str, int], Any]) -> Any:
    """Run ``change(url, key_id)`` (revoke, rotate ...); a falsy answer means no such live key."""
    result = change(_keys_db(config), key_id)
    if not result:
        raise ConfigError(f"no live API key with id {key_id} (see `alive keys list`)", code="no_such_key")
    return result


@keys_app.command("create", epilog=EXIT_CODES_HELP)
def keys_create(
    name: str = typer.Option("key", "--name", help="A name you will recognise in `alive keys list`."),
    rate: Optional[int] = typer.Option(None, "--rate", min=1, help="Requests per minute [api.rate_limit_per_minute]."),
    max_jobs: Optional[int] = typer.Option(None, "--max-jobs", min=1,
                                           help="Queued + running jobs at once [api.max_concurrent_jobs]."),
    webhook: Optional[str] = typer.Option(None, "--webhook", help="Webhook URL for this key's jobs that name none."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the key (for scripts: KEY=$(alive keys create -q))."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
) -> None:
    """Make an API key; prints the key and its webhook signing secret once (only hashes/ciphertext are kept)."""

    def work() -> int:
        from service import db

        url = _keys_db(config)
        if webhook:
            from service.egress import check_callback_url

            check_callback_url(webhook, _settings(config))
        row, plain = db.create_api_key(url, name, rate_limit_per_minute=rate, max_concurrent_jobs=max_jobs,
                                       webhook_url=webhook)
        if quiet:
            out.print(plain)
            return 0
        out.print(f"id              {row.id}")
        out.print(f"name            {row.name}")
        out.print(f"key             {plain}")
        out.print(f"webhook secret  {row.plain_webhook_secret}")
        out.print("both are shown now only; send the key as 'Authorization: Bearer <key>'")
        return 0

    _guard(work)


@keys_app.command("list", epilog=EXIT_CODES_HELP)
def keys_list(
    json_out: bool = typer.Option(False, "--json", help="Print the keys as JSON."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
) -> None:
    """List API keys (id, name, prefix, limits, created, revoked); never the keys themselves."""

    def work() -> int:
        from service import db

        rows = [{"id": r.id, "name": r.name, "prefix": r.prefix, "rate_limit_per_minute": r.rate_limit_per_minute,
                 "max_concurrent_jobs": r.max_concurrent_jobs, "webhook_url": r.webhook_url,
                 "created_at": r.created_at.isoformat(), "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None}
                for r in db.list_api_keys(_keys_db(config))]
        if json_out:
            out.print_json(json.dumps(rows))
            return 0
        for r in rows:
            state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "live"
            out.print(f"{r['id']:>4}  {r['prefix']}...  {r['name']:<24} rate {r['rate_limit_per_minute'] or 'default'}"
                      f"  jobs {r['max_concurrent_jobs'] or 'default'}  {state}")
        if not rows:
            out.print("no API keys; make one with `alive keys create --name NAME`")
        return 0

    _guard(work)


@keys_app.command("revoke", epilog=EXIT_CODES_HELP)
def keys_revoke(
    key_id: int = typer.Argument(..., help="The key's id (see `alive keys list`)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
) -> None:
    """Revoke a key: every request with it gets 401 from now on."""

    def work() -> int:
        from service import db

        _change_live_key(config, key_id, db.revoke_api_key)
        out.print(f"revoked key {key_id}")
        return 0

    _guard(work)


@keys_app.command("rotate-secret", epilog=EXIT_CODES_HELP)
def keys_rotate_secret(
    key_id: int = typer.Argument(..., help="The key's id (see `alive keys list`)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML settings file."),
) -> None:
    """Give a key a new webhook signing secret (printed once; the old one stops at once)."""

    def work() -> int:
        from service import db

        out.print(_change_live_key(config, key_id, db.rotate_webhook_secret))
        return 0

    _guard(work)


credentials_app = typer.Typer(help="C2PA signing credentials for the labels (label.cert_chain, "
                              "label.private_key, label.trust_anchors).", no_args_is_help=True)
app.add_typer(credentials_app, name="credentials")


@credentials_app.command("init", epilog=EXIT_CODES_HELP)
def credentials_init(
    directory: Path = typer.Argument(..., help="Folder for chain.pem, key.pem and anchors.pem (made if missing)."),
    force: bool = typer.Option(False, "--force", help="Replace existing files with a new chain."),
) -> None:
    """Write a development signing chain for several hosts to share: DIR/chain.pem (leaf, then
    intermediate), DIR/key.pem (the leaf's key, mode 0600) and DIR/anchors.pem (the root), and print
    the settings that use them.

    Every host given the same three files signs labels that the others verify as Trusted. It is a
    development credential (its certificates say so) that nobody outside trusts: use a real
    certificate for publishing. Refuses (exit 2) when any of the files exists, unless --force."""

    def work() -> int:
        import shlex

        from pipeline.provenance import init_credentials

        files = init_credentials(directory, force=force)
        out.print(f"chain    {files.cert_chain}", markup=False)
        out.print(f"key      {files.private_key}  (mode 0600)", markup=False)
        out.print(f"anchors  {files.trust_anchors}", markup=False)
        out.print("a development chain: what it signs verifies Trusted only where anchors.pem is a trust anchor. "
                  "Give these files to every host that signs (hosts that only verify need anchors.pem), "
                  "at the same paths or a shared folder, and set there:")
        for name, value in files.env().items():
            out.print(f"{name}={shlex.quote(value)}", markup=False)
        return 0

    _guard(work)


broker_app = typer.Typer(help="The embedded Redis broker (used when no broker URL is configured).",
                         no_args_is_help=True)
app.add_typer(broker_app, name="broker")


@broker_app.command("start")
def broker_start(config: Optional[Path] = typer.Option(None, "--config", "-c")) -> None:
    """Start (or join) the embedded broker and print its URL."""

    def work() -> int:
        from workers.broker import embedded_broker

        out.print(embedded_broker(_settings(config).data_dir).start().url)
        return 0

    _guard(work)


@broker_app.command("stop")
def broker_stop(config: Optional[Path] = typer.Option(None, "--config", "-c")) -> None:
    """Stop the embedded broker (queued jobs are kept on disk and come back with it)."""

    def work() -> int:
        from workers.broker import embedded_broker

        embedded_broker(_settings(config).data_dir).stop()
        out.print("stopped")
        return 0

    _guard(work)


class _StageBar:
    """A rich progress display: one line for the stage, with inner steps where a stage has them."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<16}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=False)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "_StageBar":
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        task = self.tasks.get(stage)
        if task is None:
            task = self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(task, completed=done, total=total)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
