"""Batch jobs: many photos in, one story each out, a summary row for every input whatever happened.

Runs in-process (``local=True``) or through the broker (a group of chains). Resumable: an item
whose video already exists in the output folder and verifies is skipped. One bad file never stops
the batch; its row says why.

No output lands on an input: every item's paths are planned up front (``pipeline.outputs``) against
all the inputs of the batch and the outputs of the items before it, so ``alive batch DIR -o DIR``
writes ``a.mp4`` beside ``a.jpg`` with the poster ``a.poster.jpg`` (the row's ``notes`` say so). A
poster or preview of an earlier run found among the inputs (listed by an alive report in the output
folder) is skipped, not animated.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.engines import GenerationOptions
from pipeline.errors import AliveError, ConfigError
from pipeline.finish import StoryOptions
from pipeline.jobs import Keys, status_for
from pipeline.outputs import OutputPlan, Protected, earlier_outputs, plan_outputs
from pipeline.provenance import default_trust_anchors, verify
from pipeline.settings import Settings
from pipeline.storage import open_storage, staged_path, write_json_atomic

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif"}
COUNTS = ("done", "skipped", "blocked", "rejected", "failed", "running", "queued")


@dataclass
class Row:
    input: str
    output: str
    status: str = "queued"  # queued, running, done, skipped, blocked, rejected, failed
    reason: str | None = None
    code: str | None = None
    job_id: str | None = None
    seconds: float | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    poster: str | None = None
    preview: str | None = None
    report: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. the poster's name moved off an input


def read_inputs(spec: Path) -> list[Path]:
    """A folder (its images, sorted), a .txt (one path per line) or a .csv (column 'path' or the first)."""
    if spec.is_dir():
        return sorted(p for p in spec.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not spec.is_file():
        raise ConfigError(f"batch input {spec} is neither a folder nor a list file", code="bad_batch_input")
    base = spec.parent
    if spec.suffix.lower() == ".csv":
        with spec.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return []
        column = rows[0].index("path") if "path" in rows[0] else 0
        body = rows[1:] if "path" in rows[0] else rows
        names = [r[column] for r in body if len(r) > column and r[column].strip()]
    else:
        names = [line.strip() for line in spec.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
    return [(base / n) if not Path(n).is_absolute() else Path(n) for n in names]


def output_names(inputs: list[Path], out_dir: Path) -> list[Path]:
    """One MP4 path per input; inputs with the same file name get a short hash of their path."""
    stems: dict[str, int] = {}
    for p in inputs:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    outs = []
    for p in inputs:
        stem = p.stem if stems[p.stem] == 1 else f"{p.stem}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
        outs.append(out_dir / f"{stem}.mp4")
    return outs


def already_done(video: Path, trust: bytes | None, report: Path | None = None) -> bool:
    """The video and its report (``report``, else the video's name with .json) exist and the video verifies."""
    if not (video.is_file() and (report or video.with_suffix(".json")).is_file()):
        return False
    return verify(video, trust).state in ("Valid", "Trusted")


def plan_batch(inputs: list[Path], videos: list[Path]) -> list[OutputPlan]:
    """The output paths of every item: each video's poster, preview and report beside it, none of them
    on any input of the batch or on another item's outputs (``pipeline.outputs.plan_outputs``)."""
    protected = Protected()
    for photo in inputs:
        protected.add(photo, "an input photo of this batch")
    return [plan_outputs(video, named_video=False, protected=protected) for video in videos]


def earlier_run_files(out_dir: Path) -> Protected:
    """Posters, previews and videos that alive reports in ``out_dir`` list: what an earlier run of a
    batch wrote there, so that ``batch DIR -o DIR`` does not take them for photos the second time."""
    found = Protected()
    for report in sorted(out_dir.glob("*.json")):
        names = earlier_outputs(report)
        for kind in ("video", "poster", "preview"):
            if kind in names:
                found.add(out_dir / names[kind], f"the {kind} of an earlier run (listed in {report.name})")
    return found


def _copy_out(storage, key: str, target: Path) -> None:
    """Copy one stored object to ``target`` from any store (a local folder or an object store),
    streamed into a temp file beside it that replaces ``target`` only once it is complete."""
    with staged_path(target) as tmp:
        with tmp.open("wb") as fh:
            for chunk in storage.open_range(key):
                fh.write(chunk)


class Batch:
    def __init__(self, inputs: list[Path], out_dir: Path, settings: Settings, options: GenerationOptions, *,
                 engine: str | None = None, prompt: str | None = None, story: StoryOptions | None = None,
                 on_update: Callable[[list[Row]], None] | None = None):
        self.settings, self.options, self.engine, self.prompt = settings, options, engine, prompt
        self.story = story
        self.out_dir = out_dir
        self.on_update = on_update or (lambda rows: None)
        earlier = earlier_run_files(out_dir) if out_dir.is_dir() else Protected()
        made_before = [earlier.why(i) for i in inputs]  # (what it is, _) for an earlier run's file
        photos = [i for i, made in zip(inputs, made_before) if made is None]
        plans = iter(plan_batch(photos, output_names(photos, out_dir)))  # before anything is written
        out_dir.mkdir(parents=True, exist_ok=True)
        self.rows = []
        for i, made in zip(inputs, made_before):
            if made is not None:
                self.rows.append(Row(input=str(i), output="", status="skipped", reason=f"not a photo: {made[0]}",
                                     code="earlier_output"))
                continue
            plan = next(plans)
            self.rows.append(Row(input=str(i), output=str(plan.video), poster=str(plan.poster),
                                 preview=str(plan.preview), report=str(plan.report), notes=list(plan.notes)))
        self.stats: dict[str, Any] = {}

    def counts(self) -> dict[str, int]:
        c = {k: 0 for k in COUNTS}
        for r in self.rows:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    def _skip_finished(self) -> list[Row]:
        trust = default_trust_anchors(self.settings)
        todo = []
        for row in self.rows:
            if row.status == "skipped":  # an earlier run's poster or preview among the inputs
                continue
            if already_done(Path(row.output), trust, Path(row.report)):
                row.status, row.reason = "skipped", "output exists and verifies"
            else:
                todo.append(row)
        return todo

    # -- in-process ---------------------------------------------------------------------------------
    def run_local(self, overlap: bool = True) -> list[Row]:
        """Photos in groups of ``performance.batch_clips`` (one model batch each). With ``overlap``
        the CPU stages after generation (video check, finish, encode, label) of one group run in a
        second thread while the next group generates, so the GPU is not left waiting for ffmpeg; at
        most two groups are in memory. ``stats`` then says how busy the generator was."""
        from concurrent.futures import ThreadPoolExecutor

        from pipeline import run
        from service.stores import manifest_keeper

        settings = self.settings
        if self.engine:
            settings = settings.model_copy(update={"engine": settings.engine.model_copy(update={"name": self.engine})})
        todo = self._skip_finished()
        size = settings.performance.batch_clips
        lock = threading.Lock()
        keep = manifest_keeper(settings)
        began, generating = time.perf_counter(), 0.0

        def update(row: Row, **values) -> None:
            with lock:
                for key, value in values.items():
                    setattr(row, key, value)
                self.on_update(self.rows)

        def failed(row: Row, exc: AliveError, started: float) -> None:
            update(row, status=status_for(exc), reason=exc.message, code=exc.code,
                   seconds=round(time.perf_counter() - started, 3))

        def complete(row: Row, job: run.Job, started: float) -> None:
            try:
                result = run.complete(job)
            except AliveError as exc:
                failed(row, exc, started)
            else:
                update(row, status="done", job_id=result.job_id, timings_s=result.report["timings_s"],
                       seconds=round(time.perf_counter() - started, 3))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alive-finish") as finisher:
            behind: list = []  # the previous group's CPU stages, still running
            for first in range(0, len(todo), size):
                jobs = []
                for row in todo[first:first + size]:
                    started = time.perf_counter()
                    update(row, status="running")
                    try:
                        job = run.start(Path(row.input), Path(row.output), settings, self.options,
                                        prompt=self.prompt, story=self.story, poster=Path(row.poster),
                                        preview=Path(row.preview), report=Path(row.report), notes=row.notes,
                                        keep_manifest=keep)
                    except AliveError as exc:
                        failed(row, exc, started)
                        continue
                    jobs.append((row, job, started))
                if not jobs:
                    continue
                t0 = time.perf_counter()
                try:
                    run.generate_together([job for _, job, _ in jobs])
                except AliveError as exc:
                    for row, _, started in jobs:
                        failed(row, exc, started)
                    continue
                finally:
                    generating += time.perf_counter() - t0
                for future in behind:
                    future.result()
                behind = [finisher.submit(complete, row, job, started) for row, job, started in jobs]
                if not overlap:
                    for future in behind:
                        future.result()
            for future in behind:
                future.result()
        wall = time.perf_counter() - began
        done = sum(r.status == "done" for r in self.rows)
        self.stats = {"wall_s": round(wall, 3), "generate_s": round(generating, 3),
                      "generator_idle_fraction": round(1 - generating / wall, 4) if wall else 0.0,
                      "clips_per_hour": round(done * 3600 / wall, 1) if wall else 0.0,
                      "batch_clips": size, "overlap": overlap}
        log.info("batch: %d done in %.1f s, generator idle %.0f%% of the time", done, wall,
                 100 * self.stats["generator_idle_fraction"])
        return self.rows

    # -- through the broker -------------------------------------------------------------------------
    def run_queued(self, timeout: float | None = None) -> list[Row]:
        from workers.client import submit, wait

        submitted: dict[str, Row] = {}
        for row in self._skip_finished():
            try:
                row.job_id = submit(Path(row.input), self.settings, self.options, prompt=self.prompt,
                                    engine=self.engine, label=Path(row.input).name, story=self.story)
                submitted[row.job_id] = row
            except AliveError as exc:
                row.status, row.reason, row.code = status_for(exc), exc.message, exc.code
        started = time.perf_counter()
        storage = open_storage(self.settings)

        def update(records) -> None:
            for job_id, record in records.items():
                row = submitted[job_id]
                if row.status in ("done", "blocked", "rejected", "failed"):
                    continue
                if record.status == "succeeded":
                    self._deliver(storage, job_id, row)
                    row.status, row.timings_s = "done", record.timings_s
                    row.seconds = round(time.perf_counter() - started, 3)
                elif record.finished:
                    row.status = record.status
                    row.reason = (record.error or {}).get("message")
                    row.code = (record.error or {}).get("code")
                    row.seconds = round(time.perf_counter() - started, 3)
                else:
                    row.status = "running" if record.status == "running" else "queued"
            self.on_update(self.rows)

        if submitted:
            wait(list(submitted), self.settings, timeout=timeout, on_change=update)
        for row in submitted.values():
            if row.status in ("queued", "running"):
                row.status, row.reason, row.code = "failed", "not finished before the batch timeout", "timeout"
        return self.rows

    def _deliver(self, storage, job_id: str, row: Row) -> None:
        """Copy the job's poster, preview, report and video to the row's planned paths. The report
        beside the video names those paths (the store's addresses move to ``outputs.stored``) and
        carries the row's notes."""
        keys = Keys(job_id)
        targets = {"poster": Path(row.poster), "preview": Path(row.preview), "report": Path(row.report),
                   "video": Path(row.output)}
        for key, target in ((keys.poster, targets["poster"]), (keys.preview, targets["preview"])):
            _copy_out(storage, key, target)
        doc = json.loads(storage.get_bytes(keys.report))
        outputs = doc.setdefault("outputs", {})
        outputs["stored"] = {kind: outputs[kind] for kind in targets if kind in outputs}
        outputs.update({kind: str(path) for kind, path in targets.items()})
        doc["notes"] = [*row.notes, *doc.get("notes", [])]
        write_json_atomic(targets["report"], doc)
        _copy_out(storage, keys.video, targets["video"])  # the video last: its presence means "complete"

    def write_summary(self, path: Path) -> Path:
        lines = "".join(json.dumps(asdict(r)) + "\n" for r in self.rows)
        with staged_path(path) as tmp:
            tmp.write_text(lines, encoding="utf-8")
        return path
