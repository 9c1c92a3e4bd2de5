"""Errors the memory raises. Each says what was asked and what the store holds; none changes the store."""

from __future__ import annotations


class MemoryStoreError(Exception):
    """Base class for every error of the video memory. `transient`: waiting may help (Redis away, out of
    memory, cannot persist); the rest are refusals that stay until someone changes something."""

    transient = False


class InvalidRequestError(MemoryStoreError, ValueError):
    """A malformed request: bad stream name, start > end, non-finite time, bad budget, ..."""


class InvalidClipError(InvalidRequestError):
    """A clip that cannot be stored as given (bad times, tokens, frame count...)."""


class UnknownStreamError(MemoryStoreError, KeyError):
    """The stream has never been written (or was deleted)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.stream = stream

    def __str__(self) -> str:
        return f"unknown stream {self.stream!r}: it has no memory (never written, or deleted)"


class RangeOutsideMemoryError(MemoryStoreError, LookupError):
    """No clip of the stream starts inside the requested range."""


class EmptyStreamError(RangeOutsideMemoryError):
    """The stream exists (its ingest has started) but holds no clip yet."""


class EncoderMismatchError(MemoryStoreError):
    """Tokens written by one encoder were about to be read (or appended) as another's."""

    def __init__(self, stream: str, stored: str, requested: str) -> None:
        super().__init__(stream, stored, requested)
        self.stream = stream
        self.stored = stored
        self.requested = requested

    def __str__(self) -> str:
        return (
            f"encoder mismatch on stream {self.stream!r}: its tokens were made by encoder "
            f"{self.stored!r}, but {self.requested!r} was asked for; tokens of one model are never "
            "given to another (delete the stream or write to a new one to switch models)"
        )


class OutOfOrderClipError(MemoryStoreError):
    """A clip that does not start after the stream's newest clip (and is not a retry of one)."""


class MemoryUnavailableError(MemoryStoreError, ConnectionError):
    """Redis cannot be reached (refused, reset, timed out, still loading its data after a restart).

    Live appends buffer instead of raising it; an append that waits (backfill) raises it at its deadline.
    """

    transient = True


class CorruptEntryError(MemoryStoreError):
    """A stored entry that cannot be decoded (missing or wrong-length token bytes, bad fields)."""


class ClipConflictError(OutOfOrderClipError):
    """The stream already holds a clip at this time with other content (another video under this name)."""


# -- the stream's writer ----------------------------------------------------------------------------


class StreamLockedError(MemoryStoreError):
    """Another writer holds the stream's lease: two ingests never interleave one stream."""

    def __init__(self, stream: str, holder: str, ttl_ms: int | None = None) -> None:
        super().__init__(stream, holder, ttl_ms)
        self.stream = stream
        self.holder = holder
        self.ttl_ms = ttl_ms

    def __str__(self) -> str:
        expires = ""
        if self.ttl_ms:
            expires = f"; if that process is gone, its lease expires in {self.ttl_ms / 1000:.0f} s"
        return (
            f"stream {self.stream!r} is being written by {self.holder or 'another writer'}: stop that "
            f"ingest first, or ingest under another name{expires}"
        )


class LeaseLostError(MemoryStoreError):
    """This writer's lease was taken over (it expired while this process could not renew it, and another
    writer took the stream): its appends are refused, so two writers never interleave."""


class SourceMismatchError(MemoryStoreError):
    """The stream holds clips of another source; appending a different one needs an explicit choice."""

    def __init__(self, stream: str, stored: str, requested: str) -> None:
        super().__init__(stream, stored, requested)
        self.stream = stream
        self.stored = stored
        self.requested = requested

    def __str__(self) -> str:
        return (
            f"stream {self.stream!r} holds clips of {self.stored}, not {self.requested}: use another name, "
            "or pass --new-source to continue the stream with this source"
        )


# -- what Redis refused, by family ------------------------------------------------------------------


class RedisRefusedError(MemoryStoreError):
    """Redis answered with an error (`memory.refusals.refusal` names it by its family). The transient
    ones may clear while we wait (backfill waits for them up to a deadline, live streams buffer)."""

    code = "ERR"


class MemoryFullError(RedisRefusedError):
    """OOM: Redis reached `maxmemory` with a policy that evicts nothing."""

    code = "OOM"
    transient = True


class PersistenceError(RedisRefusedError):
    """MISCONF: Redis cannot write its data to disk and refuses writes until it can."""

    code = "MISCONF"
    transient = True


class ReadOnlyError(RedisRefusedError):
    """READONLY: the server is a replica; writes go to the primary."""

    code = "READONLY"


class WrongTypeError(RedisRefusedError):
    """WRONGTYPE: a key of the memory's layout holds another type of value (another program's key)."""

    code = "WRONGTYPE"


class ScriptMissingError(RedisRefusedError):
    """NOSCRIPT: Redis lost the memory's Lua script and it could not be loaded again."""

    code = "NOSCRIPT"


class AccessDeniedError(RedisRefusedError):
    """NOAUTH, WRONGPASS, NOPERM: the Redis user may not run what the memory needs."""

    code = "NOPERM"


class RedisBusyError(RedisRefusedError):
    """BUSY, TRYAGAIN, MASTERDOWN, CLUSTERDOWN: the server is temporarily unable to serve."""

    code = "BUSY"
    transient = True
