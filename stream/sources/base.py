"""The `Source` interface: an async iterator of decoded frames that can be closed at any time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from ..types import SourceFrame


@dataclass
class Progress:
    """How far a source has got, for progress bars and lag reports. Updated as frames are handed out."""

    frames: int = 0
    pts: float | None = None  # pts of the last frame handed out, seconds
    duration: float | None = None  # total length when known (files), seconds
    start: float = 0.0  # pts where the file starts (containers may not start at 0)
    dropped: int = 0  # frames a live source dropped because the consumer fell behind
    corrupt: list[tuple[float, float]] = field(default_factory=list)  # (from, to) pts not decodable
    ended: bool = False  # a file was read to its end

    @property
    def fraction(self) -> float | None:
        """0..1 through a file of known duration, else None."""
        if self.duration is None or self.duration <= 0 or self.pts is None:
            return None
        return min(1.0, max(0.0, (self.pts - self.start) / self.duration))


class Source(ABC):
    """Frames in. `frames()` raises `SourceUnavailable` (retry) or `SourceInvalid` (give up).

    For a file, the iterator ends normally at EOF; a live source never ends normally except when closed.
    `close()` may be called from any task at any time, also while `frames()` is waiting; the iterator then
    ends without an error.
    """

    name: str
    url_redacted: str
    live: bool

    def __init__(self, name: str, url_redacted: str, live: bool) -> None:
        self.name = name
        self.url_redacted = url_redacted
        self.live = live
        self.progress = Progress()

    @property
    def duration(self) -> float | None:
        """Length in seconds for files (known once opened), None for live sources."""
        return self.progress.duration

    @abstractmethod
    def frames(self) -> AsyncIterator[SourceFrame]:
        """Decoded frames in presentation order (implemented as an async generator)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop decoding and free everything; idempotent, returns within about a second."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        # Only the redacted URL: reprs end up in logs and tracebacks.
        return f"{type(self).__name__}(name={self.name!r}, url={self.url_redacted!r}, live={self.live})"
