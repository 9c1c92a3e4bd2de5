"""The query worker: takes ask jobs and watch ticks from Redis and runs them on an `Engine`.

One asyncio loop per process; each job's model work runs in its own thread (`bridge.ThreadedRun`),
at most `concurrency` at once (jobs and ticks share the slots). Around it, a few small loops:

- intake: XREADGROUP one job whenever a slot is free;
- reclaim: XAUTOCLAIM jobs of workers that stopped touching them (dead or frozen) for `lease` s;
- heartbeat: the worker's heartbeat key (TTL), a touch of every running job's delivery (so only
  jobs of stopped workers are reclaimed), the lease of every tick being evaluated; a job found taken
  over by another worker is stopped;
- cancels: one round trip every `cancel_poll` s for the running jobs' cancel flags;
- watches: claim the next tick of each watched stream (watching.py).

Nothing here dies with Redis: every loop waits out connection errors with a capped backoff and goes
on, and a job's writes are retried until its deadline. Bad jobs are answered with an error record
(see `_answer`) and the worker keeps serving. A stop (`stop()`, SIGTERM in the CLI) lets running jobs
finish for `drain` s, then hands the rest back to the queue for other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from flashlive.memory.cancellation import reraise_if_cancelling
from flashlive.memory.jobs import (
    DEFAULT_LEASE,
    MAX_DELIVERIES,
    WORKER_NAME,
    BeginStatus,
    Delivery,
    JobQueue,
    WorkerInfo,
    WriteStatus,
    default_worker_name,
)
from flashlive.memory.keys import DEFAULT_PREFIX, entry_id
from flashlive.memory.messages import (
    AskJob,
    Batching,
    ClipSpan,
    ErrorCode,
    ErrorRecord,
    Evidence,
    FinalRecord,
    MessageError,
    Piece,
    Timings,
    parse_job,
)
from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import CONNECTION_ERRORS, VideoMemory, make_client
from flashlive.memory.types import Clip
from flashlive.memory.watches import DEFAULT_TICK_LEASE, TickScheduler, WatchStore
from flashlive.model.worker.bridge import ThreadedRun
from flashlive.model.worker.engine import AnswerOutcome, Engine, EngineRequestError, EngineStopped
from flashlive.model.worker.watching import TickEvaluator
from flashlive.model.worker.windows import JobWindow, WindowRefused, read_job_window

log = logging.getLogger(__name__)

T = TypeVar("T")
WRITE_GRACE = 30.0  # s after a job's deadline during which its terminal record is still retried


@dataclass(frozen=True)
class WorkerSettings:
    """Timing and size of a worker. Defaults suit a GPU worker answering in seconds."""

    name: str = field(default_factory=default_worker_name)
    concurrency: int = 1  # jobs and watch ticks run at once
    heartbeat: float = 2.0  # s between heartbeats / touches of running jobs
    lease: float = DEFAULT_LEASE  # s a job may go untouched before other workers take it over
    block: float = 0.5  # s one XREADGROUP waits (also how long a free slot waits for ticks)
    cancel_poll: float = 0.25  # s between checks of running jobs' cancel flags
    watches: bool = True  # evaluate watch ticks too
    watch_poll: float = 0.5  # s between looks for new ticks when there were none
    tick_lease: float = DEFAULT_TICK_LEASE
    max_lag: float = 0.0  # s: watches this far behind skip to the newest clip (counted); 0 = never
    drain: float = 1.0  # s (from the stop) running jobs get to finish before they are handed back
    retry_max: float = 2.0  # s: the longest wait between retries while Redis is away

    def __post_init__(self) -> None:
        if not WORKER_NAME.match(self.name):
            raise ValueError(f"bad worker name {self.name!r}: letters, digits, '_', '.', ':', '-'")
        if not 1 <= self.concurrency <= 256:
            raise ValueError(f"concurrency must be 1 to 256, not {self.concurrency}")
        for what in ("heartbeat", "lease", "block", "cancel_poll", "watch_poll", "tick_lease", "retry_max"):
            if not getattr(self, what) > 0:
                raise ValueError(f"{what} must be > 0 seconds, not {getattr(self, what)}")
        if self.heartbeat * 2 > self.lease or self.heartbeat * 2 > self.tick_lease:
            raise ValueError(
                f"lease ({self.lease} s) and tick_lease ({self.tick_lease} s) must be at least twice the "
                f"heartbeat ({self.heartbeat} s), or running work is taken over while alive"
            )


@dataclass
class _Running:
    job: AskJob
    delivery: Delivery
    attempt: int
    stop: threading.Event = field(default_factory=threading.Event)
    reason: str = ""  # why it was stopped: cancelled | superseded | shutdown

    def halt(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        self.stop.set()

    def should_stop(self) -> bool:  # called by the engine's thread before each decode step
        return self.stop.is_set() or time.time() > self.job.deadline


class Worker:
    """Serve jobs and watch ticks until `stop()`. Build with `Worker.connect(engine, url)`."""

    def __init__(
        self,
        engine: Engine,
        memory: VideoMemory,
        queue: JobQueue,
        settings: WorkerSettings | None = None,
        *,
        watches: WatchStore | None = None,
        ticks: TickScheduler | None = None,
    ) -> None:
        self.engine = engine
        self.memory = memory
        self.queue = queue
        self.settings = settings or WorkerSettings()
        self.name = self.settings.name
        self.started = time.time()
        s = self.settings
        self.watch_store = watches or WatchStore(memory.client, prefix=memory.prefix)
        self.ticks = ticks or TickScheduler(
            memory.client, prefix=memory.prefix, lease=s.tick_lease, max_lag=s.max_lag
        )
        self.evaluator = TickEvaluator(engine, memory, self.watch_store, self.ticks)
        self.running: dict[str, _Running] = {}
        self.outcomes: Counter[str] = Counter()  # "final" or the error code of each answered job
        self._slots = asyncio.Semaphore(s.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None
        self._owns: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def connect(
        cls,
        engine: Engine,
        redis: RedisSettings | str,
        *,
        prefix: str | None = None,
        settings: WorkerSettings | None = None,
    ) -> Worker:
        """A worker with its own Redis connection pool (closed by `run` on exit). `redis`: settings, or a
        URL (with `prefix`)."""
        if isinstance(redis, str):
            redis = RedisSettings.from_dsn(redis, prefix=prefix or DEFAULT_PREFIX)
        elif prefix is not None:
            redis = redis.model_copy(update={"prefix": prefix})
        prefix = redis.prefix
        client = make_client(redis)
        memory = VideoMemory(client, prefix=prefix)
        worker = cls(engine, memory, JobQueue(client, prefix=prefix), settings)
        worker._owns.append(client.aclose)
        return worker

    # -- life cycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def run(self) -> None:
        """Serve until `stop()` (or the task is cancelled); then drain and hand back."""
        self._stopping = stopping = asyncio.Event()
        closing = asyncio.Event()  # the heartbeat goes on while running jobs drain
        s = self.settings
        log.info("worker %s serving (model %s, concurrency %d)", self.name, self.engine.name, s.concurrency)
        loops = [
            ("intake", self._intake_once, 0.0),
            ("reclaim", self._reclaim_once, s.heartbeat),
            ("cancels", self._cancels_once, s.cancel_poll),
        ]
        if s.watches:
            loops.append(("watches", self._watch_once, 0.0))
        tasks = [
            asyncio.create_task(self._forever(*loop, stopping), name=f"worker-{loop[0]}") for loop in loops
        ]
        heartbeat = asyncio.create_task(
            self._forever("heartbeat", self._heartbeat_once, s.heartbeat, closing), name="worker-heartbeat"
        )
        try:
            await stopping.wait()
        finally:
            stopping.set()
            drain_until = time.monotonic() + s.drain  # the loops' last rounds count against the drain
            await _finish(tasks, timeout=s.block + 5.0)
            halted = await self._drain(drain_until)
            # the heartbeat stops before the hand-back: a touch landing after it would make the
            # handed-back jobs look busy again for a whole lease
            closing.set()
            await _finish([heartbeat], timeout=5.0)
            await self._hand_back(halted)
            await self._goodbye()
            for close in self._owns:
                await close()
            log.info("worker %s stopped: %s", self.name, dict(self.outcomes))

    async def _drain(self, until: float) -> list[str]:
        """Give running jobs until `until` (monotonic) to finish, then halt the rest; their job
        entry ids (they leave `running` as they halt, before they are handed back)."""
        pending = [t for t in self._tasks if not t.done()]
        wait = until - time.monotonic()
        if pending and wait > 0:
            log.info("waiting up to %.1f s for %d running job(s)", wait, len(pending))
            await asyncio.wait(pending, timeout=wait)
        halted = list(self.running.values())
        for run in halted:
            run.halt("shutdown")
        return [run.delivery.entry_id for run in halted]

    async def _hand_back(self, entry_ids: list[str]) -> None:
        """Hand halted jobs back to the queue (others take them at once), then let them end. Entries
        acked meanwhile (a job that finished after all) are not pending any more and stay done."""
        with contextlib.suppress(*CONNECTION_ERRORS):
            handed = await self.queue.release(self.name, entry_ids, lease=self.settings.lease)
            if handed:
                log.warning("handed %d running job(s) back to the queue", len(handed))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _goodbye(self) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self.queue.forget_worker(self.name)
            await self.queue.forget_consumer(self.name)

    async def _forever(
        self, what: str, once: Callable[[], Awaitable[float | None]], every: float, until: asyncio.Event
    ) -> None:
        """Run `once` again and again, `every` s apart (or after the delay it returns), until `until` is
        set. Redis outages are waited out with a capped backoff; a bug in one round is logged, not
        fatal. Stopping goes by the event rather than by cancellation: redis-py's retry on timeouts
        can swallow a cancellation on Python 3.11 (asyncio.timeout turns it into a TimeoutError)."""
        delay = 0.05
        while not until.is_set():
            try:
                wait = await once()
                delay = 0.05
            except CONNECTION_ERRORS as exc:
                reraise_if_cancelling(exc)
                if delay == 0.05:
                    log.warning("%s: redis unreachable (%s); retrying", what, exc)
                wait = delay
                delay = min(delay * 2, self.settings.retry_max)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reraise_if_cancelling(exc)
                log.exception("%s: unexpected error; going on", what)
                wait = 1.0
            pause = every if wait is None else wait
            if pause <= 0:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), pause)

    async def _retry(self, call: Callable[[], Coroutine[Any, Any, T]], *, until: float) -> T:
        """`call()` again while Redis is away, until `until` (unix s); then the error is raised."""
        delay = 0.05
        while True:
            try:
                return await call()
            except CONNECTION_ERRORS:
                if time.time() > until:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the loops -------------------------------------------------------------------------------

    async def _slot(self) -> bool:
        """Wait for a free slot; False (holding none) once the worker is stopping, so that no loop
        sits on the semaphore past a stop while every slot is busy."""
        stopping = self._stopping
        assert stopping is not None
        acquire = asyncio.ensure_future(self._slots.acquire())
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not acquire.done():
                acquire.cancel()  # the semaphore passes a wake-up it got meanwhile on to the next waiter
                with contextlib.suppress(asyncio.CancelledError):
                    await acquire
        if acquire.cancelled():
            return False
        if stopping.is_set():
            self._slots.release()
            return False
        return True

    async def _intake_once(self) -> float:
        """Wait for a job with one slot; then take as many more as there are free slots at once, so
        that jobs submitted together start together (and share prefixes and prefill batches)."""
        if not await self._slot():
            return 0.0
        held = 1
        try:
            deliveries = await self.queue.read(self.name, count=1, block=self.settings.block)
            while deliveries and not self._slots.locked():
                await self._slots.acquire()  # free: does not wait
                held += 1
            if held > 1:
                deliveries += await self._read_more(held - 1)
        except BaseException:
            for _ in range(held):
                self._slots.release()
            raise
        for d in deliveries:
            self._spawn(self._handle(d), f"job-{d.entry_id}")
        for _ in range(held - len(deliveries)):
            self._slots.release()
        return 0.0

    async def _read_more(self, count: int) -> list[Delivery]:
        """Jobs already waiting, without blocking; none when that read fails (the job already read
        must start anyway; anything the lost reply held is reclaimed after the lease)."""
        try:
            return await self.queue.read(self.name, count=count, block=0.001)
        except CONNECTION_ERRORS as exc:
            reraise_if_cancelling(exc)
            return []

    async def _reclaim_once(self) -> None:
        """Take over stale jobs while there are any, each when a slot is free (waiting for one: the
        intake holds a slot while it blocks, and the semaphore serves waiters in turn)."""
        while True:
            if not await self._slot():
                return
            try:
                taken = await self.queue.reclaim(self.name, lease=self.settings.lease, count=1)
            except BaseException:
                self._slots.release()
                raise
            if not taken:
                self._slots.release()
                return
            log.warning("took over job entry %s (delivery %d)", taken[0].entry_id, taken[0].deliveries)
            self._spawn(self._handle(taken[0]), f"job-{taken[0].entry_id}")

    async def _heartbeat_once(self) -> None:
        info = WorkerInfo(
            name=self.name, host=socket.gethostname(), pid=os.getpid(), started=self.started,
            concurrency=self.settings.concurrency, model=self.engine.name, encoder_id=self.engine.encoder_id,
            random_weights=bool(getattr(self.engine, "random_weights", False)),
            running=sorted(self.running), ticks=sorted(self.evaluator.held),
        )  # fmt: skip
        await self.queue.heartbeat(info, ttl=3 * self.settings.heartbeat)
        runs = list(self.running.values())
        owned = set(await self.queue.touch(self.name, [r.delivery.entry_id for r in runs]))
        for run in runs:
            if run.delivery.entry_id not in owned and not run.stop.is_set():
                log.warning("job %s was taken over by another worker: stopping it here", run.job.id)
                run.halt("superseded")
        await self.evaluator.extend_leases()

    async def _cancels_once(self) -> None:
        for job in await self.queue.cancelled(list(self.running)):
            run = self.running.get(job)
            if run is not None and not run.stop.is_set():
                log.info("job %s cancelled by the viewer", job)
                run.halt("cancelled")

    async def _watch_once(self) -> float:
        """Claim at most one tick; 0 to look again at once after a claim, else `watch_poll`."""
        streams = await self.watch_store.streams()
        if not streams:
            return self.settings.watch_poll
        random.shuffle(streams)  # no stream always first when workers are scarce
        if not await self._slot():
            return 0.0
        try:
            tick = None
            for stream in streams:
                tick = await self.ticks.claim(stream, self.name)
                if tick is not None:
                    break
        except BaseException:
            self._slots.release()
            raise
        if tick is None:
            self._slots.release()
            return self.settings.watch_poll
        self._spawn(self._tick(tick), f"tick-{tick.stream}")
        return 0.0

    async def _tick(self, tick: Any) -> None:
        try:
            await self.evaluator.evaluate(tick)
        except CONNECTION_ERRORS as exc:
            log.warning(
                "tick %s@%s: redis unreachable (%s); its lease will expire", tick.stream, tick.clip_id, exc
            )
        except Exception:
            log.exception("tick %s@%s failed", tick.stream, tick.clip_id)
        finally:
            self._slots.release()

    # -- one job ---------------------------------------------------------------------------------

    async def _handle(self, d: Delivery) -> None:
        try:
            await self._serve(d)
        except CONNECTION_ERRORS as exc:
            # still pending in the group: this worker or another takes it again after the lease
            log.error(
                "job entry %s: redis unreachable past its deadline (%s); left in the queue", d.entry_id, exc
            )
        except Exception:
            log.exception("job entry %s: unexpected error", d.entry_id)
        finally:
            self._slots.release()

    async def _serve(self, d: Delivery) -> None:
        until = time.time() + WRITE_GRACE
        if d.raw is None:
            await self._retry(lambda: self.queue.ack(d.entry_id), until=until)
            return
        try:
            job = parse_job(d.raw)
        except MessageError as exc:
            await self._refuse(d, exc.record, until)
            return
        until = max(job.deadline, time.time()) + WRITE_GRACE
        if d.deliveries > MAX_DELIVERIES:
            msg = f"the job was started {d.deliveries - 1} times and its workers died each time; given up"
            await self._refuse(d, ErrorRecord(job=job.id, code=ErrorCode.INTERNAL, message=msg), until)
            return
        status, attempt = await self._retry(
            lambda: self.queue.begin(job.id, self.name, job.deadline), until=until
        )
        if status is BeginStatus.FINISHED:
            await self._retry(lambda: self.queue.ack(d.entry_id), until=until)
            return
        if status is not BeginStatus.RUN:
            code = ErrorCode.CANCELLED if status is BeginStatus.CANCELLED else ErrorCode.DEADLINE_EXCEEDED
            text = "cancelled by the viewer" if code is ErrorCode.CANCELLED else _late(job)
            await self._refuse(d, ErrorRecord(job=job.id, code=code, message=text), until)
            return
        run = _Running(job, d, attempt)
        self.running[job.id] = run
        log.info(
            "job %s: attempt %d on %s, %s: %r", job.id, attempt, job.stream, job.window.describe(),
            job.question[:80],
        )  # fmt: skip
        try:
            record = await self._answer(run)
        finally:
            del self.running[job.id]
        if record is None:  # taken over by another worker, or this one is shutting down
            log.info("job %s: left to another worker (%s)", job.id, run.reason)
            return
        written, rid = await self._retry(lambda: self.queue.finish(record), until=until)
        if written or rid:  # ours, or an earlier attempt's: the job is done either way
            self.outcomes["final" if isinstance(record, FinalRecord) else record.code] += 1
            await self._retry(lambda: self.queue.ack(d.entry_id), until=until)
        log.info("job %s: %s", job.id, _summary(record) if written else "already answered elsewhere")

    async def _refuse(self, d: Delivery, record: ErrorRecord, until: float) -> None:
        """Answer a job that will not run with an error record, and take it off the queue."""
        log.info("job %s refused: %s", record.job or d.entry_id, record.message)
        if record.job is not None:
            await self._retry(lambda: self.queue.finish(record), until=until)
        else:
            log.error("job entry %s has no readable id, nobody to tell: %s", d.entry_id, record.message)
        self.outcomes[record.code] += 1
        await self._retry(lambda: self.queue.ack(d.entry_id), until=until)

    async def _answer(self, run: _Running) -> FinalRecord | ErrorRecord | None:
        """Read the window, run the engine, stream pieces; the terminal record (None: do not write)."""
        job = run.job
        started = time.time()

        def error(code: ErrorCode, message: str) -> ErrorRecord:
            return ErrorRecord(job=job.id, attempt=run.attempt, code=code, message=message)

        try:
            window = await read_job_window(
                self.memory, job, encoder_id=self.engine.encoder_id, clip_frames=self.engine.clip_frames
            )
        except WindowRefused as exc:
            return error(exc.code, exc.message)
        clips = window.clips
        memory_read = time.time() - started
        first_piece: float | None = None
        seq = 0

        def work(emit: Callable[[str], None]) -> AnswerOutcome:
            prefix = self.engine.prefix(
                clips, job.dropout, duration=window.duration, should_stop=run.should_stop
            )
            answer = self.engine.answer(
                prefix,
                job.question,
                generation=job.generation,
                should_stop=run.should_stop,
            )
            for text in answer:
                emit(text)
            return answer.outcome

        threaded: ThreadedRun[str, AnswerOutcome] = ThreadedRun(work, name=f"job-{job.id[:12]}")
        until = max(job.deadline, time.time()) + WRITE_GRACE
        stopped = False
        try:
            async for batch in threaded.batches():
                if run.stop.is_set():
                    continue  # let the engine reach its next step check; write nothing more
                piece = Piece(job=job.id, attempt=run.attempt, seq=seq, text="".join(batch))
                status = await self._retry(partial(self.queue.piece, piece, job.deadline), until=until)
                if status is WriteStatus.OK:
                    seq += 1
                    first_piece = first_piece or time.time()
                elif status is WriteStatus.CANCELLED:
                    run.halt("cancelled")
                else:
                    run.halt("superseded")
        except EngineStopped:
            stopped = True  # before its prefix was ready; what it means is decided below
        except EngineRequestError as exc:
            return error(exc.code, str(exc))
        except Exception as exc:
            log.exception("job %s: the engine failed", job.id)
            return error(ErrorCode.INTERNAL, f"the model failed: {type(exc).__name__}: {exc}")
        finally:
            run.stop.set()  # if we leave early, the engine stops at its next step
            await threaded.wait()
        if run.reason in ("superseded", "shutdown"):
            return None
        if run.reason == "cancelled":
            return error(ErrorCode.CANCELLED, "cancelled by the viewer")
        outcome = threaded.result
        if stopped or outcome is None:
            return error(ErrorCode.DEADLINE_EXCEEDED, f"{_late(job)} (before its first token)")
        if outcome.finish_reason == "stopped":
            return error(ErrorCode.DEADLINE_EXCEEDED, f"{_late(job)} ({outcome.new_tokens} tokens generated)")
        return self._final(run, window, outcome, started, memory_read, first_piece)

    def _final(
        self,
        run: _Running,
        window: JobWindow,
        outcome: AnswerOutcome,
        started: float,
        memory_read: float,
        first_piece: float | None,
    ) -> FinalRecord:
        job, clips = run.job, window.clips
        now = time.time()
        t = outcome.timings
        decode = t.get("decode", 0.0)
        return FinalRecord(
            job=job.id, attempt=run.attempt, stream=job.stream, question=job.question, answer=outcome.text,
            finish_reason="length" if outcome.finish_reason == "length" else "stop", window=job.window,
            used_start=clips[0].start, used_end=clips[-1].end,
            clips=[ClipSpan(id=entry_id(c.start), start=c.start, end=c.end) for c in clips],
            frames=sum(c.frames for c in clips), visual_tokens=outcome.visual_tokens,
            prompt_tokens=outcome.prompt_tokens, new_tokens=outcome.new_tokens, dropout=job.dropout,
            timings=Timings(
                queue_wait=max(0.0, started - job.submitted), memory_read=memory_read,
                projector=t.get("projector", 0.0), prefill=t.get("prefill", 0.0),
                first_token=max(0.0, (first_piece or now) - job.submitted), decode=decode,
                tokens_per_s=outcome.new_tokens / decode if decode > 0 else 0.0,
                total=max(0.0, now - job.submitted),
            ),
            evidence=_evidence(clips, outcome.evidence), worker=self.name, model=self.engine.name,
            sampling=job.sampling, file_frames=window.file_frames,
            batching=Batching(
                prefix_reused=outcome.prefix_reused, prefill_batch=max(1, outcome.prefill_batch),
                decode_batch=max(1, outcome.decode_batch),
            ),
        )  # fmt: skip


def _evidence(clips: list[Clip], found: list[tuple[int, float]]) -> list[Evidence]:
    """The engine's (clip index, score) as replayable clips; a clip the release's padding repeated is
    cited once, with its copies' scores summed."""
    scores: dict[int, float] = {}
    for i, score in found:
        if 0 <= i < len(clips):
            key = round(clips[i].start * 1000)
            first = next(j for j, c in enumerate(clips) if round(c.start * 1000) == key)
            scores[first] = scores.get(first, 0.0) + score
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    return [
        Evidence(clip_id=entry_id(clips[i].start), start=clips[i].start, end=clips[i].end, score=score)
        for i, score in ranked
    ]


async def _finish(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait for loops that were told to stop; cancel what is still running after `timeout` s."""
    _, late = await asyncio.wait(tasks, timeout=timeout)
    for task in late:
        log.warning("%s did not stop in %.0f s: cancelling it", task.get_name(), timeout)
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _summary(record: FinalRecord | ErrorRecord) -> str:
    if isinstance(record, ErrorRecord):
        return f"{record.code}: {record.message}"
    t, b = record.timings, record.batching
    shared = ", prefix shared" if b.prefix_reused else ""
    return (
        f"answered: {record.new_tokens} tokens ({record.finish_reason}) from {len(record.clips)} clips in "
        f"{t.total:.2f} s, first token {t.first_token:.2f} s, {t.tokens_per_s:.1f} tokens/s; "
        f"prefill batch {b.prefill_batch}, decode batch {b.decode_batch}{shared}"
    )


def _late(job: AskJob) -> str:
    return f"the job passed its deadline ({job.deadline - job.submitted:.0f} s after it was submitted)"
