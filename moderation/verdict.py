"""What a moderation check decided, and why, in a form a report can store.

A ``BackendResult`` is what one checker said; a ``Verdict`` combines them for one subject (the
photo, the prompt or the generated video). Two rules keep reports honest:

* a category is either *checked* by some backend or *unchecked*; an unchecked category is never
  reported as passed, so a reader can tell "no violence found" from "violence not looked for";
* the verdict's decision is the worst decision of its backends (allow < review < block).

``enforce`` turns a verdict into the ``ModerationBlocked`` error the CLI maps to exit code 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal

from pipeline.errors import ModerationBlocked

if TYPE_CHECKING:
    from pipeline.settings import ModerationSettings

Decision = Literal["allow", "review", "block"]
Subject = Literal["image", "prompt", "video"]

_RANK: dict[str, int] = {"allow": 0, "review": 1, "block": 2}

_SUBJECT_WORDS = {"image": "photo", "prompt": "prompt", "video": "generated video"}
_ADVICE = {
    "image": "Use a different photo.",
    "prompt": "Rephrase the prompt without these terms.",
    "video": "Try a different photo, prompt or seed.",
}


def worst(decisions: Iterable[Decision]) -> Decision:
    """The most severe of ``decisions`` ("allow" when there are none)."""
    result: Decision = "allow"
    for decision in decisions:
        if _RANK[decision] > _RANK[result]:
            result = decision
    return result


@dataclass(frozen=True)
class BackendResult:
    """What one backend said about one subject.

    ``checked`` lists the categories the backend actually looked at; ``unchecked`` the categories
    it explicitly did not (the "unchecked" backend uses it to make gaps visible in every report).
    """

    backend: str
    version: str
    scores: dict[str, float]
    decision: Decision
    reasons: tuple[str, ...]
    checked: tuple[str, ...]
    unchecked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "version": self.version,
            "decision": self.decision,
            "scores": {name: round(float(value), 6) for name, value in self.scores.items()},
            "reasons": list(self.reasons),
            "checked": list(self.checked),
            "unchecked": list(self.unchecked),
        }


@dataclass(frozen=True)
class Verdict:
    """The combined decision for one subject, with every backend's result kept for the report.

    ``frames`` is only filled for videos: the indices of the frames that were checked.
    """

    decision: Decision
    subject: Subject
    results: tuple[BackendResult, ...]
    reasons: tuple[str, ...]
    unchecked: tuple[str, ...]
    seconds: float
    frames: tuple[int, ...] = field(default=())

    @property
    def blocked(self) -> bool:
        return self.decision == "block"

    @property
    def needs_review(self) -> bool:
        return self.decision == "review"

    @property
    def checked(self) -> tuple[str, ...]:
        """Categories some backend really looked at (never one of ``unchecked``)."""
        seen: dict[str, None] = {}
        for result in self.results:
            seen.update(dict.fromkeys(result.checked))
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary: backends with versions, scores, decision, reasons, gaps."""
        data: dict[str, Any] = {
            "subject": self.subject,
            "decision": self.decision,
            "reasons": list(self.reasons),
            "checked": list(self.checked),
            "unchecked": list(self.unchecked),
            "seconds": round(self.seconds, 4),
            "backends": [result.to_dict() for result in self.results],
        }
        if self.frames:
            data["frames"] = list(self.frames)
        return data


def combine(
    subject: Subject,
    results: Iterable[BackendResult],
    seconds: float,
    *,
    expected: Iterable[str] = (),
    frames: Iterable[int] = (),
) -> Verdict:
    """Build a verdict from backend results.

    ``expected`` names categories the caller wanted covered; any that no backend checked are
    added to ``unchecked`` so that, for example, an empty backend list reports "nsfw" unchecked
    rather than silently passing it.
    """
    results = tuple(results)
    checked: set[str] = set()
    for result in results:
        checked.update(result.checked)
    unchecked: dict[str, None] = {}
    for result in results:
        unchecked.update(dict.fromkeys(c for c in result.unchecked if c not in checked))
    unchecked.update(dict.fromkeys(c for c in expected if c not in checked))
    reasons = tuple(f"{result.backend}: {reason}" for result in results for reason in result.reasons)
    return Verdict(
        decision=worst(result.decision for result in results),
        subject=subject,
        results=results,
        reasons=reasons,
        unchecked=tuple(unchecked),
        seconds=float(seconds),
        frames=tuple(int(i) for i in frames),
    )


def disabled_verdict(subject: Subject, categories: Iterable[str]) -> Verdict:
    """The verdict when moderation is switched off: allow, with every category unchecked."""
    categories = tuple(dict.fromkeys(categories))
    result = BackendResult(
        backend="disabled",
        version="-",
        scores={},
        decision="allow",
        reasons=("moderation is disabled in settings (moderation.enabled = false); nothing was checked",),
        checked=(),
        unchecked=categories,
    )
    return combine(subject, [result], 0.0)


def _first_reasons(reasons: tuple[str, ...], limit: int = 2) -> str:
    """The first few reasons, joined; the verdict attached to the error keeps them all."""
    if not reasons:
        return "no reason given"
    shown = ", ".join(reasons[:limit])
    return shown if len(reasons) <= limit else f"{shown} (and {len(reasons) - limit} more)"


def enforce(verdict: Verdict, settings: "ModerationSettings") -> None:
    """Raise ``ModerationBlocked`` when the verdict must stop the job; return quietly otherwise.

    A "block" always stops. A "review" stops only when ``settings.on_review == "block"`` (code
    ``review_required``); with "proceed" the caller publishes and records that review is needed.
    """
    settings = getattr(settings, "moderation", settings)  # also accept the whole Settings
    if verdict.decision == "block":
        code = f"blocked_{verdict.subject}"
        what = "was blocked"
    elif verdict.decision == "review" and settings.on_review == "block":
        code = "review_required"
        what = "needs human review before it can be published (moderation.on_review is 'block')"
    else:
        return
    culprits = [r for r in verdict.results if r.decision == verdict.decision]
    because = "; ".join(f"{r.backend}: {_first_reasons(r.reasons)}" for r in culprits)
    noun = _SUBJECT_WORDS.get(verdict.subject, verdict.subject)
    message = f"The {noun} {what}: {because}. {_ADVICE.get(verdict.subject, '')}".strip()
    raise ModerationBlocked(message, verdict=verdict, code=code)
