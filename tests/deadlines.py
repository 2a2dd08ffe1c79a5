"""Deadlines around real work, scaled for a loaded machine.

A deadline in a test only catches a hang; it must never fail a test because CI shares its cores.
``scaled(s)`` stretches ``s`` by ``ALIVE_TEST_TIME_SCALE`` (default 3) and, further, by how loaded
the machine is when the deadline is set (1-minute load average per core, when above 1). Tests
wait on events (a file, a status, a log line) and use these only as an upper bound.
"""

from __future__ import annotations

import os

BASE_FACTOR = float(os.environ.get("ALIVE_TEST_TIME_SCALE", "3"))


def load_factor() -> float:
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:  # pragma: no cover - no load average on this platform
        return 1.0


def scaled(seconds: float) -> float:
    return seconds * BASE_FACTOR * load_factor()
