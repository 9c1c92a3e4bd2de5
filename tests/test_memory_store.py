"""VideoMemory against a real redis-server: append, windows, budgets, replay, guards and bad requests."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from helpers import unique_prefix
from pydantic import ValidationError

from flashlive.config import FlashliveConfig
from flashlive.memory.errors import (
    CorruptEntryError,
    EncoderMismatchError,
    InvalidClipError,
    InvalidRequestError,
    OutOfOrderClipError,
    RangeOutsideMemoryError,
    UnknownStreamError,
)
from flashlive.memory.keys import StreamKeys
from flashlive.memory.sampling import MAX_BUDGET, uniform_indices
from flashlive.memory.server import RedisServer
from flashlive.memory.settings import RedisSettings, Retention
from flashlive.memory.store import AppendStatus, VideoMemory
from flashlive.memory.types import Clip, IngestCounters, StreamState

ENC = "tiny@224/tome16_mlp_hd64"
CLIP_S = 4.0  # one 4-frame clip per 4 s at 1 fps


def make_clip(stream: str, i: int, shape: tuple[int, ...] = (64, 8), encoder: str = ENC) -> Clip:
    # Each clip's tokens encode its index, so a wrong or shuffled clip is visible in the values.
    tokens = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 97 + i % 1000).astype(np.float16)
    return Clip(stream, i * CLIP_S, i * CLIP_S + CLIP_S, 4, tokens, encoder, thumbnail=f"t{i}".encode())


def index_of(clip: Clip) -> int:
    return round(clip.start / CLIP_S)


@pytest.fixture(scope="module")
def ten_thousand(redis_server: RedisServer) -> str:
    """A prefix holding stream 'cam' with 10,000 clips (appended once for the module)."""
    import asyncio

    prefix = f"big{uuid.uuid4().hex[:8]}"

    async def fill() -> None:
        mem = VideoMemory.from_url(redis_server.url, prefix=prefix)
        for i in range(10_000):
            assert await mem.append(make_clip("cam", i)) == AppendStatus.STORED
        await mem.close()

    asyncio.run(fill())
    return prefix


@pytest.fixture
async def big(redis_server: RedisServer, ten_thousand: str) -> AsyncIterator[VideoMemory]:
    mem = VideoMemory.from_url(redis_server.url, prefix=ten_thousand)
    yield mem
    await mem.close()


@pytest.mark.slow
async def test_ten_thousand_clips_windows_and_replay(big: VideoMemory) -> None:
    stats = await big.stats("cam")
    assert (stats.clips, stats.first_start, stats.last_end) == (10_000, 0.0, 40_000.0)
    assert stats.bytes == sum(64 * 8 * 2 + len(f"t{i}".encode()) for i in range(10_000))

    everything = await big.read_window("cam", encoder_id=ENC)
    assert [index_of(c) for c in everything] == list(range(10_000))
    for c in everything[::997]:
        i = index_of(c)
        assert (c.start, c.end, c.frames, c.stream, c.encoder_id) == (i * 4.0, i * 4.0 + 4.0, 4, "cam", ENC)
        np.testing.assert_array_equal(c.tokens, make_clip("cam", i).tokens)
        assert c.tokens.dtype == np.float16

    # [start, end) on clip start: 1000 s .. 1400 s holds clips 250..349
    window = await big.read_window("cam", encoder_id=ENC, start=1000.0, end=1400.0)
    assert [index_of(c) for c in window] == list(range(250, 350))
    # a start between clip starts takes the next clip; the end is exclusive
    window = await big.read_window("cam", encoder_id=ENC, start=1001.5, end=1004.0)
    assert window == []
    # last N seconds before the newest clip's end (40,000 s)
    window = await big.read_window("cam", encoder_id=ENC, last=60.0)
    assert [index_of(c) for c in window] == list(range(9985, 10_000))

    replayed = [index_of(c) async for c in big.replay("cam", 3000.0, 7000.0, encoder_id=ENC, batch=33)]
    assert replayed == list(range(750, 1750))
    infos = [i async for i in big.replay_info("cam", 0.0, 80.0, batch=7, thumbnails=True)]
    assert [(i.start, i.thumbnail) for i in infos] == [(k * 4.0, f"t{k}".encode()) for k in range(20)]
    listed = await big.list_clips("cam", start=39_990.0)
    assert [c.start for c in listed] == [39_992.0, 39_996.0]


@pytest.mark.slow
async def test_budget_is_uniform_deterministic_and_spans(big: VideoMemory) -> None:
    first = await big.read_window("cam", encoder_id=ENC, start=4000.0, end=20_000.0, budget=128)
    again = await big.read_window("cam", encoder_id=ENC, start=4000.0, end=20_000.0, budget=128)
    got = [index_of(c) for c in first]
    assert got == [index_of(c) for c in again]
    assert len(got) == 128 and got == sorted(set(got))
    assert (got[0], got[-1]) == (1000, 4999)  # spans the whole window
    assert got == [1000 + k for k in uniform_indices(4000, 128)]
    gaps = np.diff(got)
    assert gaps.max() - gaps.min() <= 1  # evenly spread
    # a budget larger than the window returns the whole window
    small = await big.read_window("cam", encoder_id=ENC, start=0.0, end=40.0, budget=1000)
    assert [index_of(c) for c in small] == list(range(10))
    one = await big.read_window("cam", encoder_id=ENC, last=400.0, budget=1)
    assert [index_of(c) for c in one] == [9900]


def test_uniform_indices_formula() -> None:
    for n, k in [(10, 3), (100, 7), (9000, 128), (5, 5), (3, 10), (2, 1)]:
        idx = uniform_indices(n, k)
        assert idx == sorted(set(idx)) and len(idx) == min(n, k)
        assert idx[0] == 0 and (k == 1 or idx[-1] == n - 1)
        close = np.linspace(0, n - 1, min(n, k)).astype(int)
        assert np.abs(np.array(idx) - close).max() <= 1  # linspace up to its float rounding


async def test_real_size_tokens_round_trip(memory: VideoMemory) -> None:
    rng = np.random.default_rng(0)
    clips = []
    for i in range(20):
        tokens = rng.standard_normal((64, 1024)).astype(np.float16)
        clips.append(Clip("real", 100.0 + 4 * i, 104.0 + 4 * i, 4, tokens, ENC, b"\xff\xd8" + bytes(5000)))
        await memory.append(clips[-1])
    got = await memory.read_window("real", encoder_id=ENC, thumbnails=True)
    assert len(got) == 20
    for want, have in zip(clips, got, strict=True):
        assert have.tokens.shape == (64, 1024) and have.tokens.dtype == np.float16
        np.testing.assert_array_equal(have.tokens, want.tokens)
        assert (have.start, have.end, have.thumbnail) == (want.start, want.end, want.thumbnail)
    stats = await memory.stats("real")
    assert stats.bytes == 20 * (64 * 1024 * 2 + 5002)
    # float32 tokens from an encoder are stored as fp16
    wide = Clip("real", 500.0, 504.0, 4, rng.standard_normal((64, 1024)).astype(np.float32), ENC)
    await memory.append(wide)
    back = await memory.read_window("real", encoder_id=ENC, start=500.0)
    np.testing.assert_array_equal(back[0].tokens, wide.tokens.astype(np.float16))


async def test_duplicates_and_order(memory: VideoMemory) -> None:
    assert await memory.append(make_clip("a", 0)) == AppendStatus.STORED  # start 0 s is a valid id
    assert await memory.append(make_clip("a", 1)) == AppendStatus.STORED
    assert await memory.append(make_clip("a", 1)) == AppendStatus.DUPLICATE
    assert await memory.append(make_clip("a", 0)) == AppendStatus.DUPLICATE
    with pytest.raises(OutOfOrderClipError, match="time order"):
        await memory.append(Clip("a", 2.0, 3.0, 4, np.zeros((64, 8), np.float16), ENC))
    other = make_clip("a", 1)
    other.end += 1.0
    with pytest.raises(OutOfOrderClipError, match="different clip"):
        await memory.append(other)
    stats = await memory.stats("a")
    assert (stats.clips, stats.duplicates) == (2, 2)


async def test_encoder_guard(memory: VideoMemory) -> None:
    await memory.append(make_clip("cam", 0))
    with pytest.raises(EncoderMismatchError) as info:
        await memory.read_window("cam", encoder_id="other-model@448")
    assert ENC in str(info.value) and "other-model@448" in str(info.value)
    with pytest.raises(EncoderMismatchError):
        [c async for c in memory.replay("cam", encoder_id="other-model@448")]
    with pytest.raises(EncoderMismatchError, match="other-model"):
        await memory.append(make_clip("cam", 1, encoder="other-model@448"))
    assert (await memory.stats("cam")).clips == 1
    # an entry written behind the memory's back with another encoder id is refused too
    keys = memory.keys("cam")
    await memory.append(make_clip("cam", 1))
    await memory.client.xadd(keys.clips, {b"enc": b"rogue"} | await _fields(memory, keys), id="99000-1")
    await memory.client.hset(keys.tokens, "99000-1", make_clip("cam", 2).tokens.tobytes())
    with pytest.raises(EncoderMismatchError, match="rogue"):
        await memory.read_window("cam", encoder_id=ENC)


async def _fields(memory: VideoMemory, keys: StreamKeys) -> dict[Any, Any]:
    entries: Any = await memory.client.xrange(keys.clips, "-", "+", count=1)
    fields = dict(entries[0][1])
    fields.pop(b"enc")
    return fields


async def test_bad_requests_leave_everything_untouched(memory: VideoMemory) -> None:
    for i in range(10):
        await memory.append(make_clip("good", i))
        await memory.append(make_clip("other", i))
    before = await memory.stats("other")

    with pytest.raises(UnknownStreamError, match="nope"):
        await memory.read_window("nope", encoder_id=ENC)
    with pytest.raises(UnknownStreamError):
        await memory.stats("nope")
    with pytest.raises(UnknownStreamError):
        await memory.delete("nope")
    assert await memory.delete("nope", missing_ok=True) is False
    with pytest.raises(InvalidRequestError, match=r"start .* after end"):
        await memory.read_window("good", encoder_id=ENC, start=20.0, end=10.0)
    with pytest.raises(RangeOutsideMemoryError, match=r"holds clips starting from 0.0 to before 40.0"):
        await memory.read_window("good", encoder_id=ENC, start=1000.0, end=2000.0)
    with pytest.raises(RangeOutsideMemoryError):
        [c async for c in memory.replay_info("good", 500.0, 600.0)]
    bad_budgets: list[Any] = [-1, 0, MAX_BUDGET + 1, 10**12, 2.5, True]
    for budget in bad_budgets:
        with pytest.raises(InvalidRequestError, match="budget"):
            await memory.read_window("good", encoder_id=ENC, budget=budget)
    for kwargs in ({"last": -5.0}, {"start": float("nan")}, {"last": 10.0, "start": 1.0}, {"end": "soon"}):
        with pytest.raises(InvalidRequestError):
            await memory.read_window("good", encoder_id=ENC, **kwargs)
    with pytest.raises(InvalidRequestError, match="encoder_id"):
        await memory.read_window("good", encoder_id="")
    bad_names: list[Any] = ["", "a b", "x{y}", "a:b", "-x", "n" * 200, None]
    for name in bad_names:
        with pytest.raises(InvalidRequestError, match="stream name"):
            await memory.read_window(name, encoder_id=ENC)
    bad_clips = [
        Clip("good", 100.0, 99.0, 4, np.zeros((64, 8), np.float16), ENC),
        Clip("good", -4.0, 0.0, 4, np.zeros((64, 8), np.float16), ENC),
        Clip("good", float("inf"), 1e400, 4, np.zeros((64, 8), np.float16), ENC),
        Clip("good", 100.0, 104.0, 0, np.zeros((64, 8), np.float16), ENC),
        Clip("good", 100.0, 104.0, 4, np.zeros((0, 8), np.float16), ENC),
        Clip("good", 100.0, 104.0, 4, np.zeros((64, 8), np.int32), ENC),
        Clip("good", 100.0, 104.0, 4, np.zeros((64, 8), np.float16), ""),
        Clip("bad name", 100.0, 104.0, 4, np.zeros((64, 8), np.float16), ENC),
    ]
    for clip in bad_clips:
        with pytest.raises(InvalidClipError):
            await memory.append(clip)
    with pytest.raises(InvalidRequestError, match="state"):
        await memory.set_state("good", "exploded")
    with pytest.raises(InvalidRequestError, match="kept by the memory"):
        await memory.set_state("good", "live", bytes=0)

    good = await memory.read_window("good", encoder_id=ENC)
    assert [index_of(c) for c in good] == list(range(10))
    assert await memory.stats("other") == before
    assert await memory.streams() == ["good", "other"]


async def test_corrupt_entries_are_skipped_or_raised(
    memory: VideoMemory, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(6):
        await memory.append(make_clip("cam", i))
        await memory.append(make_clip("fine", i))
    keys = memory.keys("cam")
    await memory.client.hset(keys.tokens, "8000-1", b"short")  # clip 2
    await memory.client.hdel(keys.tokens, "12000-1")  # clip 3: missing
    with caplog.at_level(logging.ERROR, logger="flashlive.memory.store"):
        got = await memory.read_window("cam", encoder_id=ENC)
    assert [index_of(c) for c in got] == [0, 1, 4, 5]
    assert "69 token bytes, expected 1024" in caplog.text and "missing" in caplog.text
    with pytest.raises(CorruptEntryError, match="8000-1"):
        await memory.read_window("cam", encoder_id=ENC, strict=True)
    replayed = [index_of(c) async for c in memory.replay("cam", encoder_id=ENC, batch=2)]
    assert replayed == [0, 1, 4, 5]
    fine = await memory.read_window("fine", encoder_id=ENC, strict=True)
    assert [index_of(c) for c in fine] == list(range(6))


async def test_state_meta_delete(memory: VideoMemory) -> None:
    await memory.set_state(
        "door", "connecting", source="rtsp://admin:hunter2@10.0.0.5:554/live?token=abc&ch=1"
    )
    meta = await memory.meta("door")
    assert meta["state"] == "connecting"
    # the user, the password and the token are gone; the rest of the URL stays for the operator
    assert meta["source"] == "rtsp://***:***@10.0.0.5:554/live?token=***&ch=1"
    assert not any(secret in str(meta) for secret in ("hunter2", "admin", "abc"))
    with pytest.raises(RangeOutsideMemoryError, match="no clips yet"):
        await memory.read_window("door", encoder_id=ENC, last=60.0)
    await memory.set_state("door", "live", fps=1.0)
    await memory.append(make_clip("door", 0))
    stats = await memory.stats("door")
    assert (stats.state, stats.clips, stats.encoder_id) == ("live", 1, ENC)
    assert (await memory.meta("door"))["fps"] == "1.0"
    assert await memory.streams() == ["door"]
    assert await memory.delete("door") is True
    assert await memory.streams() == []
    assert await memory.client.exists(*memory.keys("door").all()) == 0
    with pytest.raises(UnknownStreamError):
        await memory.meta("door")
    # a deleted stream starts afresh, even with another encoder and earlier times
    await memory.append(make_clip("door", 0, encoder="new-model"))
    assert (await memory.stats("door")).encoder_id == "new-model"


async def test_retention_defaults_keep_everything_like_the_config(redis_server: RedisServer) -> None:
    r = Retention()
    assert (r.seconds, r.max_bytes) == (None, None) and r.script_args == (0, 0)
    assert FlashliveConfig().memory.retention == r  # one default: a memory built without settings agrees
    for bad in ({"seconds": -1.0}, {"seconds": 0}, {"seconds": float("inf")}, {"max_bytes": -5}):
        with pytest.raises(ValidationError, match=r"greater than 0|finite"):
            Retention.model_validate(bad)
    # a memory given no retention trims nothing, however old or large its clips
    mem = VideoMemory.from_settings(RedisSettings.from_dsn(redis_server.url, prefix=unique_prefix()))
    try:
        assert mem.retention == r
        for i in (0, 10_000, 10**6):  # up to 46 days apart
            await mem.append(make_clip("old", i))
        stats = await mem.stats("old")
        assert (stats.clips, stats.trimmed_clips) == (3, 0)
    finally:
        await mem.close()


async def test_status_and_metrics_are_read_by_another_client(redis_server: RedisServer) -> None:
    settings = RedisSettings.from_dsn(redis_server.url, prefix=unique_prefix())
    writer, reader = VideoMemory.from_settings(settings), VideoMemory.from_settings(settings)
    try:
        with pytest.raises(UnknownStreamError):
            await reader.status("lobby")
        counters = IngestCounters(frames_in=300, clips=7, dropped_clips=2, lag_s=1.25, sample_fps=0.5)
        await writer.set_state(
            "lobby",
            StreamState.RETRYING,
            since=1000.5,
            source="rtsp://u:pw@cam/1",
            error="lost",
            metrics=counters,
        )
        status = await reader.status("lobby")
        assert (status.state, status.since, status.error) == (StreamState.RETRYING, 1000.5, "lost")
        assert status.source == "rtsp://***:***@cam/1" and status.reported > status.since
        assert status.metrics == counters
        # a report without metrics (a stream that never got going) reads as zeros, not an error
        await writer.set_state("door", "connecting")
        assert (await reader.status("door")).metrics == IngestCounters()
        await writer.client.hset(writer.keys("door").meta, "metrics", "{broken")
        with pytest.raises(CorruptEntryError, match="door"):
            await reader.status("door")
    finally:
        await writer.close()
        await reader.close()
