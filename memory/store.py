"""`VideoMemory`: the rolling, Redis-backed memory of every stream's clips (docs/memory.md).

One instance per process is enough; it is safe to share between tasks of one event loop. Several
processes may use the same Redis at once: every append (and its retention accounting) is one Lua
script, so concurrent writers keep the counters exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flashlive.memory.codec import EncodedClip, decode_info, decode_tokens, encode_clip, entry_tail, to_clip
from flashlive.memory.errors import (
    CorruptEntryError,
    EmptyStreamError,
    EncoderMismatchError,
    InvalidRequestError,
    MemoryStoreError,
    MemoryUnavailableError,
    OutOfOrderClipError,
    RangeOutsideMemoryError,
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
from flashlive.memory.redact import redact
from flashlive.memory.sampling import check_budget, check_recent, recent_indices
from flashlive.memory.scripts import APPEND, WINDOW_IDS
from flashlive.memory.settings import RedisSettings, Retention
from flashlive.memory.types import Clip, ClipInfo, IngestCounters, StreamState, StreamStats, StreamStatus

log = logging.getLogger(__name__)

CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
# meta fields the memory writes itself (the append script, or set_state's own arguments)
RESERVED_META = frozenset(
    {"encoder_id", "bytes", "last_start", "last_end", "last_id", "updated", "created", "trimmed_clips",
     "trimmed_bytes", "dropped", "duplicates", "retention_ms", "max_bytes", "state", "state_since",
     "reported", "source", "error", "metrics"}
)  # fmt: skip
FETCH_CHUNK = 256  # token blobs per HMGET: bounds the size of one reply


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
    DUPLICATE = "duplicate"  # this clip (same id, same end) was already stored: nothing written
    BUFFERED = "buffered"  # Redis unreachable: held locally, written in order after reconnect


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


def check_encoder_id(encoder_id: object) -> None:
    """Token reads must name the encoder that will use them, so the guard can refuse a mismatch."""
    if not isinstance(encoder_id, str) or not encoder_id:
        raise InvalidRequestError("encoder_id is required to read tokens (the encoder that will use them)")


class VideoMemory:
    """Async access to the memory. Build it with `VideoMemory.from_settings(RedisSettings)` (or
    `from_url(url)`, or `VideoMemory(client)`); `retention` applies to this instance's appends and
    defaults to keeping everything, as the config does."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        retention: Retention | None = None,
        buffer_size: int = 512,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        owns_client: bool = False,
    ) -> None:
        if buffer_size < 1:
            raise InvalidRequestError(f"buffer_size must be >= 1, not {buffer_size}")
        self.client = client
        self.prefix = prefix
        self.retention = retention or Retention()
        self.buffer_size = buffer_size
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._owns_client = owns_client
        self._append_script = client.register_script(APPEND)
        self._window_script = client.register_script(WINDOW_IDS)
        self._lock = asyncio.Lock()
        self._pending: deque[EncodedClip] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._unrecorded_drops: Counter[str] = Counter()
        self.dropped = 0  # clips lost to buffer overflow by this instance
        self.rejected = 0  # buffered clips Redis refused on replay (out of order, encoder)

    @classmethod
    def from_settings(cls, settings: RedisSettings, **kwargs: Any) -> VideoMemory:
        """A memory on `settings.url` with `settings.prefix` (the embedded server: `open_memory`)."""
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

    # -- writing ---------------------------------------------------------------------------------

    async def append(self, clip: Clip) -> AppendStatus:
        """Store one clip. Never raises for a lost connection: the clip is buffered and retried in order.

        Raises InvalidClipError (bad clip), EncoderMismatchError (the stream holds another encoder's
        tokens) or OutOfOrderClipError (does not start after the stream's newest clip).
        """
        enc = encode_clip(clip)
        if self._pending:
            return self._buffer(enc)
        async with self._lock:
            if self._pending:  # a flush started while we waited
                return self._buffer(enc)
            try:
                return await self._write(enc)
            except CONNECTION_ERRORS as exc:
                log.warning("redis unreachable (%s): buffering clips of %r", exc, enc.stream)
                return self._buffer(enc)

    async def _write(self, enc: EncodedClip) -> AppendStatus:
        keys = StreamKeys(self.prefix, enc.stream)
        retention_ms, max_bytes = self.retention.script_args
        args: list[Any] = [
            enc.id_ms, enc.stream, enc.start, enc.end, enc.frames, enc.encoder_id, "float16", enc.shape,
            enc.wall_start, enc.extra, enc.tokens, enc.thumbnail, retention_ms, max_bytes, repr(time.time()),
            enc.tail,
        ]  # fmt: skip
        try:
            reply = await self._append_script(
                keys=[keys.clips, keys.tokens, keys.thumbs, keys.meta, streams_key(self.prefix)], args=args
            )
        except CONNECTION_ERRORS:
            raise
        except RedisError as exc:
            raise MemoryStoreError(f"redis refused the clip of {enc.stream!r} at {enc.start}: {exc}") from exc
        status, detail = _s(reply[0]), _s(reply[1])
        if status == "stored":
            return AppendStatus.STORED
        if status == "duplicate":
            return AppendStatus.DUPLICATE
        if status == "encoder":
            raise EncoderMismatchError(enc.stream, detail, enc.encoder_id)
        newest = detail.split("-", 1)[0]
        if status == "conflict":
            raise OutOfOrderClipError(
                f"stream {enc.stream!r} already holds a different clip at {enc.start} s (id {enc.id})"
            )
        raise OutOfOrderClipError(
            f"clip of stream {enc.stream!r} starts at {enc.start} s, not after the newest clip "
            f"({int(newest) / 1000 if newest.isdigit() else newest} s): clips must be appended in time order"
        )

    def _buffer(self, enc: EncodedClip) -> AppendStatus:
        if len(self._pending) >= self.buffer_size:
            lost = self._pending.popleft()
            self.dropped += 1
            self._unrecorded_drops[lost.stream] += 1
            log.error(
                "append buffer full (%d): dropped the clip of %r at %s",
                self.buffer_size,
                lost.stream,
                lost.start,
            )
        self._pending.append(enc)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="memory-flush")
        return AppendStatus.BUFFERED

    async def _flush_loop(self) -> None:
        delay = self.retry_initial
        while self._pending:
            head = self._pending[0]
            async with self._lock:
                try:
                    await self._write(head)
                except CONNECTION_ERRORS as exc:
                    log.debug("still no redis (%s), retrying in %.2f s", exc, delay)
                    failed = True
                except MemoryStoreError as exc:
                    log.error("dropping a buffered clip Redis refused: %s", exc)
                    self.rejected += 1
                    failed = False
                else:
                    failed = False
                if not failed:
                    delay = self.retry_initial
                    if self._pending and self._pending[0] is head:  # overflow may have dropped it already
                        self._pending.popleft()
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
        await self._record_drops()
        log.info("append buffer flushed")

    async def _record_drops(self) -> None:
        for stream, count in list(self._unrecorded_drops.items()):
            with contextlib.suppress(*CONNECTION_ERRORS):
                keys = StreamKeys(self.prefix, stream)
                await self.client.hincrby(keys.meta, "dropped", count)
                self._unrecorded_drops[stream] -= count
                if self._unrecorded_drops[stream] <= 0:
                    del self._unrecorded_drops[stream]

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every buffered clip is written. False if `timeout` s passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending or (self._flusher is not None and not self._flusher.done()):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

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
        back with `status`. Creates the stream's entry if needed.

        Raises InvalidRequestError for an unknown state or a field the memory keeps itself, and
        MemoryUnavailableError when Redis cannot be reached (nothing is buffered: the next report
        replaces this one).
        """
        keys = self.keys(stream)
        try:
            state = StreamState(state)
        except ValueError:
            names = ", ".join(s.value for s in StreamState)
            raise InvalidRequestError(f"state must be one of {names}, not {state!r}") from None
        bad = sorted(set(fields) & RESERVED_META)
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
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(keys.meta, mapping=mapping)  # type: ignore[arg-type]
                pipe.hsetnx(keys.meta, "created", repr(now))
                pipe.sadd(streams_key(self.prefix), stream)
                await pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise MemoryUnavailableError(f"cannot report the state of {stream!r}: {exc}") from exc
        except RedisError as exc:
            raise MemoryStoreError(f"redis refused the state of {stream!r}: {exc}") from exc

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

    async def delete(self, stream: str, *, missing_ok: bool = False) -> bool:
        """Remove every key of the stream (and its buffered clips). UnknownStreamError unless `missing_ok`."""
        keys = self.keys(stream)
        self._pending = deque(p for p in self._pending if p.stream != stream)
        self._unrecorded_drops.pop(stream, None)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.unlink(*keys.all())
            pipe.srem(streams_key(self.prefix), stream)
            removed, _ = await pipe.execute()
        if not removed and not missing_ok:
            raise UnknownStreamError(stream)
        return bool(removed)

    # -- reading ---------------------------------------------------------------------------------

    async def streams(self) -> list[str]:
        names = await self.client.smembers(streams_key(self.prefix))
        return sorted(_s(n) for n in names)

    async def meta(self, stream: str) -> dict[str, str]:
        raw = await self.client.hgetall(self.keys(stream).meta)
        if not raw:
            raise UnknownStreamError(stream)
        return {_s(k): _s(v) for k, v in raw.items()}

    async def stats(self, stream: str) -> StreamStats:
        keys = self.keys(stream)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.meta)
            pipe.xlen(keys.clips)
            pipe.xrange(keys.clips, "-", "+", count=1)
            raw_meta, clips, first = await pipe.execute()
        if not raw_meta:
            raise UnknownStreamError(stream)
        meta = {_s(k): _s(v) for k, v in raw_meta.items()}
        first_start = float(_s(first[0][1].get(b"s"))) if first else None
        return StreamStats(
            stream=stream,
            clips=int(clips),
            bytes=int(meta.get("bytes", 0)),
            first_start=first_start,
            last_end=float(meta["last_end"]) if first and "last_end" in meta else None,
            trimmed_clips=int(meta.get("trimmed_clips", 0)),
            trimmed_bytes=int(meta.get("trimmed_bytes", 0)),
            dropped=int(meta.get("dropped", 0)) + self._unrecorded_drops.get(stream, 0),
            duplicates=int(meta.get("duplicates", 0)),
            encoder_id=meta.get("encoder_id", ""),
            state=meta.get("state", ""),
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
        keys, start, end = await self._resolve(stream, start, end, None, None)
        lo, hi = range_ids(start, end)
        first = True
        while True:
            entries = await self.client.xrange(keys.clips, lo, hi, count=batch)
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
        """Flush what is buffered (up to `flush_timeout` s), then let go of the connection."""
        if self._pending and not await self.flush(flush_timeout):
            log.error("closing with %d clips still buffered: they are lost", len(self._pending))
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> VideoMemory:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
