"""Where one job's files go: the video, its poster, preview and report, and never onto an input.

The rule: no output may be an input (the photo, the sound file, any photo of a batch) or a file that
exists and that the user did not name as an output, and no two outputs of a run may be the same
file. "The same file" is decided after resolving symbolic links and by ``st_dev``/``st_ino``, so a
symlink or a hard link to the photo counts as the photo.

* A name the user chose (``-o``, ``--poster``, ``--preview``, ``--report``) is used as given, even
  over an existing file (re-running ``-o story.mp4`` replaces the old story), except when it is an
  input or another output of the run: then ``plan_outputs`` raises ``ConfigError`` (exit 2,
  ``output_is_input`` or ``outputs_collide``) and nothing is written.
* A name alive derives (``cat.jpg`` -> ``cat.mp4``; ``story.mp4`` -> ``story.jpg``, ``story.webp``,
  ``story.json``) is used when it is free or is a file an earlier alive run wrote there (listed in
  the alive report beside it). Otherwise the first free one of ``STEM.KIND.EXT``,
  ``STEM.KIND-2.EXT``, ``STEM.KIND-3.EXT`` ... is taken (``cat.poster.jpg``; for the video
  ``STEM-2.mp4``, ``STEM-3.mp4`` ...), and the plan carries a note saying so, which lands in the
  report's ``notes`` and on the CLI's ``note`` lines.

The plan is made before anything is read or written, so a refused run leaves no file behind.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pipeline.errors import ConfigError

KINDS = ("video", "poster", "preview", "report")
SUFFIXES = {"poster": ".jpg", "preview": ".webp", "report": ".json"}
OPTIONS = {"video": "-o/--output", "poster": "--poster", "preview": "--preview", "report": "--report"}
_MAX_TRIES = 1000
_MAX_REPORT_BYTES = 4 << 20


def default_video(photo: Path) -> Path:
    """The video name when none is given: the photo's name with ``.mp4``, in the current folder."""
    return Path(Path(photo).stem + ".mp4")


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when writing ``a`` could touch ``b``: the same path, the same path once symlinks are
    resolved, or (both existing) the same inode on the same device (a hard link)."""
    return not set(_keys(Path(a))).isdisjoint(_keys(Path(b)))


def _keys(path: Path) -> list[tuple]:
    """What identifies the file at ``path``: its absolute path, its resolved path, its inode."""
    keys: list[tuple] = [("path", os.path.normcase(os.path.abspath(path)))]
    try:
        keys.append(("path", os.path.normcase(str(path.resolve()))))
    except (OSError, RuntimeError):  # a symlink loop: the lexical path still counts
        pass
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return keys
    keys.append(("inode", st.st_dev, st.st_ino))
    return keys


class Protected:
    """Files no output may land on, each with a noun phrase that says what it is ("the input
    photo"): the inputs, then the outputs already chosen (in a batch, those of the photos before)."""

    def __init__(self) -> None:
        self._why: dict[tuple, tuple[str, bool, Path]] = {}

    def add(self, path: str | Path, why: str, *, is_input: bool = True) -> None:
        for key in _keys(Path(path)):
            self._why.setdefault(key, (why, is_input, Path(path)))

    def why(self, path: str | Path) -> tuple[str, bool, Path] | None:
        """(what it is, whether it is an input, its path) when ``path`` is a protected file, else None."""
        for key in _keys(Path(path)):
            if key in self._why:
                return self._why[key]
        return None


@dataclass(frozen=True)
class OutputPlan:
    video: Path
    poster: Path
    preview: Path
    report: Path
    notes: tuple[str, ...] = ()

    def paths(self) -> dict[str, Path]:
        return {"video": self.video, "poster": self.poster, "preview": self.preview, "report": self.report}


def earlier_outputs(report: Path) -> dict[str, str]:
    """The file names (per kind) that an earlier alive run wrote, according to the alive report at
    ``report``; empty when there is no such file or it is not an alive report."""
    try:
        if not report.is_file() or report.stat().st_size > _MAX_REPORT_BYTES:
            return {}
        doc = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    outputs = doc.get("outputs") if isinstance(doc, dict) and "job_id" in doc else None
    if not isinstance(outputs, dict):
        return {}
    names = {kind: Path(str(outputs[kind])).name for kind in ("video", "poster", "preview")
             if isinstance(outputs.get(kind), str) and outputs[kind]}
    return {**names, "report": report.name} if "video" in names else {}


def plan_outputs(
    video: str | Path,
    *,
    named_video: bool = True,
    poster: str | Path | None = None,
    preview: str | Path | None = None,
    report: str | Path | None = None,
    inputs: Iterable[tuple[str | Path, str]] = (),
    protected: Protected | None = None,
) -> OutputPlan:
    """Choose the four output paths of one job (see the module docstring for the rule).

    ``video`` is the MP4 path; ``named_video`` says whether the user chose it (``-o``) or alive
    derived it. ``poster``/``preview``/``report`` are the user's names, None to derive them from the
    video. ``inputs`` are (path, words) of the files the job reads, e.g. (photo, "the input photo").
    ``protected``, when given, also holds files to keep off (a batch's other inputs and outputs);
    the chosen outputs are added to it. Raises ``ConfigError`` (exit 2) when a name the user chose
    is an input or two outputs are the same file; reads only file metadata and alive reports.
    """
    protected = protected if protected is not None else Protected()
    for path, why in inputs:
        if path is not None:
            protected.add(path, why)
    named = {kind: Path(p) for kind, p in
             (("video", video if named_video else None), ("poster", poster), ("preview", preview), ("report", report))
             if p is not None}

    for kind, path in named.items():  # 1. a name the user chose is never an input
        hit = protected.why(path)
        if hit is not None:
            why, is_input, original = hit
            same = "" if os.path.abspath(original) == os.path.abspath(path) else f" {original}, through a link"
            raise ConfigError(
                f"the {kind} path {path} is {why}{same}; alive never writes over "
                + ("its input" if is_input else "another output of the run")
                + f". Choose another name with {OPTIONS[kind]}, e.g. {_suggest(kind, path, protected, named)}",
                code="output_is_input" if is_input else "outputs_collide",
                details={"output": kind, "path": str(path)})
    kinds = list(named)
    for i, first in enumerate(kinds):  # 2. nor are two outputs of the run the same file
        for second in kinds[i + 1:]:
            if same_file(named[first], named[second]):
                raise ConfigError(
                    f"the {first} and the {second} would both be written to {named[second]}; give each output "
                    f"its own name ({OPTIONS[first]}, {OPTIONS[second]})", code="outputs_collide",
                    details={"outputs": [first, second], "path": str(named[second])})

    chosen: dict[str, Path] = dict(named)
    notes: list[str] = []
    run = Protected()  # this run's outputs, so that a derived name avoids the others
    for kind, path in named.items():
        run.add(path, f"the {kind} of this run", is_input=False)

    def pick(kind: str, wanted: Path, ours: Callable[[Path], bool]) -> Path:
        """The first free candidate for a derived name; a note when it is not ``wanted`` itself."""
        refused = None
        for candidate in _candidates(kind, wanted):
            hit = protected.why(candidate) or run.why(candidate)
            why = f"is {hit[0]}" if hit else None
            if why is None and candidate.exists() and not ours(candidate):
                why = "already exists and alive did not write it"
            if why is None:
                if refused is not None:
                    notes.append(f"{kind} saved as {candidate} instead of {wanted}: {wanted} {refused}, and alive "
                                 f"never writes over an input or a file it did not make")
                run.add(candidate, f"the {kind} of this run", is_input=False)
                return candidate
            refused = refused or why
        raise ConfigError(f"found no free name for the {kind} next to {wanted}; choose one with {OPTIONS[kind]}",
                          code="no_free_name")

    if "video" not in chosen:  # 3. the video: an existing one is ours when the alive report beside it lists it
        named_report = chosen.get("report")
        chosen["video"] = pick("video", Path(video), lambda c: _ours_for(
            named_report or c.with_suffix(SUFFIXES["report"]), c).get("video") == c.name)
    base = chosen["video"]
    if "report" not in chosen:  # 4. the report: an existing one is ours when it is this video's alive report
        chosen["report"] = pick("report", base.with_suffix(SUFFIXES["report"]), lambda c: bool(_ours_for(c, base)))
    listed = _ours_for(chosen["report"], base)
    for kind in ("poster", "preview"):  # 5. poster and preview beside the video, ours when the report lists them
        if kind not in chosen:
            chosen[kind] = pick(kind, base.with_suffix(SUFFIXES[kind]), lambda c, k=kind: listed.get(k) == c.name)
    for kind, path in chosen.items():
        protected.add(path, f"the {kind} of another photo of this run", is_input=False)
    return OutputPlan(video=chosen["video"], poster=chosen["poster"], preview=chosen["preview"],
                      report=chosen["report"], notes=tuple(notes))


def _ours_for(report: Path, video: Path) -> dict[str, str]:
    """``earlier_outputs(report)`` when that report is the one of ``video``, else nothing."""
    names = earlier_outputs(report)
    return names if names.get("video") == video.name else {}


def _candidates(kind: str, wanted: Path) -> Iterator[Path]:
    """``wanted``, then STEM.KIND.EXT, STEM.KIND-2.EXT ... (the video: STEM-2.mp4, STEM-3.mp4 ...)."""
    yield wanted
    stem, ext = wanted.stem, wanted.suffix
    if kind != "video":
        yield wanted.with_name(f"{stem}.{kind}{ext}")
    for n in range(2, _MAX_TRIES):
        yield wanted.with_name(f"{stem}-{n}{ext}" if kind == "video" else f"{stem}.{kind}-{n}{ext}")


def _suggest(kind: str, path: Path, protected: Protected, named: dict[str, Path]) -> str:
    """A free name like the refused one, for the error message."""
    others = [p for k, p in named.items() if k != kind]
    tries = itertools.islice(_candidates(kind, path), 1, _MAX_TRIES)
    if kind == "video":  # cat.jpg -> cat.mp4, cat-2.mp4 ...
        tries = itertools.chain([path.with_suffix(".mp4")], (c.with_suffix(".mp4") for c in tries))
    for candidate in tries:
        if (protected.why(candidate) is None and not candidate.exists()
                and not any(same_file(candidate, o) for o in others)):
            return str(candidate)
    return "a name in another folder"
