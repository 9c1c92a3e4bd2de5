"""Redis key names, stream-name rules, entry ids. The layout is documented in docs/memory.md."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from flashlive.memory.errors import InvalidRequestError

DEFAULT_PREFIX = "fl"
# The one stream-name rule: the memory's keys, the config's stream names and WHIP URLs all use it.
STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
NAME_RULE = "use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
# Entry ids are "<start ms>-1": Redis refuses the id 0-0, and a file that starts at 0 s needs one.
ENTRY_SEQ = 1
MAX_ID_MS = 2**53  # times are floats: beyond this their milliseconds are not exact


@dataclass(frozen=True)
class StreamKeys:
    """All keys of one stream share the hash tag `{name}`: a Redis Cluster keeps them on one shard."""

    prefix: str
    name: str

    @property
    def clips(self) -> str:  # Stream: one small entry per clip, id "<start ms>-1"
        return f"{self.prefix}:{{{self.name}}}:clips"

    @property
    def tokens(self) -> str:  # Hash: entry id -> raw token bytes
        return f"{self.prefix}:{{{self.name}}}:tokens"

    @property
    def thumbs(self) -> str:  # Hash: entry id -> JPEG thumbnail
        return f"{self.prefix}:{{{self.name}}}:thumbs"

    @property
    def meta(self) -> str:  # Hash: encoder, source, state, counters
        return f"{self.prefix}:{{{self.name}}}:meta"

    @property
    def lease(self) -> str:  # String with a TTL: the token of the one ingest writing the stream
        return f"{self.prefix}:{{{self.name}}}:lease"

    def all(self) -> list[str]:
        return [self.clips, self.tokens, self.thumbs, self.meta, self.lease]


def streams_key(prefix: str) -> str:
    """Set of stream names (not hash-tagged: it spans streams)."""
    return f"{prefix}:streams"


def check_stream_name(name: object) -> str:
    if not isinstance(name, str) or not STREAM_NAME.match(name):
        raise InvalidRequestError(f"bad stream name {name!r}: {NAME_RULE}")
    return name


def check_time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{what} must be a number of seconds, not {value!r}")
    t = float(value)
    if not math.isfinite(t):
        raise InvalidRequestError(f"{what} must be finite, not {t}")
    return t


def time_to_ms(t: float) -> int:
    """Seconds on the stream timeline -> entry-id milliseconds (rounded to nearest)."""
    return round(t * 1000.0)


def entry_id(start: float) -> str:
    return f"{time_to_ms(start)}-{ENTRY_SEQ}"


def id_ms(entry: str) -> int:
    return int(entry.split("-", 1)[0])


def range_ids(start: float | None, end: float | None) -> tuple[str, str]:
    """XRANGE bounds for clips whose start is in [start, end) at millisecond resolution."""
    lo = "-" if start is None else str(max(0, time_to_ms(start)))
    if end is None:
        return lo, "+"
    hi_ms = time_to_ms(end) - 1  # "<ms>" alone means <ms>-<max seq>: inclusive of that millisecond
    return lo, str(hi_ms) if hi_ms >= 0 else "0-0"


# -- query workers: jobs, results, watches, events (docs/workers.md) ------------------------------

JOBS_GROUP = "workers"  # the consumer group every query worker reads the job stream through


def jobs_key(prefix: str) -> str:
    """Stream of ask jobs (one consumer group, `JOBS_GROUP`). Acked entries are deleted."""
    return f"{prefix}:jobs"


def workers_key(prefix: str) -> str:
    """Set of worker names that have sent a heartbeat (dead ones are removed when noticed)."""
    return f"{prefix}:workers"


def worker_key(prefix: str, name: str) -> str:
    """String with a TTL: a worker's heartbeat (JSON `WorkerInfo`)."""
    return f"{prefix}:worker:{name}"


@dataclass(frozen=True)
class JobKeys:
    """A job's keys share the hash tag `{job id}`, so its scripts are legal on a Redis Cluster."""

    prefix: str
    job: str

    @property
    def state(self) -> str:  # Hash: status, attempt, owner, cancel, final (terminal record id), times
        return f"{self.prefix}:job:{{{self.job}}}:state"

    @property
    def results(self) -> str:  # Stream: pieces, then one final or error record (field `m`, JSON)
        return f"{self.prefix}:job:{{{self.job}}}:out"


@dataclass(frozen=True)
class WatchKeys:
    """A stream's watch keys carry the stream's hash tag: the tick scripts also read its clips."""

    prefix: str
    stream: str

    @property
    def watches(self) -> str:  # Hash: watch id -> Watch (JSON)
        return f"{self.prefix}:{{{self.stream}}}:watches"

    @property
    def states(self) -> str:  # Hash: watch id -> WatchState (JSON): the event life cycle
        return f"{self.prefix}:{{{self.stream}}}:watchstate"

    @property
    def ticks(self) -> str:  # Hash: done (last evaluated clip id), inflight, owner, lease, counters
        return f"{self.prefix}:{{{self.stream}}}:ticks"

    @property
    def events(self) -> str:  # Stream: Event (JSON, field `m`); clients resume from the last id seen
        return f"{self.prefix}:{{{self.stream}}}:events"

    @property
    def clips(self) -> str:
        return StreamKeys(self.prefix, self.stream).clips

    @property
    def meta(self) -> str:
        return StreamKeys(self.prefix, self.stream).meta


def watch_index_key(prefix: str) -> str:
    """Hash: watch id -> stream name (delete and look up by id alone)."""
    return f"{prefix}:watches"


def watched_key(prefix: str) -> str:
    """Set of streams that have at least one watch: what workers schedule ticks for."""
    return f"{prefix}:watched"


def events_channel(prefix: str) -> str:
    """Pub/sub channel on which every event is published live (JSON: `{"id": entry id, "event": ...}`)."""
    return f"{prefix}:events:live"


# -- streams registered at run time (memory/registry.py) -----------------------------------------


def registry_key(prefix: str) -> str:
    """Hash: stream name -> `StreamRegistration` (JSON): pulled streams added through the API."""
    return f"{prefix}:ingest:streams"


def registry_channel(prefix: str) -> str:
    """Pub/sub channel: a wake-up for ingest processes after every change of the registry."""
    return f"{prefix}:ingest:changes"


def owner_key(prefix: str, stream: str) -> str:
    """String with a TTL: the ingest process that runs a registered stream (its lease)."""
    return f"{prefix}:{{{stream}}}:owner"
