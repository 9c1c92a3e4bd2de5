"""The job queue between viewers and query workers: a Redis Stream read through one consumer group.

Viewer side (web, CLI): `submit`, `cancel`, `status`, `results` (see results.py), `depth`, `workers`.
Worker side: `read` (XREADGROUP), `touch` (keep a running job's delivery fresh), `reclaim`
(XAUTOCLAIM jobs whose worker stopped touching them), `begin` (start an attempt), `piece`, `finish`,
`ack`, `heartbeat`.

Delivery is at least once: a job whose worker dies or freezes is claimed by another worker after
`lease` seconds and started again as a new *attempt*. What the viewer sees stays clean because every
write to a job's result stream goes through a script guarded by the job's state hash:

- `begin` increments `attempt`; only the current attempt may write pieces or the terminal record, so a
  frozen worker that wakes up finds its attempt superseded and stops (its pieces are refused);
- the terminal record (final or error) is written at most once per job (FINISH checks `final`), so the
  viewer gets exactly one, however many attempts ran;
- pieces carry their attempt; the first piece of a later attempt means "the answer restarts" (the
  reader rule is in results.py, `AnswerText`).

Key layout and message shapes: docs/workers.md.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from pydantic import Field
from redis.exceptions import ResponseError

from flashlive.memory.keys import DEFAULT_PREFIX, JOBS_GROUP, JobKeys, jobs_key, worker_key, workers_key
from flashlive.memory.messages import (
    AskJob,
    ErrorCode,
    ErrorRecord,
    FinalRecord,
    Message,
    Piece,
)
from flashlive.memory.queue_scripts import BEGIN, CANCEL, FINISH, PIECE, TOUCH
from flashlive.memory.settings import RedisSettings
from flashlive.memory.store import make_client

log = logging.getLogger(__name__)

DEFAULT_RESULT_TTL = 3600.0  # seconds a finished job's records stay readable
DEFAULT_LEASE = 15.0  # seconds without a touch before another worker may claim a running job
MAX_DELIVERIES = 5  # a job that took down this many workers is answered with an error, not retried
WORKER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _ms(t: float) -> int:
    return round(t * 1000)


def default_worker_name() -> str:
    """host-pid-random: unique per process, readable in `XINFO CONSUMERS` and `workers()`."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:60] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class BeginStatus(enum.StrEnum):
    RUN = "run"  # go: you hold attempt n
    FINISHED = "finished"  # a terminal record exists: just ack
    CANCELLED = "cancelled"  # the viewer cancelled before it started: write the cancelled record
    EXPIRED = "expired"  # past its deadline: write the deadline record


class WriteStatus(enum.StrEnum):
    OK = "ok"
    FINISHED = "finished"  # the job already has its terminal record
    SUPERSEDED = "superseded"  # another attempt took over: stop, do not ack
    CANCELLED = "cancelled"  # the viewer cancelled: stop, write the cancelled record


class CancelStatus(enum.StrEnum):
    UNKNOWN = "unknown"  # no such job (never submitted, or its records expired)
    FINISHED = "finished"  # too late: it has its terminal record
    CANCELLED = "cancelled"  # it was still queued: the cancelled record is written
    SIGNALLED = "signalled"  # it runs: its worker stops at its next step and writes the record


@dataclass(frozen=True)
class Delivery:
    """A job stream entry handed to this worker. `raw` is None when the entry was deleted meanwhile."""

    entry_id: str
    raw: bytes | None
    deliveries: int = 1


@dataclass(frozen=True)
class JobStatus:
    job: str
    status: str  # queued | running | done | failed
    attempt: int
    owner: str
    cancel: bool
    final: str  # id of the terminal record in the result stream, "" while there is none
    submitted: float
    deadline: float


@dataclass(frozen=True)
class QueueDepth:
    waiting: int  # submitted, not yet taken by a worker
    running: int  # taken (pending in the consumer group)


class WorkerInfo(Message):
    """A worker's heartbeat: what `workers()` lists and /healthz reports."""

    type: str = "worker"
    name: str = Field(pattern=WORKER_NAME.pattern)
    host: str = ""
    pid: int = 0
    started: float = 0.0
    concurrency: int = 1
    model: str = ""
    encoder_id: str = ""
    # untrained (randomly initialised) weights: answers are noise; the page shows a banner
    random_weights: bool = False
    running: list[str] = Field(default_factory=list)  # job ids
    ticks: list[str] = Field(default_factory=list)  # streams whose watch tick it evaluates
    time: float = Field(default_factory=time.time)


class JobQueue:
    """One per process; safe to share between tasks of one event loop. `prefix` as in VideoMemory."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        result_ttl: float = DEFAULT_RESULT_TTL,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.result_ttl = result_ttl
        self.key = jobs_key(prefix)
        self.group = JOBS_GROUP
        self._owns_client = owns_client
        self._begin = client.register_script(BEGIN)
        self._piece = client.register_script(PIECE)
        self._finish = client.register_script(FINISH)
        self._cancel = client.register_script(CANCEL)
        self._touch = client.register_script(TOUCH)
        self._group_ready = False

    @classmethod
    def from_settings(cls, settings: RedisSettings, **kwargs: Any) -> JobQueue:
        """A queue on `settings.url` with `settings.prefix`, owning its connection pool."""
        return cls(make_client(settings), prefix=settings.prefix, owns_client=True, **kwargs)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = DEFAULT_PREFIX, **kwargs: Any) -> JobQueue:
        return cls.from_settings(RedisSettings.from_dsn(url, prefix=prefix), **kwargs)

    def keys(self, job: str) -> JobKeys:
        return JobKeys(self.prefix, job)

    async def close(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    # -- viewer side -----------------------------------------------------------------------------

    async def submit(self, job: AskJob) -> str:
        """Queue a job (already validated by building it). Returns its job stream entry id.

        The job's state hash is written first, so `cancel` and `status` work from the moment this
        returns; its TTL covers the deadline plus the result TTL.
        """
        await self.ensure_group()
        keys = self.keys(job.id)
        expire = _ms(max(job.deadline, time.time()) + self.result_ttl)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(keys.state, "status", "queued")
            pipe.hset(keys.state, mapping={"submitted": _ms(job.submitted), "deadline": _ms(job.deadline)})
            pipe.pexpireat(keys.state, expire)
            await pipe.execute()
        return _s(await self.client.xadd(self.key, {"m": job.dumps()}))

    async def submit_raw(self, payload: bytes | str) -> str:
        """Queue a message as given, unvalidated: for bridges that forward bytes, and for testing how
        workers answer malformed or newer messages."""
        await self.ensure_group()
        return _s(await self.client.xadd(self.key, {"m": payload}))

    async def cancel(self, job: str) -> CancelStatus:
        """Ask for a job to stop. A queued job is answered at once; a running one within a step."""
        keys = self.keys(job)
        record = ErrorRecord(job=job, code=ErrorCode.CANCELLED, message="cancelled by the viewer")
        reply = await self._cancel(
            keys=[keys.state, keys.results], args=[record.dumps(), _ms(self.result_ttl)]
        )
        return CancelStatus(_s(reply))

    async def status(self, job: str) -> JobStatus | None:
        raw = await self.client.hgetall(self.keys(job).state)
        if not raw:
            return None
        f = {_s(k): _s(v) for k, v in raw.items()}
        return JobStatus(
            job=job,
            status=f.get("status", "queued"),
            attempt=int(f.get("attempt", 0)),
            owner=f.get("owner", ""),
            cancel=f.get("cancel") == "1",
            final=f.get("final", ""),
            submitted=int(f.get("submitted", 0)) / 1000,
            deadline=int(f.get("deadline", 0)) / 1000,
        )

    async def depth(self) -> QueueDepth:
        """Jobs waiting and running (acked jobs are deleted from the stream, so XLEN is both)."""
        await self.ensure_group()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xlen(self.key)
            pipe.xpending(self.key, self.group)
            total, pending = await pipe.execute()
        running = int(pending["pending"]) if pending else 0
        return QueueDepth(waiting=max(0, int(total) - running), running=running)

    async def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired, by name. Expired ones are forgotten here."""
        names = sorted(_s(n) for n in await self.client.smembers(workers_key(self.prefix)))
        if not names:
            return []
        values = await self.client.mget([worker_key(self.prefix, n) for n in names])
        alive, dead = [], []
        for name, value in zip(names, values, strict=True):
            if value is None:
                dead.append(name)
                continue
            try:
                alive.append(WorkerInfo.model_validate_json(value))
            except ValueError as exc:
                log.warning("unreadable heartbeat of worker %s: %s", name, exc)
        if dead:
            await self.client.srem(workers_key(self.prefix), *dead)
        return alive

    # -- worker side: the stream ---------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing. From id 0, so jobs submitted before
        the first worker started are delivered too."""
        if self._group_ready:
            return
        try:
            await self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def read(self, consumer: str, *, count: int = 1, block: float = 1.0) -> list[Delivery]:
        """New jobs for `consumer`, waiting up to `block` seconds. Survives a lost group (a Redis
        restarted without persistence) by creating it again."""
        await self.ensure_group()
        try:
            reply: Any = await self.client.xreadgroup(
                self.group, consumer, {self.key: ">"}, count=count, block=max(1, _ms(block))
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False
            await self.ensure_group()
            return []
        return [Delivery(_s(eid), fields.get(b"m")) for _, entries in reply or [] for eid, fields in entries]

    async def touch(self, consumer: str, entry_ids: list[str]) -> list[str]:
        """Reset the idle time of running jobs this consumer still owns; returns those it owns. A job
        missing from the answer was claimed by another worker: this one should stop it."""
        if not entry_ids:
            return []
        reply = await self._touch(keys=[self.key], args=[self.group, consumer, 0, *entry_ids])
        return [_s(x) for x in reply]

    async def release(
        self, consumer: str, entry_ids: list[str], *, lease: float = DEFAULT_LEASE
    ) -> list[str]:
        """Hand running jobs back (a worker shutting down): they look idle for `lease` seconds, so
        the next `reclaim` of any worker takes them at once. Returns the ids handed back."""
        if not entry_ids:
            return []
        reply = await self._touch(keys=[self.key], args=[self.group, consumer, _ms(lease) + 1, *entry_ids])
        return [_s(x) for x in reply]

    async def reclaim(self, consumer: str, *, lease: float = DEFAULT_LEASE, count: int = 1) -> list[Delivery]:
        """Claim up to `count` jobs idle for more than `lease` seconds (their worker died or froze).

        A job delivered `MAX_DELIVERIES` times already (it keeps killing workers) is answered with an
        error record and acked instead. Entries deleted while pending are acked and skipped.
        """
        await self.ensure_group()
        try:
            reply: Any = await self.client.xautoclaim(
                self.key, self.group, consumer, _ms(lease), start_id="0-0", count=count
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False
            return []
        out: list[Delivery] = []
        for eid, fields in reply[1]:
            eid = _s(eid)
            if not fields:  # Redis 6.2 reports entries deleted while pending this way
                await self.ack(eid)
                continue
            deliveries = await self._deliveries(eid)
            out.append(Delivery(eid, fields.get(b"m"), deliveries))
        for eid in reply[2] if len(reply) > 2 else []:  # Redis 7: deleted ids, already out of the PEL
            log.info("job entry %s was deleted while pending", _s(eid))
        return out

    async def _deliveries(self, entry_id: str) -> int:
        info = await self.client.xpending_range(self.key, self.group, entry_id, entry_id, 1)
        return int(info[0]["times_delivered"]) if info else 1

    async def ack(self, entry_id: str) -> None:
        """Done with a job entry: acknowledged and deleted, so the stream holds only live jobs."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.key, self.group, entry_id)
            pipe.xdel(self.key, entry_id)
            await pipe.execute()

    async def forget_consumer(self, consumer: str) -> None:
        """Remove a consumer from the group once it holds no job (a clean shutdown)."""
        pending = await self.client.xpending_range(self.key, self.group, "-", "+", 1, consumername=consumer)
        if not pending:
            await self.client.xgroup_delconsumer(self.key, self.group, consumer)

    async def prune_consumers(self, idle: float = 3600.0) -> list[str]:
        """Drop consumers that hold no job, have no heartbeat and were idle for `idle` seconds (workers
        that crashed long ago). Returns their names."""
        await self.ensure_group()
        gone = []
        for c in await self.client.xinfo_consumers(self.key, self.group):
            name = _s(c["name"])
            if int(c["pending"]) or int(c["idle"]) <= _ms(idle):
                continue
            if not await self.client.exists(worker_key(self.prefix, name)):
                await self.client.xgroup_delconsumer(self.key, self.group, name)
                gone.append(name)
        return gone

    # -- worker side: a job's attempt and its records ------------------------------------------

    async def begin(self, job: str, consumer: str, deadline: float) -> tuple[BeginStatus, int]:
        """Start an attempt of `job`: (RUN, attempt) or why not (attempt 0)."""
        keys = self.keys(job)
        now = time.time()
        expire = _ms(max(deadline, now) + self.result_ttl)
        status, attempt = await self._begin(
            keys=[keys.state], args=[consumer, _ms(now), _ms(deadline), expire]
        )
        return BeginStatus(_s(status)), int(_s(attempt))

    async def piece(self, piece: Piece, deadline: float) -> WriteStatus:
        keys = self.keys(piece.job)
        expire = _ms(max(deadline, time.time()) + self.result_ttl)
        reply = await self._piece(
            keys=[keys.state, keys.results], args=[piece.attempt, piece.dumps(), expire]
        )
        return WriteStatus(_s(reply))

    async def finish(self, record: FinalRecord | ErrorRecord) -> tuple[bool, str]:
        """Write the job's terminal record unless it has one (or another attempt took over).

        Returns (written, record id): (False, id of the one already there) or (False, "") when
        superseded. An ErrorRecord with attempt 0 is written outside any attempt.
        """
        if record.job is None:
            raise ValueError("a terminal record needs the job id")
        keys = self.keys(record.job)
        status = "done" if isinstance(record, FinalRecord) else "failed"
        outcome, rid = await self._finish(
            keys=[keys.state, keys.results],
            args=[record.attempt, record.dumps(), status, _ms(self.result_ttl)],
        )
        return _s(outcome) == "written", _s(rid)

    async def cancelled(self, jobs: list[str]) -> set[str]:
        """Which of these jobs a viewer asked to cancel: one round trip for a worker's running jobs."""
        if not jobs:
            return set()
        async with self.client.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hget(self.keys(job).state, "cancel")
            flags = await pipe.execute()
        return {job for job, flag in zip(jobs, flags, strict=True) if _s(flag) == "1"}

    # -- worker side: liveness -----------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo, ttl: float) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(worker_key(self.prefix, info.name), info.dumps(), px=_ms(ttl))
            pipe.sadd(workers_key(self.prefix), info.name)
            await pipe.execute()

    async def forget_worker(self, name: str) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(worker_key(self.prefix, name))
            pipe.srem(workers_key(self.prefix), name)
            await pipe.execute()
