"""The web page end to end in headless Chromium: pick a photo, animate it, watch the labelled video.

The real stack runs: uvicorn serving ``create_app`` on 127.0.0.1 (in a thread), the embedded broker
and one worker process. Chromium is Debian's ``/usr/bin/chromium`` driven by the ``playwright``
package (no browser download); the test is skipped when either is missing. A screenshot is kept
in tests/artifacts/web_page.png for a human to look at.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.worker_fixtures import WorkerEnv
from tests.deadlines import scaled

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# The closed network here refuses connections: keep Chromium from trying any of its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JOB_TIMEOUT_MS = 240_000  # the page's default tiny clip: 25 steps, ~60-90 s on 2 busy cores


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                                 "(pip install playwright; no browser download needed)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
                                      headless=True, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_dir):
    """(base URL, API key) of the API served by uvicorn in a thread, with one worker behind it."""
    import uvicorn

    from service import db
    from service.api import create_app
    from workers.client import connect

    env = WorkerEnv(tmp_path_factory.mktemp("web") / "d", data_dir / "models", ALIVE_JOBS__STORE="database")
    server = thread = None
    try:
        env.start_worker("cpu,gpu")
        connect(env.settings)
        app = create_app(env.settings)
        _, key = db.create_api_key(db.database_url(env.settings), "web", rate_limit_per_minute=100_000)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with another process
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + scaled(20)
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start within 20 s"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", key
    finally:
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(15)
        env.close()
        db.dispose_engines()
    assert thread is None or not thread.is_alive(), "uvicorn did not stop within 15 s"


def test_animate_a_photo_in_the_browser(browser, served, sample_photo):
    base, key = served
    page = browser.new_page(viewport={"width": 640, "height": 1100})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text} ({msg.location.get('url')})")
            if msg.type == "error" else None)
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{base}/?key={key}")
        assert page.title().startswith("alive")
        assert page.input_value("#key") == key  # taken from ?key=
        assert key not in page.url, "the API key stays in the address bar (and the history)"
        assert page.is_disabled("#go")  # no photo yet
        page.set_input_files("#photo", str(sample_photo))
        page.select_option("#engine", "tiny")
        assert page.is_enabled("#go")
        page.click("#go")

        # Done when the video has its source and either has decoded a frame or gave up with an error.
        page.wait_for_function(
            """() => { const v = document.getElementById("video"), s = document.getElementById("status");
                       return (v.src && (v.readyState >= 2 || v.error)) || s.className === "error"; }""",
            timeout=JOB_TIMEOUT_MS)
        status = page.text_content("#status")
        assert page.get_attribute("#status", "class") != "error", f"the page reports a failure: {status}"
        assert status.startswith("done in "), status
        video = page.evaluate("""() => { const v = document.getElementById("video");
            return {src: v.src, readyState: v.readyState, error: v.error && v.error.code, width: v.videoWidth,
                    height: v.videoHeight, duration: v.duration,
                    canPlay: v.canPlayType('video/mp4; codecs="avc1.640028"')}; }""")
        assert video["src"].startswith("blob:")
        assert video["error"] is None, f"Chromium could not decode the MP4 (MediaError code {video['error']}): {video}"
        assert video["readyState"] >= 2 and video["width"] > 0 and video["height"] > 0, video
        assert video["height"] > video["width"], f"expected a vertical story video: {video}"

        # It plays: muted and looping, so play() is allowed headless and time moves on.
        page.evaluate("() => document.getElementById('video').play()")
        page.wait_for_function("() => { const v = document.getElementById('video');"
                               " return !v.paused && v.currentTime > 0.1; }", timeout=scaled(15) * 1000)

        assert page.is_visible("#badge") and page.text_content("#badge") == "AI-generated"
        terms = page.eval_on_selector_all("#credential dt", "els => els.map(e => e.textContent)")
        values = page.eval_on_selector_all("#credential dd", "els => els.map(e => e.textContent)")
        credential = dict(zip(terms, values))
        assert credential["Content Credentials"] == "Trusted", credential
        assert credential["AI-generated"] == "yes", credential
        assert credential["digitalSourceType"].endswith("/trainedAlgorithmicMedia"), credential
        assert "image: allow" in credential["moderation"], credential
        assert page.get_attribute("#download", "href") == video["src"]

        page.click("#share")
        page.wait_for_function("() => document.getElementById('shared').textContent.includes('/s/')", timeout=scaled(15) * 1000)
        assert page.text_content("#shared").startswith(f"{base}/s/")

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
        assert not problems, problems
    finally:
        page.close()
