"""The online compressor: batching across streams, an event loop that never blocks, bounded queues.

The encoder here is `helpers.ColourEncoder`, a small deterministic stand-in (per-clip mean colours
tiled to [T, C]), so a test can tell exactly which clip became which tokens and can make encoding as
slow as it likes. The real tiny encoder runs in tests/test_ingest.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from helpers import ColourEncoder, ListMemory

from flashlive.stream.clips import PendingClip
from flashlive.stream.compressor import Compressor, CompressorClosed, StreamRejected
from flashlive.stream.metrics import Metrics
from flashlive.stream.sampler import Sampler
from flashlive.stream.settings import IngestSettings


def pending(stream: str, t: float, value: int, step: float = 1.0, real: int = 4) -> PendingClip:
    frames = np.full((4, 16, 16, 3), value, np.uint8)
    times = [t + i * step for i in range(real)]
    return PendingClip(stream, frames, times, times, [1000.0 + x for x in times], step)


async def test_clip_fields_tokens_and_thumbnail() -> None:
    mem, enc = ListMemory(), ColourEncoder()
    comp = Compressor(enc, mem)
    comp.register("cam", policy="wait")
    await comp.submit(pending("cam", 8.0, 77, real=3))
    await comp.drain("cam")
    (clip,) = mem.clips
    assert (clip.stream, clip.start, clip.end, clip.frames) == ("cam", 8.0, 11.0, 3)
    assert clip.wall_start == 1008.0 and clip.encoder_id == "test-colour/v1"
    assert clip.tokens.shape == (8, 4) and clip.tokens.dtype == np.float16
    assert clip.tokens[0].tolist() == [77, 77, 77, 4]
    assert clip.thumbnail[:2] == b"\xff\xd8"
    assert clip.extra["sample_fps"] == "1"
    assert comp.metrics.stream("cam").clips == 1
    assert enc.threads and all(name.startswith("encode-cpu") for name in enc.threads)
    await comp.close()


async def test_batches_mix_streams_round_robin() -> None:
    mem, enc = ListMemory(), ColourEncoder()
    enc.gate = threading.Event()
    comp = Compressor(enc, mem, settings=IngestSettings(max_batch=8))
    for name in ("a", "b", "c"):
        comp.register(name, policy="wait", max_pending=8)
    await comp.submit(pending("a", 0.0, 1))  # taken alone: the encoder then blocks on the gate
    await asyncio.sleep(0.05)
    for k in range(3):  # meanwhile a, b and c each complete three clips
        for i, name in enumerate(("a", "b", "c")):
            await comp.submit(pending(name, 4.0 + 4 * k, 10 * (i + 1) + k))
    enc.gate.set()
    await comp.drain()
    assert enc.batches[0] == [1]
    # the waiting clips, interleaved a, b, c, in batches of at most max_batch
    assert enc.batches[1] == [10, 20, 30, 11, 21, 31, 12, 22]
    assert enc.batches[2] == [32]
    for name in ("a", "b", "c"):
        starts = [c.start for c in mem.of(name)]
        assert starts == sorted(starts)
    assert len(mem.clips) == 10
    await comp.close()


async def test_frames_of_different_sizes_are_batched_separately() -> None:
    mem, enc = ListMemory(), ColourEncoder()
    enc.gate = threading.Event()
    comp = Compressor(enc, mem)
    comp.register("small", policy="wait")
    comp.register("big", policy="wait")
    await comp.submit(pending("small", 0.0, 1))
    await asyncio.sleep(0.05)
    await comp.submit(pending("small", 4.0, 2))
    big = pending("big", 0.0, 3)
    big.frames = np.full((4, 32, 48, 3), 3, np.uint8)
    await comp.submit(big)
    enc.gate.set()
    await comp.drain()
    assert sorted(map(sorted, enc.batches)) == [[1], [2], [3]]
    await comp.close()


async def test_event_loop_keeps_running_while_encoding() -> None:
    mem, enc = ListMemory(), ColourEncoder(delay=0.4)
    comp = Compressor(enc, mem)
    comp.register("cam", policy="wait")
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        for _ in range(60):
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    for k in range(2):
        await comp.submit(pending("cam", 4.0 * k, k))
    await comp.drain()
    await tick
    assert len(mem.clips) == 2
    assert max(gaps) < 0.15  # an encode of 0.4 s on the loop would show as a 0.4 s gap


async def test_skip_policy_bounds_the_queue_and_counts_drops() -> None:
    mem, enc = ListMemory(), ColourEncoder(delay=0.05)
    metrics = Metrics()
    comp = Compressor(enc, mem, metrics, settings=IngestSettings(max_batch=1))
    comp.register("cam", policy="skip", max_pending=3)
    seen_pending, seen_lag = [], []
    for k in range(40):  # clips arrive every 5 ms, the encoder needs 50 ms each
        await comp.submit(pending("cam", 4.0 * k, k))
        m = metrics.stream("cam")
        seen_pending.append(len(comp.queues["cam"].clips))
        seen_lag.append(m.lag_s)
        await asyncio.sleep(0.005)
    await comp.drain()
    m = metrics.stream("cam")
    assert max(seen_pending) <= 3
    assert m.dropped_clips > 0 and m.clips + m.dropped_clips == 40
    assert max(seen_lag) > 0.0
    starts = [c.start for c in mem.clips]
    assert starts == sorted(starts) and starts[-1] == 4.0 * 39  # the freshest clip survives
    assert m.pending_clips == 0 and m.lag_s == 0.0
    await comp.close()


async def test_lower_fps_policy_reduces_then_restores_the_rate() -> None:
    mem, enc = ListMemory(), ColourEncoder(delay=0.05)
    comp = Compressor(enc, mem, settings=IngestSettings(max_batch=1))
    sampler = Sampler(1.0)
    comp.register("cam", policy="lower_fps", max_pending=4, sampler=sampler, min_fps=0.25)
    rates = []
    for k in range(30):
        await comp.submit(pending("cam", 4.0 * k, k))
        rates.append(sampler.fps)
        assert len(comp.queues["cam"].clips) <= 4
        await asyncio.sleep(0.002)
    assert min(rates) == 0.25  # halved step by step down to the floor, never below
    assert rates == sorted(rates, reverse=True)
    await comp.drain()
    for k in range(30, 50):  # now the encoder keeps up: the rate comes back
        await comp.submit(pending("cam", 4.0 * k, k))
        await comp.drain()
    assert sampler.fps == 1.0
    assert comp.metrics.stream("cam").sample_fps == 1.0
    await comp.close()


async def test_wait_policy_loses_nothing_and_blocks_the_producer() -> None:
    mem, enc = ListMemory(), ColourEncoder(delay=0.02)
    comp = Compressor(enc, mem, settings=IngestSettings(max_batch=2))
    comp.register("file", policy="wait", max_pending=2)
    for k in range(12):
        await comp.submit(pending("file", 4.0 * k, k))
        assert len(comp.queues["file"].clips) <= 2
    await comp.drain()
    assert [c.start for c in mem.clips] == [4.0 * k for k in range(12)]
    assert comp.metrics.stream("file").dropped_clips == 0
    await comp.close()


async def test_encoder_failure_and_store_outage_do_not_stop_the_compressor() -> None:
    mem, enc = ListMemory(), ColourEncoder(fail_on=5)
    comp = Compressor(enc, mem, settings=IngestSettings(max_batch=1))
    comp.register("cam", policy="wait")
    await comp.submit(pending("cam", 0.0, 5))
    await comp.drain()
    m = comp.metrics.stream("cam")
    assert m.errors == 1 and "synthetic encoder failure" in m.last_error
    mem.fail = 2  # two failed appends, then the store is back: the clip is retried, not lost
    await comp.submit(pending("cam", 4.0, 6))
    await comp.drain()
    assert [c.start for c in mem.clips] == [4.0] and m.clips == 1
    await comp.close()
    with pytest.raises(CompressorClosed):
        await comp.submit(pending("cam", 8.0, 7))


class BuggyEncoder(ColourEncoder):
    """An encoder with a bug (not a bad batch): a TypeError, which the compressor does not swallow."""

    def encode(self, clips: np.ndarray) -> np.ndarray:
        raise TypeError("unsupported operand type(s)")


async def test_a_bug_in_encoding_stops_every_stream_with_the_error(caplog: pytest.LogCaptureFixture) -> None:
    comp = Compressor(BuggyEncoder(), ListMemory())
    comp.register("a", policy="wait")
    comp.register("b", policy="skip")
    await comp.submit(pending("a", 0.0, 1))
    await asyncio.wait_for(comp.drain(), 5)  # returns: nothing will be encoded any more
    for name in ("a", "b"):
        with pytest.raises(StreamRejected, match="internal error in the compressor: TypeError"):
            await comp.submit(pending(name, 4.0, 2))
    assert "the compressor failed" in caplog.text and "unsupported operand" in caplog.text
    await asyncio.wait_for(comp.close(), 5)


async def test_register_takes_its_defaults_from_the_settings() -> None:
    settings = IngestSettings(policy="skip", max_pending_clips=3, min_fps=0.5, fps=2.0)
    comp = Compressor(ColourEncoder(), ListMemory(), settings=settings)
    q = comp.register("x")
    assert (q.policy, q.max_pending, q.min_fps, q.target_fps) == ("skip", 3, 0.5, 2.0)
    assert comp.max_batch == settings.max_batch and comp.thumbnail_width == settings.thumbnail_width
    await comp.close()


async def test_register_checks_its_arguments() -> None:
    comp = Compressor(ColourEncoder(), ListMemory())
    with pytest.raises(ValueError, match="policy"):
        comp.register("x", policy="drop-everything")  # type: ignore[arg-type]
    comp.register("x")
    with pytest.raises(ValueError, match="already registered"):
        comp.register("x")
    with pytest.raises(KeyError, match="not registered"):
        await comp.submit(pending("y", 0.0, 1))
    await comp.close()
