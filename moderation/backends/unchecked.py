"""A backend that checks nothing and says so.

No offline model with an acceptable licence covers violence, gore or weapons on these machines
(see NOTES.md). Rather than leave those categories out of the report, where a reader could take
silence for a pass, this backend lists them as ``unchecked`` in every image and video verdict.
It never changes the decision.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from moderation.verdict import BackendResult

NAME = "unchecked"


class UncheckedBackend:
    """Always "allow", with the configured categories in ``unchecked`` and none in ``checked``."""

    name = NAME
    version = "1"
    categories: tuple[str, ...] = ()

    def __init__(self, unchecked_categories: Iterable[str]):
        self.unchecked_categories = tuple(dict.fromkeys(unchecked_categories))
        if self.unchecked_categories:
            reason = f"not checked: no offline model for {', '.join(self.unchecked_categories)}"
        else:
            reason = "no categories are declared unchecked"
        self._result = BackendResult(
            backend=self.name,
            version=self.version,
            scores={},
            decision="allow",
            reasons=(reason,),
            checked=(),
            unchecked=self.unchecked_categories,
        )

    def check(self, rgb: np.ndarray) -> BackendResult:
        return self._result
