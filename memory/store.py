"""`VideoMemory`: the rolling, Redis-backed memory of every stream's clips (docs/memory.md).

One instance per process is enough; it is safe to share between tasks of one event loop. Several
processes may use the same Redis at once: every append (and its retention accounting) is one Lua
script, so concurrent writers keep the counters exact, and a stream's write lease (memory/leases.py)
keeps two ingests from interleaving one stream.

What happens to a clip (docs/ingest-guarantees.md): `append` returns STORED or DUPLICATE once Redis
has it, raises a named error (memory/errors.py) when Redis refuses it for good, and otherwise either
waits for Redis (`wait_s`: backfill, nothing is ever dropped) or returns BUFFERED (live: a bounded local
buffer, written in order once Redis is back; its oldest clip is dropped, and counted, when it is full).
A buffered clip's final fate goes to the listeners (`add_listener`), and every loss is counted in the
stream's meta hash (`lost`, `lost:<reason>`), so any process can see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from flashlive.memory.codec import EncodedClip, decode_info, decode_tokens, encode_clip, entry_tail, to_clip
from flashlive.memory.errors import (
    ClipConflictError,
    CorruptEntryError,
    EmptyStreamError,
    EncoderMismatchError,
    InvalidRequestError,
    LeaseLostError,
    MemoryFullError,
    MemoryStoreError,
    MemoryUnavailableError,
    OutOfOrderClipError,
    PersistenceError,
    RangeOutsideMemoryError,
    RedisRefusedError,
    SourceMismatchError,
    StreamLockedError,
    UnknownStreamError,
)
from flashlive.memory.keys import (
    DEFAULT_PREFIX,
    ENTRY_SEQ,
    StreamKeys,
    check_stream_name,
    check_time,
    id_ms,
    range_ids,
    streams_key,
)
from flashlive.memory.leases import Lease, holder_of, new_token
from flashlive.memory.redact import redact
from flashlive.memory.refusals import CONNECTION_ERRORS, error_code, refusal
from flashlive.memory.sampling import check_budget, check_recent, recent_indices
from flashlive.memory.scripts import ACQUIRE, APPEND, RELEASE, RENEW, REPORT_ALLOW_OOM, WINDOW_IDS
from flashlive.memory.settings import RedisSettings, Retention
from flashlive.memory.types import Clip, ClipInfo, IngestCounters, StreamState, StreamStats, StreamStatus

log = logging.getLogger(__name__)

__all__ = ["CONNECTION_ERRORS", "AppendStatus", "ClipOutcome", "Lease", "VideoMemory", "make_client"]

# meta fields the memory writes itself (the scripts, or set_state's own arguments); `lost:<reason>` too
RESERVED_META = frozenset(
    {"encoder_id", "bytes", "last_start", "last_end", "last_id", "updated", "created", "trimmed_clips",
     "trimmed_bytes", "dropped", "duplicates", "retention_ms", "max_bytes", "state", "state_since",
     "reported", "source", "error", "metrics", "writer", "source_id", "source_origin", "lost"}
)  # fmt: skip
LOSS_PREFIX = "lost:"
FETCH_CHUNK = 256  # token blobs per HMGET: bounds the size of one reply
UNCONFIRMED_MAX = 256  # acknowledged clips kept for a re-check after Redis went away (see `_acked`)
# the one type each key of a stream must have (a WRONGTYPE refusal names the key that differs)
KEY_TYPES = {"clips": "stream", "tokens": "hash", "thumbs": "hash", "meta": "hash", "lease": "string"}

# Why a clip was lost (the meta's `lost:<reason>` counters; ingest adds its own: backpressure, encoder,
# interrupted). The memory's: its buffer was full while Redis was away; Redis refused it for good;
# it was still buffered when the process closed the memory; Redis lost it after acknowledging it.
BUFFER_FULL, REFUSED, SHUTDOWN, LOST_BY_REDIS = "buffer_full", "refused", "shutdown", "lost_by_redis"

P = ParamSpec("P")
R = TypeVar("R")


_Entry = tuple[ClipInfo, bytes]  # a stream entry decoded, with the token tail it carries


def _decode_entries(keys: StreamKeys, entries: list[Any]) -> list[_Entry]:
    """XRANGE reply -> (ClipInfo, token tail) pairs; corrupt entries are logged and left out."""
    out: list[_Entry] = []
    for eid, fields in entries:
        try:
            out.append((decode_info(keys.name, eid, fields), entry_tail(fields)))
        except CorruptEntryError as exc:
            log.error("skipping a corrupt entry: %s", exc)
    return out


class AppendStatus(enum.StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # this clip (same id, same end, same content) was already stored: nothing written
    BUFFERED = "buffered"  # Redis unreachable: held locally, written in order after reconnect
    LOST = "lost"  # (outcomes only) a buffered or acknowledged clip that will never be in memory


@dataclass(frozen=True)
class ClipOutcome:
    """What became of a clip after `append` returned: a buffered clip written (STORED, DUPLICATE) or
    lost, or a clip Redis had acknowledged (`previous` STORED) and then lost. Sent to the listeners."""

    stream: str
    start: float
    status: AppendStatus
    previous: AppendStatus = AppendStatus.BUFFERED
    reason: str = ""  # why it was lost (BUFFER_FULL, REFUSED, SHUTDOWN, LOST_BY_REDIS)
    error: str = ""  # the refusal, when Redis refused it
    fatal: bool = False  # Redis refuses this stream's clips for good: its ingest should stop


OutcomeListener = Callable[[ClipOutcome], None]
# refusals that mean the stream cannot be written any more (rather than this one clip)
FATAL = (EncoderMismatchError, OutOfOrderClipError, LeaseLostError, StreamLockedError, RedisRefusedError)


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def make_client(settings: RedisSettings) -> aioredis.Redis:
    """A binary-safe client that fails fast when Redis is away (the append buffer does the waiting)."""
    if settings.url is None:
        raise InvalidRequestError("no Redis URL: open the embedded server with memory.connect.open_memory")
    return aioredis.Redis.from_url(
        settings.url,
        decode_responses=False,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        retry=Retry(NoBackoff(), 1),  # one immediate retry: a pooled connection may predate a restart
        health_check_interval=0,
    )


def _where(client: aioredis.Redis) -> str:
    """The server a client talks to, for messages (no credentials)."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def check_encoder_id(encoder_id: object) -> None:
    """Token reads must name the encoder that will use them, so the guard can refuse a mismatch."""
    if not isinstance(encoder_id, str) or not encoder_id:
        raise InvalidRequestError("encoder_id is required to read tokens (the encoder that will use them)")


def _named(
    verb: str,
) -> Callable[
    [Callable[Concatenate[VideoMemory, P], Awaitable[R]]], Callable[Concatenate[VideoMemory, P], Awaitable[R]]
]:
    """Turn redis-py's exceptions in a method into the memory's named errors (memory/refusals.py)."""

    def wrap(
        fn: Callable[Concatenate[VideoMemory, P], Awaitable[R]],
    ) -> Callable[Concatenate[VideoMemory, P], Awaitable[R]]:
        @functools.wraps(fn)
        async def named(self: VideoMemory, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(self, *args, **kwargs)
            except MemoryStoreError:
                raise
            except (RedisError, OSError) as exc:
                stream = args[0] if args and isinstance(args[0], str) else None
                what = f"{verb} of stream {stream!r}" if stream else verb
                keys = StreamKeys(self.prefix, stream) if stream else None
                raise await self._refusal(exc, what, keys) from exc

        return named

    return wrap


class VideoMemory:
    """Async access to the memory. Build it with `VideoMemory.from_settings(RedisSettings)` (or
    `from_url(url)`, or `VideoMemory(client)`); `retention` applies to this instance's appends and
    defaults to keeping everything, as the config does.

    `buffer_size`: clips held locally while Redis is away (live appends; ~68 MB at 512 clips of 64x1024
    fp16). `confirm_s`: how long an acknowledged clip is kept to be checked again after Redis went away
    or could not persist (a Redis with `appendfsync everysec` may lose up to a second of what it
    acknowledged when its machine or disk fails); 0 turns the check off.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        retention: Retention | None = None,
        buffer_size: int = 512,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        confirm_s: float = 2.0,
        owns_client: bool = False,
        where: str | None = None,
    ) -> None:
        if buffer_size < 1:
            raise InvalidRequestError(f"buffer_size must be >= 1, not {buffer_size}")
        self.client = client
        self.prefix = prefix
        self.retention = retention or Retention()
        self.buffer_size = buffer_size
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.confirm_s = confirm_s
        self.where = where or _where(client)
        self._owns_client = owns_client
        self._append_script = client.register_script(APPEND)
        self._window_script = client.register_script(WINDOW_IDS)
        self._acquire_script = client.register_script(ACQUIRE)
        self._renew_script = client.register_script(RENEW)
        self._release_script = client.register_script(RELEASE)
        self._report_oom_script = client.register_script(REPORT_ALLOW_OOM)
        self._lock = asyncio.Lock()
        self._pending: deque[EncodedClip] = deque()
        self._writing: EncodedClip | None = None  # the buffered clip being written now (never dropped)
        self._flusher: asyncio.Task[None] | None = None
        self._unconfirmed: deque[tuple[float, EncodedClip]] = deque()  # (acknowledged at, clip)
        self._recheck: deque[EncodedClip] = deque()  # acknowledged clips to check once Redis is back
        self._unrecorded: dict[str, Counter[str]] = {}  # losses not yet counted in the meta hash
        self._listeners: list[OutcomeListener] = []
        self._leases: dict[str, Lease] = {}
        self.dropped = 0  # clips lost to buffer overflow by this instance
        self.rejected = 0  # buffered clips Redis refused on replay

    @classmethod
    def from_settings(cls, settings: RedisSettings, **kwargs: Any) -> VideoMemory:
        """A memory on `settings.url` with `settings.prefix` (the embedded server: `open_memory`)."""
        kwargs.setdefault("where", redact(settings.where()))
        return cls(make_client(settings), prefix=settings.prefix, owns_client=True, **kwargs)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = DEFAULT_PREFIX, **kwargs: Any) -> VideoMemory:
        return cls.from_settings(RedisSettings.from_dsn(url, prefix=prefix), **kwargs)

    def keys(self, stream: str) -> StreamKeys:
        return StreamKeys(self.prefix, check_stream_name(stream))

    @property
    def buffer_depth(self) -> int:
        """Clips held locally, waiting for Redis to come back."""
        return len(self._pending)

    def buffered(self, stream: str) -> int:
        return sum(1 for p in self._pending if p.stream == stream)

    def add_listener(self, listener: OutcomeListener) -> None:
        """Call `listener(ClipOutcome)` with the final fate of every clip `append` returned BUFFERED for,
        and of acknowledged clips Redis lost (found when it comes back)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: OutcomeListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _notify(self, outcome: ClipOutcome) -> None:
        for listener in list(self._listeners):
            try:
                listener(outcome)
            except Exception:
                log.exception("an outcome listener failed")

    async def _refusal(self, exc: BaseException, what: str, keys: StreamKeys | None) -> MemoryStoreError:
        detail = ""
        if keys is not None and error_code(exc) == "WRONGTYPE":
            detail = await self._wrong_types(keys)
        return refusal(exc, what=what, where=self.where, detail=detail)

    async def _wrong_types(self, keys: StreamKeys) -> str:
        """Which of the stream's keys holds another type than the layout's (best effort)."""
        found = []
        with contextlib.suppress(RedisError, OSError):
            for name, want in KEY_TYPES.items():
                key = getattr(keys, name)
                have = _s(await self.client.type(key))
                if have not in ("none", want):
                    found.append(f"{key} is a {have}, not a {want}")
        return "; ".join(found)

    # -- the write lease -------------------------------------------------------------------------

    async def acquire(
        self, stream: str, *, source: str, ttl_s: float, new_source: bool = False, holder: str | None = None
    ) -> Lease:
        """Take the stream's write lease: from now on only this memory's appends reach the stream.

        `source` identifies what is written (a URL with credentials masked, a file's absolute path): a
        stream that holds clips of another source is refused (SourceMismatchError) unless `new_source`.
        Raises StreamLockedError naming the holder when another writer has the stream, and the named
        Redis errors (unreachable, read-only replica, wrong type, ...). Renewed every ttl/3 until
        `release`; the append script refuses every other writer's clips meanwhile.
        """
        keys = self.keys(stream)
        if not ttl_s > 0:
            raise InvalidRequestError(f"the lease ttl must be > 0 s, not {ttl_s}")
        token = new_token(holder)
        ttl_ms = max(1000, round(ttl_s * 1000))
        try:
            reply = await self._acquire_script(
                keys=[keys.lease, keys.meta, keys.clips], args=[token, ttl_ms, source, int(new_source)]
            )
        except (RedisError, OSError) as exc:
            raise await self._refusal(exc, f"taking the write lease of stream {stream!r}", keys) from exc
        status = _s(reply[0])
        if status == "held":
            raise StreamLockedError(stream, holder_of(_s(reply[1])), int(reply[2]))
        if status == "source":
            raise SourceMismatchError(stream, _s(reply[1]), source)
        if status != "ok":
            raise RedisRefusedError(f"unexpected reply {reply!r} from the lease script of stream {stream!r}")
        previous = _s(reply[2])
        lease = Lease(
            stream, token, ttl_ms, source, origin=float(_s(reply[1]) or 0),
            previous_source=previous if previous != source else "",
        )  # fmt: skip
        old = self._leases.pop(stream, None)
        if old is not None:
            await old.stop()
        self._leases[stream] = lease
        lease.task = asyncio.get_running_loop().create_task(self._keep(lease), name=f"lease-{stream}")
        return lease

    async def _keep(self, lease: Lease) -> None:
        keys = StreamKeys(self.prefix, lease.stream)
        while True:
            await asyncio.sleep(lease.renew_every_s)
            try:
                held = await self._renew_script(
                    keys=[keys.lease, keys.meta], args=[lease.token, lease.ttl_ms]
                )
            except (RedisError, OSError) as exc:  # the append script takes it back if nobody else did
                log.debug("cannot renew the lease of %r (%s); retrying", lease.stream, exc)
                continue
            if not int(held):
                lease.lost = f"stream {lease.stream!r} was taken over by another writer"
                log.error("%s: this writer's appends will be refused", lease.lost)
                return

    async def release(self, stream: str) -> None:
        """Let go of the stream's lease (after its clips are flushed: `flush(stream=...)`)."""
        lease = self._leases.pop(stream, None)
        if lease is None:
            return
        await lease.stop()
        keys = StreamKeys(self.prefix, stream)
        try:
            await self._release_script(keys=[keys.lease], args=[lease.token])
        except (RedisError, OSError) as exc:  # it expires by itself
            log.warning("could not release the lease of %r (%s); it expires in %d s", stream, exc,
                        lease.ttl_ms // 1000)  # fmt: skip

    def lease(self, stream: str) -> Lease | None:
        return self._leases.get(stream)

    @_named("checking the write lease")
    async def holds(self, stream: str) -> bool:
        """This memory still holds the stream's lease (or could take it back: nobody took it since)."""
        lease = self._leases.get(stream)
        if lease is None:
            return False
        keys = self.keys(stream)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(keys.lease)
            pipe.hget(keys.meta, "writer")
            held, writer = await pipe.execute()
        token = lease.token.encode()
        return held == token or (held is None and writer == token)

    # -- writing ---------------------------------------------------------------------------------

    async def append(self, clip: Clip, *, wait_s: float | None = None) -> AppendStatus:
        """Store one clip; returns STORED or DUPLICATE (same id, end and content already stored).

        Live (`wait_s=None`): never waits for Redis. When it is unreachable or refuses for a while (out
        of memory, cannot persist), the clip is buffered (BUFFERED; its fate goes to the listeners) and
        written in order later; a full buffer drops its oldest clip, counted in the meta.
        Backfill (`wait_s=S`): waits for Redis, retrying, until the clip is stored; after S seconds
        without success raises the error that kept it out (MemoryUnavailableError, MemoryFullError, ...).
        Nothing is dropped.

        Raises InvalidClipError (bad clip), EncoderMismatchError (another encoder's stream),
        OutOfOrderClipError (not after the stream's newest clip), ClipConflictError (another clip at
        this time), StreamLockedError / LeaseLostError (another writer holds the stream), and the named
        refusals (ReadOnlyError, WrongTypeError, ...).
        """
        enc = encode_clip(clip)
        if wait_s is not None:
            return await self._append_waiting(enc, wait_s)
        if self._pending:
            return self._buffer(enc)
        async with self._lock:
            if self._pending:  # a flush started while we waited
                return self._buffer(enc)
            try:
                await self._recheck_acknowledged()
                status = await self._write(enc)
            except MemoryStoreError as exc:
                if not exc.transient:
                    raise
                log.warning("%s; buffering clips of %r", exc, enc.stream)
                self._suspect(exc)
                return self._buffer(enc)
            self._acked(enc)
            return status

    async def _append_waiting(self, enc: EncodedClip, wait_s: float) -> AppendStatus:
        deadline = time.monotonic() + wait_s
        delay = self.retry_initial
        last: MemoryStoreError = MemoryUnavailableError(f"clips of {enc.stream!r} are still buffered")
        warned = False
        while True:
            if not any(p.stream == enc.stream for p in self._pending):
                async with self._lock:
                    try:
                        await self._recheck_acknowledged()
                        status = await self._write(enc)
                    except MemoryStoreError as exc:
                        if not exc.transient:
                            raise
                        self._suspect(exc)
                        last = exc
                    else:
                        self._acked(enc)
                        return status
            if not warned:
                log.warning("%s; waiting up to %g s", last, wait_s)
                warned = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise type(last)(f"{last} (waited {wait_s:g} s; no clip was dropped)")
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, self.retry_max)

    async def _write(self, enc: EncodedClip, *, recheck: bool = False) -> AppendStatus:
        keys = StreamKeys(self.prefix, enc.stream)
        lease = self._leases.get(enc.stream)
        retention_ms, max_bytes = self.retention.script_args
        args: list[Any] = [
            enc.id_ms, enc.stream, enc.start, enc.end, enc.frames, enc.encoder_id, "float16", enc.shape,
            enc.wall_start, enc.extra, enc.tokens, enc.thumbnail, retention_ms, max_bytes, repr(time.time()),
            enc.tail, enc.digest, lease.token if lease else "", lease.ttl_ms if lease else 0, int(recheck),
        ]  # fmt: skip
        what = f"storing the clip of stream {enc.stream!r} at {float(enc.start):g} s"
        try:
            reply = await self._append_script(
                keys=[keys.clips, keys.tokens, keys.thumbs, keys.meta, streams_key(self.prefix), keys.lease],
                args=args,
            )
        except (RedisError, OSError) as exc:
            raise await self._refusal(exc, what, keys) from exc
        status, detail = _s(reply[0]), _s(reply[1]) if len(reply) > 1 else ""
        if status == "stored":
            return AppendStatus.STORED
        if status == "duplicate":
            return AppendStatus.DUPLICATE
        if status == "encoder":
            raise EncoderMismatchError(enc.stream, detail, enc.encoder_id)
        if status == "conflict":
            raise ClipConflictError(
                f"stream {enc.stream!r} already holds a different clip at {float(enc.start):g} s "
                f"(id {enc.id}): another video was ingested under this name; use another name, or delete "
                "the stream"
            )
        if status == "order":
            newest = detail.split("-", 1)[0]
            at = f"{int(newest) / 1000:g} s" if newest.isdigit() else detail
            raise OutOfOrderClipError(
                f"clip of stream {enc.stream!r} starts at {float(enc.start):g} s, not after the newest "
                f"clip ({at}): clips must be appended in time order"
            )
        if status == "lease":
            raise StreamLockedError(
                enc.stream, holder_of(detail), int(_s(reply[2])) if len(reply) > 2 else None
            )
        if status == "lost":
            raise LeaseLostError(
                f"stream {enc.stream!r} was taken over by {holder_of(detail)} while this writer could not "
                "reach Redis: this writer stops, so the two never interleave"
            )
        raise RedisRefusedError(f"Redis at {self.where} gave an unexpected reply {reply!r} while {what}")

    def _buffer(self, enc: EncodedClip) -> AppendStatus:
        if len(self._pending) >= self.buffer_size:
            # never the clip being written right now: it may be in Redis already
            index = 1 if self._pending[0] is self._writing and len(self._pending) > 1 else 0
            lost = self._pending[index]
            del self._pending[index]
            self.dropped += 1
            log.error(
                "append buffer full (%d clips): dropped the clip of %r at %s s",
                self.buffer_size,
                lost.stream,
                lost.start,
            )
            self._lose(lost, BUFFER_FULL)
        self._pending.append(enc)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="memory-flush")
        return AppendStatus.BUFFERED

    def _lose(
        self,
        enc: EncodedClip,
        reason: str,
        *,
        error: str = "",
        fatal: bool = False,
        previous: AppendStatus = AppendStatus.BUFFERED,
    ) -> None:
        self._count_loss(enc.stream, reason)
        self._notify(
            ClipOutcome(enc.stream, float(enc.start), AppendStatus.LOST, previous, reason, error, fatal)
        )

    def _count_loss(self, stream: str, reason: str, count: int = 1) -> None:
        self._unrecorded.setdefault(stream, Counter())[reason] += count

    async def _flush_loop(self) -> None:
        delay = self.retry_initial
        while self._pending:
            head = self._pending[0]
            status: AppendStatus | None = None
            failed = False
            async with self._lock:
                self._writing = head
                try:
                    await self._recheck_acknowledged()
                    status = await self._write(head)
                except MemoryStoreError as exc:
                    if exc.transient:
                        log.debug("still cannot store (%s), retrying in %.2f s", exc, delay)
                        self._suspect(exc)
                        failed = True
                    else:
                        log.error("dropping a buffered clip Redis refused: %s", exc)
                        self.rejected += 1
                        self._lose(head, REFUSED, error=str(exc), fatal=isinstance(exc, FATAL))
                finally:
                    self._writing = None
                if not failed:
                    delay = self.retry_initial
                    if self._pending and self._pending[0] is head:
                        self._pending.popleft()
                    if status is not None:
                        self._acked(head)
                        self._notify(ClipOutcome(head.stream, float(head.start), status))
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
        await self._record_losses()
        log.info("append buffer flushed")

    # -- acknowledged clips, checked again after an outage ---------------------------------------

    def _acked(self, enc: EncodedClip) -> None:
        """Keep an acknowledged clip for `confirm_s`: if Redis goes away or cannot persist meanwhile, it
        may come back without it (a disk that failed, `appendfsync everysec` on a machine that died)."""
        if self.confirm_s <= 0:
            return
        now = time.monotonic()
        self._unconfirmed.append((now, enc))
        while self._unconfirmed and (
            now - self._unconfirmed[0][0] > self.confirm_s or len(self._unconfirmed) > UNCONFIRMED_MAX
        ):
            self._unconfirmed.popleft()

    def _suspect(self, exc: MemoryStoreError) -> None:
        """Redis went away or cannot persist: what it acknowledged lately is checked once it is back."""
        if not isinstance(exc, MemoryUnavailableError | PersistenceError) or not self._unconfirmed:
            return
        now = time.monotonic()
        self._recheck.extend(enc for t, enc in self._unconfirmed if now - t <= self.confirm_s)
        self._unconfirmed.clear()

    async def _recheck_acknowledged(self) -> None:
        """Append the clips to check again (a duplicate then means Redis kept it). Raises the transient
        errors (Redis still away: check later); a clip that cannot be put back is lost and counted."""
        while self._recheck:
            enc = self._recheck[0]
            try:
                status = await self._write(enc, recheck=True)
            except MemoryStoreError as exc:
                if exc.transient:
                    raise
                self._recheck.popleft()
                log.error("Redis lost the clip of %r at %s s after acknowledging it: %s", enc.stream,
                          enc.start, exc)  # fmt: skip
                self._lose(enc, LOST_BY_REDIS, error=str(exc), previous=AppendStatus.STORED)
                continue
            self._recheck.popleft()
            if status == AppendStatus.STORED:
                log.warning("Redis had lost the clip of %r at %s s after acknowledging it: stored it again",
                            enc.stream, enc.start)  # fmt: skip

    # -- losses ------------------------------------------------------------------------------------

    async def record_loss(self, stream: str, count: int, reason: str) -> None:
        """Count `count` clips of `stream` lost by the caller (ingest: backpressure, encoder, ...) in the
        stream's meta (`lost`, `lost:<reason>`), now or, if Redis is away, with the next state report."""
        check_stream_name(stream)
        if count <= 0:
            return
        if not reason or not reason.replace("_", "").isalnum():
            raise InvalidRequestError(f"a loss reason is a short word (letters, digits, _), not {reason!r}")
        self._count_loss(stream, reason, count)
        await self._record_losses()

    def unrecorded_losses(self, stream: str) -> int:
        return sum(self._unrecorded.get(stream, Counter()).values())

    def _loss_fields(self, pipe: Any, stream: str) -> Counter[str] | None:
        losses = self._unrecorded.get(stream)
        if not losses:
            return None
        meta = StreamKeys(self.prefix, stream).meta
        for reason, n in losses.items():
            pipe.hincrby(meta, "lost", n)
            pipe.hincrby(meta, LOSS_PREFIX + reason, n)
            if reason == BUFFER_FULL:
                pipe.hincrby(meta, "dropped", n)  # the field this count had before `lost` existed
        return Counter(losses)

    def _recorded(self, stream: str, written: Counter[str]) -> None:
        losses = self._unrecorded.get(stream)
        if losses is None:
            return
        losses.subtract(written)
        for reason in [r for r, n in losses.items() if n <= 0]:
            del losses[reason]
        if not losses:
            del self._unrecorded[stream]

    async def _record_losses(self) -> None:
        for stream in list(self._unrecorded):
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    written = self._loss_fields(pipe, stream)
                    if written is None:
                        continue
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.debug("cannot count the losses of %r yet (%s)", stream, exc)
                continue
            self._recorded(stream, written)

    # -- waiting for and giving up buffered clips --------------------------------------------------

    async def flush(self, timeout: float | None = None, *, stream: str | None = None) -> bool:
        """Wait until every buffered clip (of `stream`) is written. False if `timeout` s passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def busy() -> bool:
            if stream is not None:
                return any(p.stream == stream for p in self._pending)
            return bool(self._pending) or (self._flusher is not None and not self._flusher.done())

        while busy():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def discard(self, stream: str, reason: str = SHUTDOWN) -> int:
        """Give up the buffered clips of `stream` (counted as lost for `reason`); returns how many."""
        keep: deque[EncodedClip] = deque()
        lost = 0
        for enc in self._pending:
            if enc.stream == stream and enc is not self._writing:
                self._lose(enc, reason)
                lost += 1
            else:
                keep.append(enc)
        self._pending = keep
        return lost

    async def set_state(
        self,
        stream: str,
        state: StreamState | str,
        *,
        since: float | None = None,
        source: str | None = None,
        error: str | None = None,
        metrics: IngestCounters | None = None,
        **fields: str | float | int,
    ) -> None:
        """Report a stream's ingest status: its state, since when (unix time; default now), the source
        (stored with credentials masked), the error that made it retry or stop, its metrics, and any
        free-form fields. Ingest calls it on every change and every few seconds; any process reads it
        back with `status`. Creates the stream's entry if needed. Losses not yet counted in the meta
        (`record_loss`, a full buffer) are counted in the same transaction.

        Raises InvalidRequestError for an unknown state or a field the memory keeps itself,
        MemoryUnavailableError when Redis cannot be reached (nothing is buffered: the next report
        replaces this one), and the named refusals. Out of memory, a final state (stopped, error) is
        still written by a script allowed to (Redis 7+), so `memory ls` can say why the stream stopped.
        """
        keys = self.keys(stream)
        try:
            state = StreamState(state)
        except ValueError:
            names = ", ".join(s.value for s in StreamState)
            raise InvalidRequestError(f"state must be one of {names}, not {state!r}") from None
        bad = sorted(k for k in fields if k in RESERVED_META or k.startswith(LOSS_PREFIX))
        if bad:
            raise InvalidRequestError(f"meta fields {bad} are kept by the memory itself")
        now = time.time()
        mapping: dict[str, str] = {k: str(v) for k, v in fields.items()}
        mapping.update(state=state.value, state_since=repr(since or now), reported=repr(now))
        if source is not None:
            mapping["source"] = redact(source)
        if error is not None:
            mapping["error"] = error
        if metrics is not None:
            mapping["metrics"] = metrics.to_json()
        written: Counter[str] | None = None
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(keys.meta, mapping=mapping)  # type: ignore[arg-type]
                pipe.hsetnx(keys.meta, "created", repr(now))
                pipe.sadd(streams_key(self.prefix), stream)
                written = self._loss_fields(pipe, stream)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            named = await self._refusal(exc, f"reporting the state of stream {stream!r}", keys)
            if isinstance(named, MemoryFullError) and not state.active:
                await self._report_out_of_memory(keys, mapping, named)
                return
            raise named from exc
        if written is not None:
            self._recorded(stream, written)

    async def _report_out_of_memory(
        self, keys: StreamKeys, mapping: dict[str, str], error: MemoryFullError
    ) -> None:
        small = {k: v for k, v in mapping.items() if k in ("state", "state_since", "reported", "error")}
        args = [item for pair in small.items() for item in pair]
        try:
            await self._report_oom_script(keys=[keys.meta], args=args)
        except (RedisError, OSError):
            raise error from None
        log.warning("Redis is out of memory: wrote only the final state of %r", keys.name)

    @_named("reading the status")
    async def status(self, stream: str) -> StreamStatus:
        """What ingest last reported about `stream` (`set_state`), from whichever process wrote it.

        UnknownStreamError when the stream has no entry or never had a state reported.
        """
        fields = ["state", "state_since", "reported", "source", "error", "metrics"]
        raw = await self.client.hmget(self.keys(stream).meta, fields)
        values = dict(zip(fields, (_s(v) if v is not None else None for v in raw), strict=True))
        if values["state"] is None:
            raise UnknownStreamError(stream)
        try:
            state = StreamState(values["state"])
            metrics = IngestCounters.from_json(values["metrics"]) if values["metrics"] else IngestCounters()
            since = float(values["state_since"] or 0.0)
            reported = float(values["reported"] or since)
        except (ValueError, TypeError) as exc:
            raise CorruptEntryError(f"stream {stream!r}: its status in meta cannot be read ({exc})") from None
        return StreamStatus(
            stream=stream,
            state=state,
            since=since,
            reported=reported,
            source=values["source"] or "",
            error=values["error"] or "",
            metrics=metrics,
        )

    @_named("deleting")
    async def delete(self, stream: str, *, missing_ok: bool = False) -> bool:
        """Remove every key of the stream (and its buffered clips). UnknownStreamError unless `missing_ok`."""
        keys = self.keys(stream)
        self._pending = deque(p for p in self._pending if p.stream != stream)
        self._unrecorded.pop(stream, None)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.unlink(*keys.all())
            pipe.srem(streams_key(self.prefix), stream)
            removed, _ = await pipe.execute()
        if not removed and not missing_ok:
            raise UnknownStreamError(stream)
        return bool(removed)

    # -- reading ---------------------------------------------------------------------------------

    @_named("listing the streams")
    async def streams(self) -> list[str]:
        names = await self.client.smembers(streams_key(self.prefix))
        return sorted(_s(n) for n in names)

    @_named("reading the meta")
    async def meta(self, stream: str) -> dict[str, str]:
        raw = await self.client.hgetall(self.keys(stream).meta)
        if not raw:
            raise UnknownStreamError(stream)
        return {_s(k): _s(v) for k, v in raw.items()}

    @_named("reading the stats")
    async def stats(self, stream: str) -> StreamStats:
        keys = self.keys(stream)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.meta)
            pipe.xlen(keys.clips)
            pipe.xrange(keys.clips, "-", "+", count=1)
            pipe.get(keys.lease)
            raw_meta, clips, first, lease = await pipe.execute()
        if not raw_meta:
            raise UnknownStreamError(stream)
        meta = {_s(k): _s(v) for k, v in raw_meta.items()}
        first_start = float(_s(first[0][1].get(b"s"))) if first else None
        unrecorded = self._unrecorded.get(stream, Counter())
        losses = Counter(
            {k[len(LOSS_PREFIX) :]: int(v) for k, v in meta.items() if k.startswith(LOSS_PREFIX)}
        )
        losses.update(unrecorded)
        return StreamStats(
            stream=stream,
            clips=int(clips),
            bytes=int(meta.get("bytes", 0)),
            first_start=first_start,
            last_end=float(meta["last_end"]) if first and "last_end" in meta else None,
            trimmed_clips=int(meta.get("trimmed_clips", 0)),
            trimmed_bytes=int(meta.get("trimmed_bytes", 0)),
            dropped=int(meta.get("dropped", 0)) + unrecorded.get(BUFFER_FULL, 0),
            duplicates=int(meta.get("duplicates", 0)),
            encoder_id=meta.get("encoder_id", ""),
            state=meta.get("state", ""),
            lost=int(meta.get("lost", 0)) + sum(unrecorded.values()),
            losses=dict(sorted(losses.items())),
            error=meta.get("error", ""),
            writer=holder_of(_s(lease)) if lease else "",
            reported=float(meta.get("reported", 0) or 0),
        )

    async def _resolve(
        self, stream: str, start: float | None, end: float | None, last: float | None, encoder_id: str | None
    ) -> tuple[StreamKeys, float | None, float | None]:
        """Check a read request against the stream's meta; returns the window as absolute times."""
        keys = self.keys(stream)
        if start is not None:
            start = check_time(start, "start")
        if end is not None:
            end = check_time(end, "end")
        if start is not None and end is not None and start > end:
            raise InvalidRequestError(f"start ({start}) is after end ({end})")
        if last is not None:
            last = check_time(last, "last")
            if start is not None or end is not None:
                raise InvalidRequestError("give either last=SECONDS or start/end, not both")
            if last <= 0:
                raise InvalidRequestError(f"last must be > 0 seconds, not {last}")
        if encoder_id is not None and (not isinstance(encoder_id, str) or not encoder_id):
            raise InvalidRequestError("encoder_id must be a non-empty string")
        fields = await self.client.hmget(keys.meta, ["encoder_id", "last_end", "created"])
        stored_encoder, last_end, created = (_s(f) if f is not None else None for f in fields)
        if created is None and stored_encoder is None:
            raise UnknownStreamError(stream)
        if encoder_id is not None and stored_encoder and stored_encoder != encoder_id:
            raise EncoderMismatchError(stream, stored_encoder, encoder_id)
        if last is not None:
            if last_end is None:
                raise EmptyStreamError(f"stream {stream!r} holds no clips yet")
            start, end = float(last_end) - last, None
        return keys, start, end

    async def _outside(
        self, keys: StreamKeys, start: float | None, end: float | None
    ) -> RangeOutsideMemoryError | None:
        """Why [start, end) holds no clip: an error if it misses the memory's span, None for a gap inside."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xrange(keys.clips, "-", "+", count=1)
            pipe.hget(keys.meta, "last_end")
            pipe.hget(keys.meta, "trimmed_clips")
            first, last_end, trimmed = await pipe.execute()
        asked = f"[{'-inf' if start is None else start}, {'+inf' if end is None else end})"
        if not first:
            return EmptyStreamError(f"stream {keys.name!r} holds no clips yet (asked for {asked})")
        first_start = float(_s(first[0][1][b"s"]))
        if (end is None or end > first_start) and (start is None or start < float(_s(last_end))):
            return None  # inside the span, between clips (a pause in the stream): an empty answer
        note = ""
        if trimmed and int(trimmed) > 0 and end is not None and end <= first_start:
            note = "; older clips were trimmed by retention"
        return RangeOutsideMemoryError(
            f"no clip of stream {keys.name!r} starts in {asked}: the memory holds clips starting from "
            f"{first_start} to before {_s(last_end)} s{note}"
        )

    @_named("listing the clips")
    async def list_clips(
        self, stream: str, *, start: float | None = None, end: float | None = None, last: float | None = None
    ) -> list[ClipInfo]:
        """Every clip whose start lies in [start, end), without tokens (cheap: small entries only)."""
        keys, start, end = await self._resolve(stream, start, end, last, None)
        return [info for info, _ in await self._entries(keys, start, end)]

    async def _entries(self, keys: StreamKeys, start: float | None, end: float | None) -> list[_Entry]:
        lo, hi = range_ids(start, end)
        entries = await self.client.xrange(keys.clips, lo, hi)
        if not entries:
            error = await self._outside(keys, start, end)
            if error is not None:
                raise error
            return []
        return _decode_entries(keys, entries)

    @_named("reading a window")
    async def read_window(
        self,
        stream: str,
        *,
        encoder_id: str,
        start: float | None = None,
        end: float | None = None,
        last: float | None = None,
        budget: int | None = None,
        recent: int = 0,
        thumbnails: bool = False,
        strict: bool = False,
    ) -> list[Clip]:
        """Clips whose start lies in [start, end) (or in the last `last` seconds before the newest clip's
        end), in time order, tokens decoded. With `budget`, at most that many clips, picked uniformly
        over the window (`sampling.uniform_indices`): deterministic, first and last clip included.
        With `recent=K` as well, the newest K clips are always among them and the rest of the budget
        is spread over the older ones (`sampling.recent_indices`).

        Raises UnknownStreamError, InvalidRequestError, EncoderMismatchError, RangeOutsideMemoryError
        (no clip starts in the window). A corrupt entry is logged and skipped, or raises
        CorruptEntryError when `strict`.
        """
        if budget is not None:
            budget = check_budget(budget)
        recent = check_recent(recent, budget)
        check_encoder_id(encoder_id)
        keys, start, end = await self._resolve(stream, start, end, last, encoder_id)
        if budget is None:
            entries = await self._entries(keys, start, end)
        else:
            entries = await self._sampled_entries(keys, start, end, budget, recent)
        return await self._with_tokens(keys, entries, encoder_id, thumbnails, strict)

    async def _sampled_entries(
        self, keys: StreamKeys, start: float | None, end: float | None, budget: int, recent: int = 0
    ) -> list[_Entry]:
        """The window's ids first (one string), then only the chosen entries' fields."""
        lo, hi = range_ids(start, end)
        ids = _s(await self._window_script(keys=[keys.clips], args=[lo, hi])).split()
        if len(ids) <= budget:
            return await self._entries(keys, start, end)
        chosen = [ids[i] for i in recent_indices(len(ids), budget, recent)]
        async with self.client.pipeline(transaction=False) as pipe:
            for eid in chosen:
                pipe.xrange(keys.clips, eid, eid, count=1)
            replies = await pipe.execute()
        # an entry trimmed between the two round trips is simply absent
        return _decode_entries(keys, [reply[0] for reply in replies if reply])

    async def _with_tokens(
        self, keys: StreamKeys, entries: Sequence[_Entry], encoder_id: str, thumbnails: bool, strict: bool
    ) -> list[Clip]:
        clips: list[Clip] = []
        for i in range(0, len(entries), FETCH_CHUNK):
            chunk = entries[i : i + FETCH_CHUNK]
            ids = [info.id for info, _ in chunk]
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.tokens, ids)
                if thumbnails:
                    pipe.hmget(keys.thumbs, ids)
                replies = await pipe.execute()
            thumbs = replies[1] if thumbnails else [None] * len(chunk)
            for (info, tail), blob, thumb in zip(chunk, replies[0], thumbs, strict=True):
                if info.encoder_id != encoder_id:
                    raise EncoderMismatchError(keys.name, info.encoder_id, encoder_id)
                try:
                    tokens = decode_tokens(info, blob, tail)
                except CorruptEntryError as exc:
                    if strict:
                        raise
                    log.error("skipping a corrupt clip: %s", exc)
                    continue
                if thumb is not None:
                    info.thumbnail = thumb
                clips.append(to_clip(info, tokens))
        return clips

    async def replay(
        self,
        stream: str,
        start: float | None = None,
        end: float | None = None,
        *,
        encoder_id: str,
        batch: int = 64,
        thumbnails: bool = False,
        strict: bool = False,
    ) -> AsyncIterator[Clip]:
        """Every clip starting in [start, end), in time order, `batch` clips per Redis round trip.

        Clips appended during the replay are included if they start before `end`.
        """
        check_encoder_id(encoder_id)
        async for entries, keys in self._batches(stream, start, end, batch, thumbnails=False):
            for clip in await self._with_tokens(keys, entries, encoder_id, thumbnails, strict):
                yield clip

    async def replay_info(
        self,
        stream: str,
        start: float | None = None,
        end: float | None = None,
        *,
        batch: int = 256,
        thumbnails: bool = False,
    ) -> AsyncIterator[ClipInfo]:
        """Like `replay` without tokens (and without the encoder guard): timelines, thumbnail export."""
        async for entries, _ in self._batches(stream, start, end, batch, thumbnails=thumbnails):
            for info, _tail in entries:
                yield info

    async def _batches(
        self, stream: str, start: float | None, end: float | None, batch: int, *, thumbnails: bool
    ) -> AsyncIterator[tuple[list[_Entry], StreamKeys]]:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
            raise InvalidRequestError(f"batch must be a whole number from 1 to 10000, not {batch!r}")
        try:
            keys, start, end = await self._resolve(stream, start, end, None, None)
        except (RedisError, OSError) as exc:
            raise await self._refusal(exc, f"replaying stream {stream!r}", None) from exc
        lo, hi = range_ids(start, end)
        first = True
        while True:
            try:
                entries = await self.client.xrange(keys.clips, lo, hi, count=batch)
            except (RedisError, OSError) as exc:
                raise await self._refusal(exc, f"replaying stream {stream!r}", keys) from exc
            if not entries:
                error = await self._outside(keys, start, end) if first else None
                if error is not None:
                    raise error
                return
            first = False
            decoded = _decode_entries(keys, entries)
            if thumbnails and decoded:
                blobs = await self.client.hmget(keys.thumbs, [info.id for info, _ in decoded])
                for (info, _), blob in zip(decoded, blobs, strict=True):
                    info.thumbnail = blob if isinstance(blob, bytes) else b""
            yield decoded, keys
            lo = f"{id_ms(_s(entries[-1][0]))}-{ENTRY_SEQ + 1}"  # the id just after the last one read
            if len(entries) < batch:
                return

    # -- life cycle ------------------------------------------------------------------------------

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Flush what is buffered (up to `flush_timeout` s), let go of the leases and the connection.
        Clips still buffered then are lost: counted, and reported to the listeners."""
        if self._pending and not await self.flush(flush_timeout):
            log.error("closing with %d clips still buffered: they are lost", len(self._pending))
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._writing = None
        for stream in {p.stream for p in self._pending}:
            self.discard(stream, SHUTDOWN)
        if self._unrecorded:
            await self._record_losses()
        for stream in list(self._leases):
            await self.release(stream)
        if self._unrecorded:
            log.error("could not count these losses in Redis: %s", dict(self._unrecorded))
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> VideoMemory:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
