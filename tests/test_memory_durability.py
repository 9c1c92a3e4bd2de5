"""Retention under continuous append, AOF restarts, Redis killed mid-append, the local buffer."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import numpy as np
import pytest

from flashlive.memory.server import RedisServer
from flashlive.memory.settings import Retention
from flashlive.memory.store import AppendStatus, VideoMemory
from flashlive.memory.types import Clip

ENC = "tiny@224/tome16_mlp_hd64"


def make_clip(stream: str, i: int, thumb: int = 0) -> Clip:
    tokens = np.full((64, 8), i % 2048, np.float16)
    return Clip(stream, 4.0 * i, 4.0 * i + 4.0, 4, tokens, ENC, thumbnail=bytes(thumb))


async def stored_starts(memory: VideoMemory, stream: str) -> list[float]:
    return [c.start async for c in memory.replay_info(stream)]


async def actual_bytes(memory: VideoMemory, stream: str) -> int:
    """Bytes really held, summed from the stored values (not from the memory's counter): the token and
    thumbnail hashes plus the token tails the stream entries carry."""
    keys = memory.keys(stream)
    entries: Any = await memory.client.xrange(keys.clips)
    total = sum(len(fields.get(b"tt", b"")) for _, fields in entries)
    for key in (keys.tokens, keys.thumbs):
        for value in (await memory.client.hgetall(key)).values():
            total += len(value)
    return total


async def test_time_window_keeps_exactly_the_window(redis_server: RedisServer) -> None:
    mem = VideoMemory.from_url(
        redis_server.url, prefix=f"r{uuid.uuid4().hex[:8]}", retention=Retention(seconds=600.0)
    )
    try:
        for i in range(600):
            await mem.append(make_clip("cam", i))
            if i % 37 == 0 or i == 599:
                newest = 4.0 * i
                want = [4.0 * k for k in range(i + 1) if 4.0 * k >= newest - 600.0]
                assert await stored_starts(mem, "cam") == want
        stats = await mem.stats("cam")
        assert stats.clips == 151 and stats.trimmed_clips == 600 - 151
        assert stats.bytes == await actual_bytes(mem, "cam") == 151 * 1024
        assert stats.trimmed_bytes == (600 - 151) * 1024
    finally:
        await mem.close()


@pytest.mark.slow
async def test_byte_cap_under_concurrent_appenders(redis_server: RedisServer) -> None:
    """Two writers (own connections) append to four streams at once; caps hold after every append."""
    prefix = f"r{uuid.uuid4().hex[:8]}"
    cap = 40 * 1024 + 40 * 300
    writers = [
        VideoMemory.from_url(redis_server.url, prefix=prefix, retention=Retention(max_bytes=cap))
        for _ in range(2)
    ]
    sizes: dict[str, list[int]] = {}

    async def feed(mem: VideoMemory, stream: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        sizes[stream] = []
        for i in range(300):
            thumb = int(rng.integers(0, 900))
            sizes[stream].append(1024 + thumb)
            await mem.append(make_clip(stream, i, thumb))
            held = await actual_bytes(mem, stream)
            assert held <= cap, f"{stream}: {held} bytes held, cap {cap}"
            assert (await mem.stats(stream)).bytes == held

    try:
        await asyncio.gather(*(feed(writers[k % 2], f"s{k}", k) for k in range(4)))
        for k in range(4):
            stream = f"s{k}"
            starts = await stored_starts(writers[0], stream)
            n = len(starts)
            # the newest clips are kept, contiguous, and no more were dropped than the cap needed
            assert starts == [4.0 * i for i in range(300 - n, 300)]
            assert sum(sizes[stream][-n:]) <= cap < sum(sizes[stream][-n - 1 :])
            stats = await writers[1].stats(stream)
            assert stats.trimmed_clips == 300 - n
            assert stats.trimmed_bytes == sum(sizes[stream][: 300 - n])
    finally:
        for w in writers:
            await w.close()


async def test_restart_with_aof_keeps_memory(memory: VideoMemory, redis_server: RedisServer) -> None:
    for i in range(50):
        await memory.append(make_clip("cam", i, thumb=i))
    await memory.set_state("cam", "live", source="rtsp://cam")
    before = (await memory.stats("cam"), await memory.read_window("cam", encoder_id=ENC, thumbnails=True))
    redis_server.restart()
    after = (await memory.stats("cam"), await memory.read_window("cam", encoder_id=ENC, thumbnails=True))
    assert after[0] == before[0]
    assert [(c.start, c.thumbnail, c.tokens.tobytes()) for c in after[1]] == [
        (c.start, c.thumbnail, c.tokens.tobytes()) for c in before[1]
    ]
    assert (await memory.meta("cam"))["state"] == "live"
    assert await memory.append(make_clip("cam", 50)) == AppendStatus.STORED  # the append script reloads


async def test_sigkill_during_appends_loses_and_duplicates_nothing(
    memory: VideoMemory, redis_server: RedisServer
) -> None:
    total = 400
    statuses: list[AppendStatus] = []
    killed = threading.Event()

    def kill() -> None:
        redis_server.kill()
        killed.set()

    timer = threading.Timer(0.15, kill)  # lands wherever the appends are, mid-request included
    timer.start()
    try:
        for i in range(total):
            statuses.append(await memory.append(make_clip("cam", i)))
            if i == total // 2 and not killed.is_set():
                await asyncio.get_running_loop().run_in_executor(None, killed.wait, 5.0)
    finally:
        timer.join()
    assert killed.is_set()
    assert AppendStatus.BUFFERED in statuses
    assert memory.buffer_depth > 0
    redis_server.start()
    assert await memory.flush(timeout=20.0)
    assert memory.buffer_depth == 0 and memory.dropped == 0
    assert await stored_starts(memory, "cam") == [4.0 * i for i in range(total)]
    stats = await memory.stats("cam")
    assert stats.clips == total and stats.dropped == 0
    assert stats.bytes == await actual_bytes(memory, "cam")


async def test_buffer_overflow_drops_oldest_and_counts(redis_server: RedisServer) -> None:
    mem = VideoMemory.from_url(
        redis_server.url, prefix=f"o{uuid.uuid4().hex[:8]}", buffer_size=30, retry_initial=0.02
    )
    try:
        for i in range(10):
            await mem.append(make_clip("cam", i))
        redis_server.kill()
        for i in range(10, 110):  # 100 clips while Redis is down: 70 must go
            assert await mem.append(make_clip("cam", i)) == AppendStatus.BUFFERED
        assert (mem.buffer_depth, mem.dropped) == (30, 70)
        redis_server.start()
        assert await mem.flush(timeout=20.0)
        want = [4.0 * i for i in [*range(10), *range(80, 110)]]
        assert await stored_starts(mem, "cam") == want
        stats = await mem.stats("cam")
        assert (stats.clips, stats.dropped) == (40, 70)
        assert (await mem.meta("cam"))["dropped"] == "70"  # recorded in Redis for other processes
    finally:
        if not redis_server.running:
            redis_server.start()
        await mem.close()
