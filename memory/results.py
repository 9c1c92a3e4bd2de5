"""Reading a job's result stream: pieces, then exactly one final or error record.

The stream is durable for the result TTL, so a viewer that connects late or reconnects reads from the
start (or from the last id it saw) and loses nothing; no pub/sub is involved (XREAD BLOCK wakes the
reader when a record arrives).

The reader rule for pieces (why `attempt` is on every piece): a job may be started again by another
worker after its first worker froze or died. Pieces of one attempt are in order (`seq` 0, 1, ...).
Once a later attempt writes, the earlier attempt's writes are refused by Redis (jobs.py), so in the
stream the pieces of attempt n+1 come after all pieces of attempt n. A reader therefore keeps the
text of the highest attempt seen: a piece with a higher attempt replaces the text so far
(`AnswerText.reset` tells a UI to clear it). The final record holds the whole answer anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from flashlive.memory.cancellation import reraise_if_cancelling
from flashlive.memory.keys import DEFAULT_PREFIX, JobKeys
from flashlive.memory.messages import TERMINAL, ErrorRecord, FinalRecord, Piece, parse_record
from flashlive.memory.store import CONNECTION_ERRORS

log = logging.getLogger(__name__)

Record = Piece | FinalRecord | ErrorRecord


class ResultTimeoutError(TimeoutError):
    """No record arrived for `timeout` seconds (no worker alive, or one that is very slow)."""


class UnknownJobError(KeyError):
    """The job was never submitted, or its records expired."""

    def __init__(self, job: str) -> None:
        super().__init__(job)
        self.job = job

    def __str__(self) -> str:
        return f"unknown job {self.job!r}: never submitted, or its records expired"


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_results(
    client: aioredis.Redis,
    job: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    after: str = "0-0",
    timeout: float = 60.0,
    block: float = 1.0,
) -> AsyncGenerator[tuple[str, Record], None]:
    """Yield (record id, record) of `job` after id `after`, until its terminal record (included).

    Blocks in XREAD for new records; raises ResultTimeoutError when none came for `timeout` seconds
    (the wait restarts after each record), UnknownJobError when the job has no state and no records.
    Redis going away is waited out (within the same timeout). Pass the last id you saw as `after` to
    resume without repeats.
    """
    keys = JobKeys(prefix, job)
    if not await client.exists(keys.state, keys.results):
        raise UnknownJobError(job)
    last = after
    quiet_until = time.monotonic() + timeout
    while True:
        wait = min(block, max(0.001, quiet_until - time.monotonic()))
        try:
            reply: Any = await client.xread({keys.results: last}, count=256, block=max(1, round(wait * 1000)))
        except CONNECTION_ERRORS as exc:
            reraise_if_cancelling(exc)
            if time.monotonic() >= quiet_until:
                raise ResultTimeoutError(
                    f"no record of job {job!r} for {timeout:g} s (redis: {exc})"
                ) from exc
            log.debug("reading job %s: redis unreachable (%s), retrying", job, exc)
            await asyncio.sleep(0.1)
            continue
        if not reply:
            if time.monotonic() >= quiet_until:
                raise ResultTimeoutError(f"no record of job {job!r} for {timeout:g} s")
            continue
        for eid, fields in reply[0][1]:
            last = _s(eid)
            record = parse_record(fields.get(b"m", b""), job)
            yield last, record
            if record.type in TERMINAL:
                return
        quiet_until = time.monotonic() + timeout


@dataclass
class AnswerText:
    """Assembles pieces into the answer text by the reader rule above."""

    attempt: int = 0
    text: str = ""
    reset: bool = False  # the last `add` started a new attempt: a UI should clear what it showed

    def add(self, piece: Piece) -> str:
        """Take a piece; returns the text to append to what is shown (all of it after a reset)."""
        self.reset = False
        if piece.attempt < self.attempt:
            return ""  # cannot happen with the queue's scripts; kept so a reader never goes backwards
        if piece.attempt > self.attempt:
            self.reset = self.attempt > 0
            self.attempt = piece.attempt
            self.text = ""
        self.text += piece.text
        return piece.text


async def collect(
    client: aioredis.Redis, job: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = 60.0
) -> tuple[list[Record], FinalRecord | ErrorRecord]:
    """Every record of a job until its terminal one: (all records, the terminal record)."""
    records: list[Record] = []
    async for _, record in read_results(client, job, prefix=prefix, timeout=timeout):
        records.append(record)
    last = records[-1]
    assert isinstance(last, FinalRecord | ErrorRecord)
    return records, last
