"""Helpers and fakes shared by the tests: `from helpers import ...` (pytest puts tests/ on sys.path).

Fixtures live in conftest.py; this module holds what tests call or construct themselves.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid

import numpy as np
import pytest

from flashlive.memory.types import Clip

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


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_prefix(tag: str = "t") -> str:
    """A Redis key prefix of its own, so tests sharing one server never see each other's streams."""
    return f"{tag}{uuid.uuid4().hex[:8]}"


class ColourEncoder:
    """ClipEncoder whose tokens are each clip's mean colour (and frame count) tiled to [T, C].

    Deterministic and cheap, so a test can tell exactly which clip became which tokens and can make
    encoding as slow as it likes (`delay`, or `gate` to hold it until set); `fail_on` makes the batch
    holding a clip of that colour value raise.
    """

    encoder_id = "test-colour/v1"
    clip_frames = 4
    tokens_per_clip = 8
    width = 4
    device = "cpu"

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on  # a colour value whose batch raises
        self.batches: list[list[int]] = []  # first-pixel value of each clip, per batch
        self.gate: threading.Event | None = None
        self.threads: set[str] = set()

    def encode(self, clips: np.ndarray) -> np.ndarray:
        assert clips.dtype == np.uint8 and clips.ndim == 5 and clips.shape[1] == self.clip_frames
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay:
            time.sleep(self.delay)
        values = [int(c[0, 0, 0, 0]) for c in clips]
        self.batches.append(values)
        if self.fail_on is not None and self.fail_on in values:
            raise RuntimeError("synthetic encoder failure")
        mean = clips.reshape(len(clips), -1, 3).mean(axis=1)  # [N, 3]
        feats = np.concatenate([mean, np.full((len(clips), 1), clips.shape[1])], axis=1)  # [N, 4]
        return np.repeat(feats[:, None, :], self.tokens_per_clip, axis=1).astype(np.float16)  # [N, T, 4]


class ListMemory:
    """A ClipSink that keeps clips in a list; `fail` makes the next appends raise (a store outage)."""

    def __init__(self) -> None:
        self.clips: list[Clip] = []
        self.fail = 0

    async def append(self, clip: Clip, *, wait_s: float | None = None) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("store unavailable")
        self.clips.append(clip)

    def of(self, stream: str) -> list[Clip]:
        return [c for c in self.clips if c.stream == stream]
