"""Video sources: `open_source(url, **options)` picks the right one for a URL.

- `rtsp://`, `rtsps://` (and rtmp/srt/udp, which FFmpeg also reads): live, through PyAV.
- plain paths and `file://`: mp4/mkv/webm/... files, paced in real time or as fast as possible.
- `http://`, `https://`: progressive files and HLS playlists (`.m3u8`), through PyAV.
- `whip` / `whip://NAME`: frames published by WebRTC (WHIP) to a `WhipApp` for stream NAME.
"""

from __future__ import annotations

from typing import Any

from ..settings import SOURCE_SCHEMES, SourceOptions
from ..types import SourceError, SourceFrame, SourceInvalid, SourceUnavailable
from .av_source import AVSource, scheme_of
from .base import Progress, Source

__all__ = [
    "AVSource",
    "Progress",
    "Source",
    "SourceError",
    "SourceFrame",
    "SourceInvalid",
    "SourceUnavailable",
    "open_source",
    "source_from_options",
]

AV_SCHEMES = SOURCE_SCHEMES


def open_source(url: str, **options: Any) -> Source:
    """A `Source` for `url`; nothing is opened until `frames()` is iterated.

    Options for PyAV URLs are `AVSource`'s keyword arguments (realtime, speed, loop, rtsp_transport,
    open_timeout, read_timeout, user, password, user_env, password_env, options, queue_size, live,
    name, format). For WHIP, pass `whip_app=` (a `WhipApp`) and `name=` (or use `whip://NAME`), plus
    optionally `queue_size`. Raises `SourceInvalid` for an unknown scheme or a missing option.
    """
    if not isinstance(url, str) or not url.strip():
        raise SourceInvalid("a source URL is required (rtsp://…, a file path, http(s)://…, or whip)")
    url = url.strip()
    if url.lower() == "whip" or scheme_of(url) == "whip":
        from .whip import open_whip_source  # aiortc is imported only when WHIP is used

        return open_whip_source(url, **options)
    scheme = scheme_of(url)
    if scheme not in AV_SCHEMES:
        raise SourceInvalid(
            f"unsupported source URL scheme {scheme!r}: "
            "use rtsp://, rtsps://, http(s)://, a file path, or whip"
        )
    try:
        return AVSource(url, **options)
    except TypeError as exc:
        raise SourceInvalid(f"bad source option: {exc}") from None


def source_from_options(url: str, name: str, options: SourceOptions) -> Source:
    """The source of a configured stream (`streams.NAME` with a `url`): its typed options, each passed
    by name, so the config's schema and `AVSource` cannot drift apart unnoticed (mypy checks this call)."""
    url = url.strip()
    if url.lower() == "whip" or scheme_of(url) == "whip":
        raise SourceInvalid(f"stream {name!r}: a WHIP stream is configured with `whip: true`, not a URL")
    if scheme_of(url) not in AV_SCHEMES:
        return open_source(url)  # raises SourceInvalid naming the scheme
    credentials = options.credentials
    return AVSource(
        url,
        name=name,
        realtime=options.realtime,
        loop=options.loop,
        rtsp_transport=options.transport,
        open_timeout=options.open_timeout_s,
        read_timeout=options.read_timeout_s,
        user=credentials.user if credentials else None,
        password=credentials.password.get_secret_value() if credentials and credentials.password else None,
    )
