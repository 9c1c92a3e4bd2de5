"""Failover between two real worker processes (fake engine): the worker holding a job is frozen
(SIGSTOP) or killed (SIGKILL) mid-answer, the other finishes it, the viewer gets exactly one final
record, and the frozen worker, woken up, writes nothing more. Watch ticks fail over the same way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from fake_engine import ENCODER_ID
from helpers import unique_prefix

from flashlive.memory.events import EventLog
from flashlive.memory.jobs import JobQueue
from flashlive.memory.messages import AskJob, ErrorRecord, FinalRecord, Piece, Watch
from flashlive.memory.results import AnswerText, Record, read_results
from flashlive.memory.server import RedisServer
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip
from flashlive.memory.watches import TickScheduler, WatchStore

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "worker_proc.py"
STEP_S, LENGTH = 0.03, 60  # about 2 s per answer: long enough to be caught mid-way


class Procs:
    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, step_s: float = STEP_S) -> None:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), self.url, self.prefix, name, str(step_s), str(LENGTH)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"ready", line
        self.procs[name] = proc

    def signal(self, name: str, sig: int) -> None:
        os.kill(self.procs[name].pid, sig)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def procs(redis_server: RedisServer) -> Iterator[Procs]:
    p = Procs(redis_server.url, unique_prefix("f"))
    yield p
    p.stop_all()


@pytest.fixture
async def queue(procs: Procs) -> AsyncIterator[JobQueue]:
    q = JobQueue.from_url(procs.url, prefix=procs.prefix)
    yield q
    await q.close()


async def owner_of(queue: JobQueue, job: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = await queue.status(job)
        if st is not None and st.owner:
            return st.owner
        await asyncio.sleep(0.02)
    raise AssertionError(f"nobody started job {job}")


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL])
async def test_the_other_worker_finishes_a_job_whose_worker_froze_or_died(
    procs: Procs, queue: JobQueue, sig: int
) -> None:
    memory = VideoMemory.from_url(procs.url, prefix=procs.prefix)
    for i in range(3):
        await memory.append(Clip("cam", 4.0 * i, 4.0 * i + 4, 4, np.zeros((64, 8), np.float16), ENCODER_ID))
    await memory.close()
    procs.start("w-a")
    procs.start("w-b")
    job = AskJob(stream="cam", question="tell me everything")
    await queue.submit(job)
    first = await owner_of(queue, job.id)
    other = "w-b" if first == "w-a" else "w-a"
    records: list[tuple[str, Record]] = []
    reader = read_results(queue.client, job.id, prefix=queue.prefix, timeout=20)
    async for rid, rec in reader:  # wait until it is mid-answer
        records.append((rid, rec))
        if isinstance(rec, Piece) and rec.seq >= 5:
            break
    procs.signal(first, sig)
    async for rid, rec in read_results(
        queue.client, job.id, prefix=queue.prefix, after=records[-1][0], timeout=20
    ):
        records.append((rid, rec))
    terminal = [r for _, r in records if isinstance(r, FinalRecord | ErrorRecord)]
    assert len(terminal) == 1 and isinstance(terminal[0], FinalRecord), terminal
    final = terminal[0]
    assert final.worker == other and final.attempt == 2
    text = AnswerText()
    for _, rec in records:
        if isinstance(rec, Piece):
            text.add(rec)
    assert text.text == final.answer and text.attempt == 2
    whole = "3 clips from 0 to 12." + "".join(f" w{i}" for i in range(LENGTH - 3))
    assert final.answer == whole  # the whole answer, not the rest of one
    if sig == signal.SIGSTOP:
        procs.signal(first, signal.SIGCONT)  # it wakes up mid-answer: its writes are refused
        await asyncio.sleep(1.5)
    everything = [rec async for _, rec in read_results(queue.client, job.id, prefix=queue.prefix, timeout=5)]
    assert [type(r) for r in everything] == [type(r) for _, r in records]
    deadline = time.monotonic() + 10  # the worker acks right after its final record: give it a moment
    while (depth := await queue.depth()).waiting or depth.running:
        assert time.monotonic() < deadline, depth
        await asyncio.sleep(0.02)
    # and the survivor goes on serving
    nxt = AskJob(stream="cam", question="and now?")
    await queue.submit(nxt)
    last = [rec async for _, rec in read_results(queue.client, nxt.id, prefix=queue.prefix, timeout=20)][-1]
    assert isinstance(last, FinalRecord)


async def test_watch_ticks_fail_over_without_repeats_or_gaps(procs: Procs) -> None:
    memory = VideoMemory.from_url(procs.url, prefix=procs.prefix)
    store = WatchStore(memory.client, prefix=procs.prefix)
    ticks = TickScheduler(memory.client, prefix=procs.prefix)

    async def append(i: int, score: float) -> None:
        tokens = np.full((64, 8), score, np.float16)
        await memory.append(Clip("door", 4.0 * i, 4.0 * i + 4, 4, tokens, ENCODER_ID))

    async def evaluated(i: int) -> None:
        deadline = time.monotonic() + 20
        while (await ticks.lag("door")).evaluated_end != 4.0 * i + 4:
            assert time.monotonic() < deadline, await ticks.lag("door")
            await asyncio.sleep(0.05)

    try:
        await append(0, 0.0)
        await store.add(Watch(stream="door", condition="someone", window=4, threshold=0.5, cooldown=0))
        procs.start("w-a", step_s=0.0)
        procs.start("w-b", step_s=0.0)
        await evaluated(0)
        scores = [0.9, 0.9, 0.1, 0.9, 0.1, 0.1, 0.9]
        for i, score in enumerate(scores[:3], start=1):
            await append(i, score)
            await evaluated(i)
        procs.signal("w-a", signal.SIGKILL)
        for i, score in enumerate(scores[3:], start=4):
            await append(i, score)
            await evaluated(i)
        events = await EventLog(memory.client, prefix=procs.prefix).read("door")
        kinds = [(e.kind, e.clip_start) for _, e in events]
        assert kinds == [
            ("start", 4.0),
            ("update", 8.0),
            ("end", 12.0),
            ("start", 16.0),
            ("end", 20.0),
            ("start", 28.0),
        ]
        lag = await ticks.lag("door")
        assert lag.evaluated == 8 and lag.failed == 0 and lag.skipped == 0
    finally:
        await memory.close()
