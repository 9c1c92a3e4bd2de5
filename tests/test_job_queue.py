"""The job queue against a real redis-server: submit/read/ack, attempts, idempotent terminal records,
cancel, reclaiming from dead or frozen consumers, the result reader (late, resumed, blocking)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from helpers import unique_prefix

from flashlive.memory.jobs import BeginStatus, CancelStatus, JobQueue, WorkerInfo, WriteStatus
from flashlive.memory.messages import AskJob, ErrorCode, ErrorRecord, FinalRecord, Piece, Timings, Window
from flashlive.memory.results import AnswerText, ResultTimeoutError, UnknownJobError, collect, read_results
from flashlive.memory.server import RedisServer


@pytest.fixture
async def queue(redis_server: RedisServer) -> AsyncIterator[JobQueue]:
    q = JobQueue.from_url(redis_server.url, prefix=unique_prefix("q"), result_ttl=60)
    yield q
    await q.close()


def final(job: AskJob, attempt: int, answer: str = "done") -> FinalRecord:
    return FinalRecord(
        job=job.id, attempt=attempt, stream=job.stream, question=job.question, answer=answer,
        finish_reason="stop", window=job.window, used_start=0, used_end=4, clips=[], frames=4,
        visual_tokens=[64], prompt_tokens=80, new_tokens=1, dropout=None, timings=Timings(), evidence=[],
        worker="w", model="fake",
    )  # fmt: skip


async def records(queue: JobQueue, job: str, timeout: float = 5.0) -> list[object]:
    out, _ = await collect(queue.client, job, prefix=queue.prefix, timeout=timeout)
    return list(out)


async def test_submit_read_begin_write_ack(queue: JobQueue) -> None:
    job = AskJob(stream="cam", question="what?", window=Window(last=60))
    await queue.submit(job)
    assert (await queue.depth()).waiting == 1
    [d] = await queue.read("w1", block=0.5)
    assert AskJob.model_validate_json(d.raw or b"") == job
    assert (await queue.depth()).running == 1
    status, attempt = await queue.begin(job.id, "w1", job.deadline)
    assert (status, attempt) == (BeginStatus.RUN, 1)
    for i, text in enumerate(["Hel", "lo"]):
        assert (
            await queue.piece(Piece(job=job.id, attempt=1, seq=i, text=text), job.deadline) == WriteStatus.OK
        )
    written, rid = await queue.finish(final(job, 1, "Hello"))
    assert written and rid
    await queue.ack(d.entry_id)
    assert await queue.depth() == type(await queue.depth())(waiting=0, running=0)
    assert await queue.client.xlen(queue.key) == 0  # acked jobs are deleted
    recs = await records(queue, job.id)
    assert [type(r).__name__ for r in recs] == ["Piece", "Piece", "FinalRecord"]
    st = await queue.status(job.id)
    assert st is not None and st.status == "done" and st.final == rid and st.attempt == 1
    # a second run of the same job (a redelivery) finds it finished and writes nothing
    assert (await queue.begin(job.id, "w2", job.deadline))[0] == BeginStatus.FINISHED
    assert await queue.finish(final(job, 1, "again")) == (False, rid)
    assert len(await records(queue, job.id)) == 3


async def test_superseded_attempt_cannot_write_and_the_reader_keeps_the_latest(queue: JobQueue) -> None:
    job = AskJob(stream="cam", question="q")
    await queue.submit(job)
    _, a1 = await queue.begin(job.id, "frozen", job.deadline)
    await queue.piece(Piece(job=job.id, attempt=a1, seq=0, text="The cat"), job.deadline)
    _, a2 = await queue.begin(job.id, "rescuer", job.deadline)  # reclaimed by another worker
    assert a2 == a1 + 1
    await queue.piece(Piece(job=job.id, attempt=a2, seq=0, text="A dog"), job.deadline)
    # the frozen worker wakes up: every write of its attempt is refused
    assert await queue.piece(Piece(job=job.id, attempt=a1, seq=1, text=" sat"), job.deadline) == (
        WriteStatus.SUPERSEDED
    )
    assert await queue.finish(final(job, a1, "The cat sat")) == (False, "")
    await queue.piece(Piece(job=job.id, attempt=a2, seq=1, text=" runs"), job.deadline)
    assert (await queue.finish(final(job, a2, "A dog runs")))[0]
    text = AnswerText()
    shown = ""
    for rec in await records(queue, job.id):
        if isinstance(rec, Piece):
            delta = text.add(rec)
            shown = delta if text.reset else shown + delta
    assert text.text == shown == "A dog runs" and text.attempt == a2
    terminal = [r for r in await records(queue, job.id) if not isinstance(r, Piece)]
    assert len(terminal) == 1 and isinstance(terminal[0], FinalRecord) and terminal[0].attempt == a2


async def test_concurrent_finishes_write_exactly_one_terminal_record(queue: JobQueue) -> None:
    job = AskJob(stream="cam", question="q")
    await queue.submit(job)
    _, attempt = await queue.begin(job.id, "w", job.deadline)
    err = ErrorRecord(job=job.id, code=ErrorCode.DEADLINE_EXCEEDED, message="late")
    results = await asyncio.gather(*[queue.finish(final(job, attempt)) for _ in range(5)], queue.finish(err))
    assert sum(written for written, _ in results) == 1
    assert len({rid for _, rid in results}) == 1
    recs = await records(queue, job.id)
    assert len(recs) == 1


async def test_cancel_queued_job_is_answered_at_once(queue: JobQueue) -> None:
    job = AskJob(stream="cam", question="q")
    await queue.submit(job)
    assert await queue.cancel(job.id) == CancelStatus.CANCELLED
    [rec] = await records(queue, job.id)
    assert isinstance(rec, ErrorRecord) and rec.code == ErrorCode.CANCELLED
    [d] = await queue.read("w", block=0.5)
    assert (await queue.begin(job.id, "w", job.deadline))[0] == BeginStatus.FINISHED
    await queue.ack(d.entry_id)
    assert await queue.cancel(job.id) == CancelStatus.FINISHED
    assert await queue.cancel("no-such-job") == CancelStatus.UNKNOWN


async def test_cancel_running_job_signals_its_worker(queue: JobQueue) -> None:
    job = AskJob(stream="cam", question="q")
    await queue.submit(job)
    _, attempt = await queue.begin(job.id, "w", job.deadline)
    assert await queue.cancel(job.id) == CancelStatus.SIGNALLED
    assert await queue.cancelled([job.id, "other"]) == {job.id}
    assert await queue.piece(Piece(job=job.id, attempt=attempt, seq=0, text="x"), job.deadline) == (
        WriteStatus.CANCELLED
    )
    rec = ErrorRecord(job=job.id, attempt=attempt, code=ErrorCode.CANCELLED, message="cancelled")
    assert (await queue.finish(rec))[0]


async def test_expired_job_is_not_started(queue: JobQueue) -> None:
    job = AskJob(stream="cam", question="q", submitted=time.time() - 10, deadline=time.time() - 1)
    await queue.submit(job)
    assert await queue.begin(job.id, "w", job.deadline) == (BeginStatus.EXPIRED, 0)


async def test_reclaim_takes_only_jobs_whose_worker_stopped_touching(queue: JobQueue) -> None:
    jobs = [AskJob(stream="cam", question=f"q{i}") for i in range(2)]
    for job in jobs:
        await queue.submit(job)
    alive = await queue.read("alive", count=1, block=0.5)
    dead = await queue.read("dead", count=1, block=0.5)
    await asyncio.sleep(0.4)
    assert await queue.touch("alive", [alive[0].entry_id]) == [alive[0].entry_id]
    taken = await queue.reclaim("rescuer", lease=0.3, count=10)
    assert [d.entry_id for d in taken] == [dead[0].entry_id]
    assert taken[0].deliveries == 2
    # the dead consumer, if it comes back, no longer owns the entry and must not take it back
    assert await queue.touch("dead", [dead[0].entry_id]) == []
    assert await queue.reclaim("other", lease=0.3, count=10) == []


async def test_reading_late_resuming_and_timing_out(queue: JobQueue) -> None:
    job = AskJob(stream="cam", question="q")
    await queue.submit(job)
    _, attempt = await queue.begin(job.id, "w", job.deadline)

    async def produce() -> None:
        for i in range(4):
            await asyncio.sleep(0.05)
            await queue.piece(Piece(job=job.id, attempt=attempt, seq=i, text=str(i)), job.deadline)
        await queue.finish(final(job, attempt, "0123"))

    seen: list[tuple[str, object]] = []
    producer = asyncio.create_task(produce())
    async for rid, rec in read_results(queue.client, job.id, prefix=queue.prefix, timeout=5):
        seen.append((rid, rec))
        if len(seen) == 2:
            break  # the viewer's connection drops here
    async for rid, rec in read_results(
        queue.client, job.id, prefix=queue.prefix, after=seen[-1][0], timeout=5
    ):
        seen.append((rid, rec))
    await producer
    texts = [r.text for _, r in seen if isinstance(r, Piece)]
    assert texts == ["0", "1", "2", "3"] and isinstance(seen[-1][1], FinalRecord)
    # a viewer that connects after the end reads everything from the start
    assert len(await records(queue, job.id)) == 5
    with pytest.raises(UnknownJobError):
        async for _ in read_results(queue.client, "never-submitted", prefix=queue.prefix, timeout=1):
            pass
    silent = AskJob(stream="cam", question="q")
    await queue.submit(silent)
    t0 = time.monotonic()
    with pytest.raises(ResultTimeoutError):
        async for _ in read_results(queue.client, silent.id, prefix=queue.prefix, timeout=0.3, block=0.1):
            pass
    assert time.monotonic() - t0 < 2


async def test_heartbeats_list_live_workers_only(queue: JobQueue) -> None:
    await queue.heartbeat(WorkerInfo(name="w-a", concurrency=2), ttl=10)
    await queue.heartbeat(WorkerInfo(name="w-b"), ttl=0.2)
    assert [w.name for w in await queue.workers()] == ["w-a", "w-b"]
    await asyncio.sleep(0.3)
    assert [w.name for w in await queue.workers()] == ["w-a"]
    await queue.forget_worker("w-a")
    assert await queue.workers() == []
