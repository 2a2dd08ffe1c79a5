"""The embedded broker with real redis-server processes and real Celery workers (no mocks).

Every broker started here goes through the ``brokers`` fixture, whose finalizer stops it, and every
worker through ``celery_worker``, which terminates (then kills) it: no process outlives a test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection

from pipeline.errors import ConfigError, TransientError
from workers.broker import MAX_SOCKET_PATH_BYTES, EmbeddedBroker, embedded_broker
from tests.deadlines import scaled

REPO = Path(__file__).resolve().parent.parent
TASK_MODULE = "alive_broker_test_tasks"
RESULT_TIMEOUT_S = 20


@pytest.fixture
def brokers() -> Iterator[Callable[[Path], EmbeddedBroker]]:
    """Factory of brokers that are all stopped at teardown, whatever the test did."""
    made: list[EmbeddedBroker] = []

    def make(directory: Path) -> EmbeddedBroker:
        broker = EmbeddedBroker(directory)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.stop()
    for broker in made:
        assert servers_in(broker.directory) == [], f"redis-server left running for {broker.directory}"


def servers_in(directory: Path) -> list[int]:
    """Pids of live redis-server processes working in ``directory`` (redis chdirs into its dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, zombie, or not ours to read
            continue
        if Path(exe).name.startswith("redis-server") and Path(cwd) == Path(directory).resolve():
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/exe").exists()  # a zombie has no exe link


def write_task_module(folder: Path) -> None:
    (folder / f"{TASK_MODULE}.py").write_text(textwrap.dedent("""
        import os
        from celery import Celery

        URL = os.environ["ALIVE_TEST_BROKER_URL"]
        app = Celery("alive_broker_test", broker=URL, backend=URL)

        @app.task(name="brokertest.add")
        def add(x, y):
            return x + y
    """))


@contextmanager
def celery_worker(url: str, folder: Path) -> Iterator[subprocess.Popen]:
    """A real `celery worker` subprocess on ``url``; terminated (then killed) on the way out."""
    write_task_module(folder)
    env = dict(os.environ, ALIVE_TEST_BROKER_URL=url, PYTHONPATH=str(folder))
    argv = [sys.executable, "-m", "celery", "-A", TASK_MODULE, "worker", "--pool=solo", "-c", "1",
            "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning"]
    log = open(folder / "worker.log", "wb")
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


@contextmanager
def client_app(url: str) -> Iterator[Celery]:
    app = Celery("alive_broker_test_client", broker=url, backend=url)
    try:
        yield app
    finally:
        app.close()


def worker_log(folder: Path) -> str:
    path = folder / "worker.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no worker log)"


def test_start_runs_a_unix_socket_server_that_redis_py_can_use(brokers, tmp_path):
    broker = brokers(tmp_path / "data").start()

    assert broker.is_running()
    assert broker.socket_path == broker.directory / "redis.sock"
    assert broker.url == f"redis+socket://{broker.socket_path}"
    assert broker.pid() in servers_in(broker.directory)
    conf = broker.conf_file.read_text()
    for line in ("port 0", "appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction",
                 "unixsocketperm 700", 'save ""'):
        assert line in conf.splitlines()
    client = redis.Redis(unix_socket_path=str(broker.socket_path), socket_timeout=2)
    try:
        assert client.ping()
        client.set("k", b"v")
        assert client.get("k") == b"v"
        assert client.config_get("port") == {"port": "0"}  # nothing on TCP
    finally:
        client.close()


def test_celery_round_trip_through_a_real_worker(brokers, tmp_path):
    # A space in the path: the URL is percent-quoted and must still reach the same socket.
    broker = brokers(tmp_path / "data dir" / "broker").start()
    assert "%20" in broker.url

    with client_app(broker.url) as app, celery_worker(broker.url, tmp_path):
        result = app.send_task("brokertest.add", args=(2, 3))
        try:
            assert result.get(timeout=RESULT_TIMEOUT_S) == 5
        except Exception:
            print(worker_log(tmp_path))
            raise


def test_a_job_queued_before_a_broker_restart_still_runs(brokers, tmp_path):
    """The broker goes away and comes back (new process, AOF replayed): no queued job is lost."""
    broker = brokers(tmp_path / "data").start()
    with client_app(broker.url) as app:
        result = app.send_task("brokertest.add", args=(20, 22))  # no worker yet: stays queued
        client = redis.Redis(unix_socket_path=str(broker.socket_path), socket_timeout=2)
        try:
            assert client.llen("celery") == 1
            old_pid = broker.pid()
            broker.restart()
            assert broker.pid() != old_pid and not alive(old_pid)
            assert client.llen("celery") == 1  # redis-py reconnects to the new server
        finally:
            client.close()

        with celery_worker(broker.url, tmp_path):
            try:
                assert result.get(timeout=RESULT_TIMEOUT_S) == 42
            except Exception:
                print(worker_log(tmp_path))
                raise


def test_second_start_joins_the_running_server(brokers, tmp_path):
    first = brokers(tmp_path / "data").start()
    pid = first.pid()
    # Another spelling of the same folder is the same broker.
    second = brokers(tmp_path / "data" / ".." / "data")

    began = time.perf_counter()
    second.start()
    joined_in = time.perf_counter() - began

    assert second == first
    assert second.pid() == pid
    assert servers_in(first.directory) == [pid]
    assert joined_in < scaled(1.0)


def test_concurrent_starts_from_threads_give_one_server(brokers, tmp_path):
    directory = tmp_path / "data"
    gate = threading.Barrier(4)
    pids: list[int | None] = []
    errors: list[BaseException] = []

    def start() -> None:
        broker = brokers(directory)
        gate.wait()
        try:
            pids.append(broker.start().pid())
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert len(pids) == 4 and len(set(pids)) == 1 and pids[0] is not None
    assert servers_in(directory) == [pids[0]]


def test_concurrent_starts_from_processes_give_one_server(brokers, tmp_path):
    directory = tmp_path / "data"
    brokers(directory)  # registered for teardown
    go = tmp_path / "go"
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from workers.broker import EmbeddedBroker
        broker = EmbeddedBroker(Path(sys.argv[1]))
        while not Path(sys.argv[2]).exists():
            time.sleep(0.001)
        print(broker.start().pid())
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(directory), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        time.sleep(0.5)  # let all three import and wait at the gate
        go.touch()
        outputs = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    pids = {int(out.strip()) for out, _ in outputs}
    assert len(pids) == 1
    assert servers_in(directory) == list(pids)


def test_long_data_dir_moves_only_the_socket_to_a_short_path(brokers, tmp_path):
    directory = tmp_path / ("long-" + "x" * 120) / "broker"
    broker = brokers(directory)
    socket_dir = broker.socket_path.parent
    assert len(os.fsencode(broker.socket_path)) < MAX_SOCKET_PATH_BYTES
    assert socket_dir != broker.directory and str(socket_dir).startswith("/tmp/alive-")

    broker.start()
    assert broker.is_running()
    assert (socket_dir.stat().st_mode & 0o777) == 0o700
    assert broker.pid_file.exists() and broker.log_file.exists()  # data stays in the directory
    with Connection(broker.url) as conn:  # kombu on the URL: a message there and back
        queue = conn.SimpleQueue("alive-broker-test")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()

    broker.stop()
    assert not broker.is_running()
    assert not socket_dir.exists()  # the short folder is tidied away with the server


def test_unsafe_short_socket_folder_is_refused(brokers, tmp_path):
    broker = brokers(tmp_path / ("long-" + "y" * 120) / "broker")
    socket_dir = broker.socket_path.parent
    socket_dir.mkdir()
    try:
        socket_dir.chmod(0o777)  # writable by anyone: someone could swap the socket
        with pytest.raises(ConfigError) as caught:
            broker.start()
        assert caught.value.code == "broker_socket_dir_unsafe"
        assert str(socket_dir) in caught.value.message
        assert servers_in(broker.directory) == []
    finally:
        socket_dir.rmdir()


def test_stop_removes_the_process_socket_and_pid_file(brokers, tmp_path):
    broker = brokers(tmp_path / "data").start()
    pid = broker.pid()
    assert pid is not None and alive(pid)

    began = time.perf_counter()
    broker.stop()
    stopped_in = time.perf_counter() - began

    assert not alive(pid)
    assert servers_in(broker.directory) == []
    assert not broker.socket_path.exists() and not broker.pid_file.exists()
    assert not broker.is_running() and broker.pid() is None
    assert stopped_in < scaled(5)


def test_stop_when_nothing_runs_is_a_no_op(brokers, tmp_path):
    never = brokers(tmp_path / "never-made")
    never.stop()
    assert not never.directory.exists()  # stop() creates nothing

    stopped = brokers(tmp_path / "data").start()
    stopped.stop()
    stopped.stop()
    assert not stopped.is_running()


def test_a_server_that_cannot_start_raises_transient_error_with_the_log(brokers, tmp_path):
    broker = brokers(tmp_path / "data")
    broker.directory.mkdir(parents=True)
    (broker.directory / "appendonly.aof").write_bytes(b"this is not an append only file\n" * 4)

    began = time.perf_counter()
    with pytest.raises(TransientError) as caught:
        broker.start(timeout=10)
    failed_in = time.perf_counter() - began

    assert caught.value.code == "broker_unavailable"
    assert "Bad file format" in caught.value.message  # redis's own log line, from the tail
    assert str(broker.conf_file) in caught.value.message  # the command
    assert failed_in < 9.5  # noticed the exit; did not sit out the 10 s timeout
    assert servers_in(broker.directory) == []


def test_embedded_broker_lives_in_the_data_dir(tmp_path):
    broker = embedded_broker(tmp_path)
    assert broker.directory == (tmp_path / "broker").resolve()
    assert broker.url == "redis+socket://" + str(tmp_path.resolve() / "broker" / "redis.sock")
    assert not broker.is_running()
    assert not broker.directory.exists()  # building one touches nothing


def test_one_process_switching_from_rabbitmq_back_to_redis_routes_to_the_redis_queues(tmp_path):
    """CI found it: after a RabbitMQ test configured its own quorum queues (and "no missing queues"),
    every later job in the same process failed with "Queue 'cpu' missing from task_queues"."""
    from pipeline.settings import load_settings
    from workers.app import app, configure

    before = app.conf.alive_settings
    rabbit = load_settings(data_dir=tmp_path / "r", worker={
        "broker_url": "amqp://guest:guest@127.0.0.1:5672//", "cpu_queue": "own-cpu", "gpu_queue": "own-gpu"})
    redis_side = load_settings(data_dir=tmp_path / "s", worker={"broker_url": "redis://127.0.0.1:6379/15"})
    try:
        configure(app, rabbit)
        assert app.amqp.router.route({}, "alive.moderate")["queue"].name == "own-cpu"
        configure(app, redis_side)
        assert app.conf.task_queues is None and app.conf.task_create_missing_queues
        assert app.amqp.router.route({}, "alive.moderate")["queue"].name == "cpu"
        assert app.amqp.router.route({}, "alive.generate")["queue"].name == "gpu"
        assert app.conf.alive_dead_letter_queue is None
    finally:
        configure(app, before)


def test_switching_brokers_and_back_to_the_same_url_gets_a_live_connection_pool(brokers, tmp_path):
    """CI found it: app._pool is kombu's process-wide pool for the URL; closed on a switch but left
    registered, the next switch back to that URL was handed the closed pool ("Acquire on closed pool")."""
    from pipeline.settings import load_settings
    from workers.app import app, configure

    before = app.conf.alive_settings
    first, other = brokers(tmp_path / "a").start(), brokers(tmp_path / "b").start()
    one = load_settings(data_dir=tmp_path / "one", worker={"broker_url": first.url})
    two = load_settings(data_dir=tmp_path / "two", worker={"broker_url": other.url})
    try:
        for settings in (one, two, one):
            configure(app, settings)
            with app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1)
    finally:
        configure(app, before)
