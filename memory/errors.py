"""Errors the memory raises. Each says what was asked and what the store holds; none changes the store."""

from __future__ import annotations


class MemoryStoreError(Exception):
    """Base class for every error of the video memory."""


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
    """Redis cannot be reached for a call that is not buffered (appends are: they never raise this)."""


class CorruptEntryError(MemoryStoreError):
    """A stored entry that cannot be decoded (missing or wrong-length token bytes, bad fields)."""
