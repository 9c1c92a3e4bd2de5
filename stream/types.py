"""What sources hand to the sampler, and the errors they raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import av


@dataclass
class SourceFrame:
    """One decoded frame. RGB conversion is left to the sampler, which keeps only ~1 frame a second."""

    frame: av.VideoFrame
    pts: float  # seconds from the source's clock; may jump or restart (reconnects, VFR, stalls)
    wall: float  # unix time the frame was decoded here


class SourceError(Exception):
    """A source failed. `retryable` tells the life cycle whether reconnecting can help."""

    retryable: bool = True


class SourceUnavailable(SourceError):
    """Cannot reach or lost the source (refused, timeout, EOF of a live stream): retry with backoff."""

    retryable = True


class SourceInvalid(SourceError):
    """The input itself is bad (corrupt file, no video stream, unsupported codec): do not retry."""

    retryable = False
