"""Shared fixtures. Tests never touch the user's real data dir: ALIVE_DATA_DIR points at a session
temp folder (the tiny model and the dev C2PA chain are built there once per session)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3_server", "tests.pg_fixtures"]
_SESSION_DATA = Path(tempfile.mkdtemp(prefix="alive-test-data-"))
os.environ["ALIVE_DATA_DIR"] = str(_SESSION_DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: nothing in the tests may reach a hub
# Small stories by default (worker processes inherit this); the tests of the real story defaults
# (1080x1920, 30 fps, 4 s) clear these with the `story_defaults` fixture.
SMALL_STORY = {"ALIVE_STORY__WIDTH": "144", "ALIVE_STORY__HEIGHT": "256", "ALIVE_STORY__FPS": "12",
               "ALIVE_STORY__DURATION_S": "1.0"}
os.environ.update(SMALL_STORY)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _SESSION_DATA


@pytest.fixture
def settings(data_dir):
    """Default settings with fast encoding (veryfast: ultrafast cannot make H.264 High), rooted in the session data dir."""
    from pipeline.settings import load_settings

    return load_settings(data_dir=data_dir, encode={"preset": "veryfast"})


@pytest.fixture
def story_defaults(monkeypatch):
    """Undo the suite's small-story environment, for tests of the real defaults."""
    for name in SMALL_STORY:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def sample_photo() -> Path:
    return EXAMPLES / "astronaut.jpg"


def pytest_collection_modifyitems(config, items):
    """Skip tests marked gpu when no CUDA device is visible."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_SESSION_DATA, ignore_errors=True)
