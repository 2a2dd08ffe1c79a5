"""Check the optional text prompt against the configured block and review term lists.

Matching is on whole words and phrases, case-insensitively, so "sex" blocks "sex" and "Sex!" but
not "Essex", "Middlesex" or "sextant"; a simple plural ("nudes", "guns") also matches. To catch
cheap obfuscation the text is also read a second way, with:

* accents removed and compatibility forms folded (fullwidth letters, ligatures);
* runs of single characters joined ("n.u.d.e", "s e x", "g-u-n" -> "nude", "sex", "gun"), and
  a term found anywhere inside such a run ("a n u d e" -> "anude" still holds "nude");
* common digit/symbol stand-ins replaced inside words (0->o 1->i 3->e 4->a 5->s 7->t, @->a, $->s),
  so "nud3" and "s3x" match.

This is a modest filter, not a language model: it will not understand paraphrase. The prompt
itself is stored (or not) by the caller; only the matched terms go into the verdict.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from functools import lru_cache
from typing import TYPE_CHECKING

from moderation.image import resolve_settings
from moderation.verdict import BackendResult, Decision, Verdict, combine, disabled_verdict

if TYPE_CHECKING:
    from pipeline.settings import ModerationSettings

NAME = "prompt-terms"
CATEGORY = "prompt_terms"

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_WORD = re.compile(r"[^\W_]+")  # letters and digits; underscores and punctuation separate words
_SYMBOL_IN_WORD = re.compile(r"(?<=[^\W\d_])[@$]|[@$](?=[^\W\d_])")  # "n@ked", "$ex", not "$5"


def normalise(text: str) -> str:
    """Casefold, fold compatibility forms and strip accents: "Ｎüde" -> "nude"."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    return "".join(ch for ch in folded if not unicodedata.combining(ch))


def _words(text: str) -> list[tuple[str, bool]]:
    """Normalised words with leet undone, each flagged True when joined from single characters."""
    text = _SYMBOL_IN_WORD.sub(lambda m: m.group(0).translate(_LEET), normalise(text))
    words: list[tuple[str, bool]] = []
    run: list[str] = []
    for word in [*_WORD.findall(text), ""]:  # "" flushes the last run
        if len(word) == 1:
            run.append(word)
            continue
        if run:
            words.append(("".join(run), True))
            run = []
        if word:
            words.append((word, False))
    # Digits become letters only in words that contain a letter or came from a run of single
    # characters ("s.3.x"); plain numbers such as "1970" are left alone.
    return [(w.translate(_LEET) if joined or not w.isdigit() else w, joined) for w, joined in words]


def deobfuscate(text: str) -> str:
    """The normalised text as space-separated words, single-character runs joined and leet undone."""
    return " ".join(word for word, _ in _words(text))


@lru_cache(maxsize=64)
def _pattern(term: str) -> re.Pattern[str]:
    """Whole-word regex for a (normalised) term; words of a phrase may be split by any separators."""
    words = _WORD.findall(term)
    if not words:
        return re.compile(r"(?!x)x")  # a term of punctuation only matches nothing
    body = r"[\W_]+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![^\W_])(?:{body})(?:e?s)?(?![^\W_])")


def find_terms(text: str, terms: list[str] | tuple[str, ...]) -> list[tuple[str, bool]]:
    """The terms found in ``text``, in list order, each with True when found only after deobfuscation.

    Inside a run of single characters a term may match anywhere, since the run also swallows
    neighbouring one-letter words: "a n u d e" becomes "anude".
    """
    plain = normalise(text)
    words = _words(text)
    clean = " ".join(word for word, _ in words)
    runs = [word for word, joined in words if joined]
    found: list[tuple[str, bool]] = []
    for term in dict.fromkeys(terms):
        hidden = deobfuscate(term)
        if _pattern(normalise(term)).search(plain):
            found.append((term, False))
        elif _pattern(hidden).search(clean) or any(hidden.replace(" ", "") in run for run in runs if hidden):
            found.append((term, True))
    return found


def _terms_version(settings: "ModerationSettings") -> str:
    """A short hash of both term lists, so a report says which lists judged the prompt."""
    text = "\n".join(["block", *settings.prompt_block_terms, "review", *settings.prompt_review_terms])
    return "terms." + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def check_prompt(text: str | None, settings: "ModerationSettings | None" = None) -> Verdict:
    """Block on a block term, review on a review term, allow otherwise (and when there is no prompt)."""
    section = resolve_settings(settings)
    if not section.enabled:
        return disabled_verdict("prompt", (CATEGORY,))
    start = time.perf_counter()
    if text is None or not text.strip():
        result = BackendResult(
            backend=NAME,
            version=_terms_version(section),
            scores={},
            decision="allow",
            reasons=("no prompt",),
            checked=(),
        )
        return combine("prompt", [result], time.perf_counter() - start)
    blocked = find_terms(text, section.prompt_block_terms)
    reviewed = find_terms(text, section.prompt_review_terms)
    decision: Decision = "block" if blocked else "review" if reviewed else "allow"
    reasons = [
        f"matched {kind} term {term!r}" + (" (obfuscated)" if hidden else "")
        for kind, found in (("block", blocked), ("review", reviewed))
        for term, hidden in found
    ]
    result = BackendResult(
        backend=NAME,
        version=_terms_version(section),
        scores={"block_terms": float(len(blocked)), "review_terms": float(len(reviewed))},
        decision=decision,
        reasons=tuple(reasons) or ("no block or review term found",),
        checked=(CATEGORY,),
    )
    return combine("prompt", [result], time.perf_counter() - start)
