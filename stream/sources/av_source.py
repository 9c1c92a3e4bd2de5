"""RTSP, file, HTTP(S) and HLS sources decoded by PyAV (FFmpeg) in a worker thread.

The thread demuxes and decodes; frames cross to the event loop through a bounded queue, so the loop
never blocks on I/O or decoding. FFmpeg calls PyAV's interrupt callback while it waits on the network;
that callback ends a wait once PyAV's clock passes the open/read timeout. `close()` uses the same door:
it makes the clock of the worker thread jump ahead, so a blocked read returns within ~0.1 s. That clock
is put into PyAV only while a decoder thread of this module runs (`_ClockPatch`), never at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import av
import av.container.core
import av.error

from flashlive.memory.redact import redact, redact_text, url_secrets, with_credentials

from ..settings import SourceOptions
from ..types import SourceError, SourceFrame, SourceInvalid, SourceUnavailable
from .base import Progress, Source

log = logging.getLogger(__name__)

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp"})
NETWORK_SCHEMES = LIVE_SCHEMES | {"http", "https"}
MAX_BAD_PACKETS = 50  # undecodable packets in a row before any frame: not a video; live: reconnect
_DEFAULTS = SourceOptions()  # the options a configured stream has when its config leaves them out


class _InterruptClock:
    """Stands in for the `time` module inside `av.container.core`.

    PyAV's interrupt callback asks `time.monotonic()` whether the open/read timeout has passed. For a
    thread we want stopped, this clock runs 1e9 s ahead, so FFmpeg abandons the blocking call at its next
    poll (network waits poll about every 100 ms). Other threads see the real clock.
    """

    def __init__(self, real: Any) -> None:
        self._real = real
        self.interrupted: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def monotonic(self) -> float:
        now: float = self._real.monotonic()
        return now + 1e9 if threading.get_ident() in self.interrupted else now


class _ClockPatch:
    """Puts an `_InterruptClock` into `av.container.core` while at least one decoder thread runs, and
    the real `time` module back when the last one ends: the patch is scoped to the sources using it,
    and the rest of the process (model/video.py's reader, other PyAV users) sees PyAV as shipped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._clock: _InterruptClock | None = None

    def acquire(self) -> _InterruptClock | None:
        """The clock to mark a thread with (None: this PyAV's internals differ; close() then waits up
        to the read timeout). Pair with `release`."""
        with self._lock:
            if self._users == 0:
                self._clock = self._install()
            self._users += 1
            return self._clock

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._clock is not None:
                if getattr(av.container.core, "time", None) is self._clock:
                    av.container.core.time = time  # type: ignore[attr-defined]
                self._clock = None

    @staticmethod
    def _install() -> _InterruptClock | None:
        if getattr(av.container.core, "time", None) is not time:
            log.debug("PyAV interrupt hook not installed; close() may wait up to the read timeout")
            return None
        clock = _InterruptClock(time)
        av.container.core.time = clock  # type: ignore[attr-defined]
        return clock


_CLOCK_PATCH = _ClockPatch()


class _Stopped(Exception):
    """Raised inside the worker when close() was asked for."""


_END = object()  # queue marker: the input ended normally


def scheme_of(url: str) -> str:
    """The URL scheme in lower case, or "file" for plain paths (also Windows drive letters)."""
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def default_name(url: str) -> str:
    """A stream name guessed from a URL: the file stem or the last path part, else the host, made to
    follow the stream-name rule (`vid eo ü.mkv` -> `vid-eo-u`)."""
    if scheme_of(url) == "file":
        raw = Path(local_path(url)).stem or "file"
    else:
        parts = urlsplit(url)
        tail = [p for p in parts.path.split("/") if p]
        raw = (Path(tail[-1]).stem or tail[-1]) if tail else (parts.hostname or "stream")
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", ascii_text).lstrip("_.-")[:128].rstrip("-")
    return name or "stream"


def source_identity(url: str) -> str:
    """What a stream's meta remembers as its source: a file's absolute path, else the URL with its
    credentials masked (two URLs that differ only in a password are the same source)."""
    if scheme_of(url) == "file":
        return str(Path(local_path(url)).expanduser().resolve())
    return redact(url)


def local_path(url: str) -> str:
    if url.lower().startswith("file://"):
        return unquote(urlsplit(url).path)
    return url


class AVSource(Source):
    """Pulls one video stream through PyAV.

    Options:
      realtime: files only; True paces frames by pts against the wall clock (a camera stand-in),
        False decodes as fast as possible (backfill). Live inputs are always paced by the sender.
      speed: realtime pacing factor (2.0 = twice as fast).
      loop: files only; start again at EOF with pts continuing (demo sources).
      rtsp_transport: "tcp" (default) or "udp".
      open_timeout / read_timeout: seconds to connect / to wait for the next packet.
      user, password: credentials put into the URL (override any already in it).
      user_env, password_env: names of environment variables holding them (read when constructed).
      options: extra FFmpeg options for av.open, e.g. {"fflags": "nobuffer"}.
      queue_size: decoded frames held between the thread and the loop; for live inputs a full queue
        drops the newest frame (counted in progress.dropped) instead of stalling the network read.
      live: override the guess made from the scheme (rtsp & co: live; files and http: not live).
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        live: bool | None = None,
        realtime: bool = _DEFAULTS.realtime,
        speed: float = 1.0,
        loop: bool = _DEFAULTS.loop,
        rtsp_transport: str = _DEFAULTS.transport,
        open_timeout: float = _DEFAULTS.open_timeout_s,
        read_timeout: float = _DEFAULTS.read_timeout_s,
        user: str | None = None,
        password: str | None = None,
        user_env: str | None = None,
        password_env: str | None = None,
        options: Mapping[str, str] | None = None,
        queue_size: int = 8,
        format: str | None = None,
    ) -> None:
        scheme = scheme_of(url)
        super().__init__(
            name=name or default_name(url),
            url_redacted=redact(url),
            live=scheme in LIVE_SCHEMES if live is None else live,
        )
        if rtsp_transport not in ("tcp", "udp", "udp_multicast", "http", "https"):
            raise SourceInvalid(
                f"{self.url_redacted}: rtsp_transport must be tcp or udp, not {rtsp_transport!r}"
            )
        if speed <= 0:
            raise SourceInvalid(f"{self.url_redacted}: speed must be > 0")
        user = _from_env(user, user_env, "user", self.name)
        password = _from_env(password, password_env, "password", self.name)
        self._scheme = scheme
        self._network = scheme in NETWORK_SCHEMES
        self._url = with_credentials(url, user, password) if self._network else local_path(url)
        self._secrets = [s for s in (password, user) if s] + url_secrets(self._url)
        self.realtime = realtime
        self.speed = speed
        self.loop = loop
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self._format = format
        self._options = self._av_options(rtsp_transport, options)
        self._queue_size = max(1, queue_size)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self._queue: asyncio.Queue[object] | None = None
        self._slots: threading.Semaphore | None = None
        self._clock: _InterruptClock | None = None

    # ---- the async side -------------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[SourceFrame]:
        """Start the decoder thread and yield its frames. Call again after an error to reconnect."""
        if self._closed:
            return
        # A previous run may still be winding down (it posts its error, then exits): let it finish.
        await self._stop_thread()
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        slots = threading.Semaphore(self._queue_size)
        stop = threading.Event()
        self._queue, self._slots, self._stop = queue, slots, stop
        clock = self._clock = _CLOCK_PATCH.acquire()  # released by the thread when it ends
        thread = threading.Thread(
            target=self._run, args=(loop, queue, slots, stop, clock), name=f"source-{self.name}", daemon=True
        )
        self._thread = thread
        try:
            thread.start()
        except RuntimeError:
            _CLOCK_PATCH.release()
            raise
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, SourceFrame)
                slots.release()
                self.progress.frames += 1
                self.progress.pts = item.pts
                yield item
        finally:
            self._signal_stop(thread, stop)

    async def close(self) -> None:
        self._closed = True
        if self._queue is not None:
            self._queue.put_nowait(_END)  # wake a consumer waiting in frames()
        await self._stop_thread()

    async def _stop_thread(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._signal_stop(thread, self._stop)
        deadline = time.monotonic() + 1.5
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if thread.is_alive():
            log.warning(
                "%s: decoder thread still busy after close; it will exit on its own", self.url_redacted
            )

    def _signal_stop(self, thread: threading.Thread | None, stop: threading.Event) -> None:
        stop.set()
        clock = self._clock
        if thread is not None and thread.ident is not None and thread.is_alive() and clock is not None:
            clock.interrupted.add(thread.ident)

    # ---- the worker thread ----------------------------------------------------------------------

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
        slots: threading.Semaphore,
        stop: threading.Event,
        clock: _InterruptClock | None,
    ) -> None:
        if clock is not None:
            clock.interrupted.discard(threading.get_ident())  # a stale mark from a thread that had this id
        try:
            self._decode_all(loop, queue, slots, stop)
        finally:
            if clock is not None:
                clock.interrupted.discard(threading.get_ident())
            _CLOCK_PATCH.release()

    def _decode_all(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
        slots: threading.Semaphore,
        stop: threading.Event,
    ) -> None:
        def post(item: object) -> None:
            # RuntimeError: the loop is gone and nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        if stop.is_set():  # closed before this thread got going
            post(_END)
            return

        def emit(sf: SourceFrame) -> None:
            if self.live:
                if not slots.acquire(blocking=False):
                    self.progress.dropped += 1
                    return
            else:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        raise _Stopped
            post(sf)

        try:
            for sf in self._decode(stop):
                emit(sf)
        except _Stopped:
            post(_END)
        except SourceError as exc:
            post(_END if stop.is_set() else exc)
        except Exception as exc:
            if stop.is_set():
                post(_END)
            else:
                post(exc)
        else:
            post(_END)

    def _decode(self, stop: threading.Event) -> Iterator[SourceFrame]:
        if not self._network:
            self._check_file()
        started = time.monotonic()
        try:
            container = av.open(
                self._url, mode="r", format=self._format, options=self._options,
                timeout=(self.open_timeout, self.read_timeout),
            )  # fmt: skip
        except av.error.FFmpegError as exc:
            if stop.is_set():
                raise _Stopped from None
            waited = time.monotonic() - started
            timed_out = waited >= 0.9 * min(self.open_timeout, self.read_timeout)
            raise self._classify(exc, opening=True, timed_out=timed_out) from None
        log.info("%s: opened (%s)", self.url_redacted, container.format.name)
        try:
            yield from self._demux(container, stop)
        finally:
            container.close()

    def _demux(self, container: av.container.InputContainer, stop: threading.Event) -> Iterator[SourceFrame]:
        if not container.streams.video:
            kinds = ", ".join(sorted({str(s.type) for s in container.streams})) or "no streams"
            raise SourceInvalid(f"{self.url_redacted}: no video stream (found: {kinds})")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise SourceInvalid(f"{self.url_redacted}: unsupported video codec (no decoder available)")
        if not self.live:
            stream.thread_type = "AUTO"
        self._set_duration(container, stream)
        if self._scheme in ("http", "https") and self.progress.duration is None:
            self.live = True  # live HLS playlist: no end, no duration
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        offset = 0.0  # added to pts after each loop of a looping file
        last_pts: float | None = None
        anchor: tuple[float, float] | None = None  # (pts, monotonic) that pacing counts from
        damage = _Damage(self.url_redacted, self.progress, 1.0 / rate)
        while True:
            bad = 0
            first_pts: float | None = None
            last_packet = time.monotonic()
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as exc:
                    if stop.is_set():
                        raise _Stopped from None
                    timed_out = time.monotonic() - last_packet >= 0.9 * self.read_timeout
                    raise self._classify(exc, opening=False, timed_out=timed_out) from None
                if stop.is_set():
                    raise _Stopped
                last_packet = time.monotonic()
                if packet.pts is not None and packet.time_base is not None:
                    damage.packet(float(packet.pts * packet.time_base) + offset)
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    bad += 1
                    damage.error()
                    if bad > MAX_BAD_PACKETS and (self.live or last_pts is None):
                        what = f"{bad} undecodable packets in a row ({self._reason(exc)})"
                        if self.live:
                            raise SourceUnavailable(f"{self.url_redacted}: {what}") from None
                        raise SourceInvalid(f"{self.url_redacted}: {what}; the input is corrupt") from None
                    continue
                bad = 0
                for frame in decoded:
                    pts = frame.time
                    if pts is None:
                        pts = (last_pts - offset + 1.0 / rate) if last_pts is not None else 0.0
                    if first_pts is None:
                        first_pts = pts
                    pts += offset
                    if not self.live and self.realtime:
                        anchor = self._pace(anchor, pts, last_pts, stop)
                    damage.frame(last_pts, pts)
                    last_pts = pts
                    yield SourceFrame(frame=frame, pts=pts, wall=time.time())
            if stop.is_set():
                raise _Stopped
            if self.live:
                raise SourceUnavailable(f"{self.url_redacted}: the stream ended (EOF)")
            if last_pts is None:
                raise SourceInvalid(f"{self.url_redacted}: no video frame could be decoded")
            damage.end(last_pts)
            if not self.loop:
                log.info("%s: end of file after %d frames", self.url_redacted, self.progress.frames)
                self.progress.ended = True
                return
            # The next loop's first frame follows this loop's last one by one frame period.
            offset = last_pts + 1.0 / rate - (first_pts or 0.0)
            container.seek(0)
            stream.codec_context.flush_buffers()

    def _pace(
        self, anchor: tuple[float, float] | None, pts: float, last_pts: float | None, stop: threading.Event
    ) -> tuple[float, float]:
        now = time.monotonic()
        if anchor is None or last_pts is None or pts < last_pts:
            return (pts, now)  # start, or the clock went backwards: count from here
        due = anchor[1] + (pts - anchor[0]) / self.speed
        if due > now and stop.wait(due - now):
            raise _Stopped
        return anchor

    def _set_duration(self, container: av.container.InputContainer, stream: av.VideoStream) -> None:
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        self.progress.duration = duration if duration and duration > 0 else None
        if stream.start_time is not None and stream.time_base is not None:
            self.progress.start = float(stream.start_time * stream.time_base)

    def _check_file(self) -> None:
        path = Path(self._url)
        if not path.exists():
            raise SourceInvalid(f"{self.url_redacted}: file not found")
        if path.is_dir():
            raise SourceInvalid(f"{self.url_redacted}: is a directory, not a video file")
        if path.stat().st_size == 0:
            raise SourceInvalid(f"{self.url_redacted}: the file is empty (0 bytes)")

    def _av_options(self, transport: str, extra: Mapping[str, str] | None) -> dict[str, str]:
        opts: dict[str, str] = {}
        micro = str(int(self.read_timeout * 1_000_000))
        if self._scheme in ("rtsp", "rtsps"):
            opts["rtsp_transport"] = transport
            opts["timeout"] = micro  # socket I/O timeout of the RTSP demuxer, in microseconds
        elif self._scheme in ("http", "https"):
            opts["rw_timeout"] = micro
        if extra:
            opts.update({str(k): str(v) for k, v in extra.items()})
        return opts

    def _reason(self, exc: BaseException) -> str:
        text = getattr(exc, "strerror", None) or type(exc).__name__
        return redact_text(str(text), self._secrets)

    def _classify(self, exc: av.error.FFmpegError, *, opening: bool, timed_out: bool) -> SourceError:
        """Map an FFmpeg error to retryable (`SourceUnavailable`) or not (`SourceInvalid`).

        A server that accepts the connection and then says nothing (a hung camera) makes FFmpeg give up
        after its socket timeout with "invalid data": that is a timeout, retried like a refused
        connection, never a verdict on the stream."""
        where = self.url_redacted
        reason = self._reason(exc)
        limit = min(self.open_timeout, self.read_timeout) if opening else self.read_timeout
        if isinstance(exc, av.error.ExitError) or (self._network and timed_out):
            what = "connecting" if opening else "waiting for data"
            return SourceUnavailable(f"{where}: timed out after {limit:.1f} s {what}")
        if opening and self.live and isinstance(exc, av.error.InvalidDataError):
            return SourceUnavailable(f"{where}: no valid answer while connecting ({reason})")
        if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
            return SourceInvalid(f"{where}: access denied ({reason}); check the user and password")
        if isinstance(exc, av.error.HTTPError | av.error.HTTPClientError):
            return SourceUnavailable(f"{where}: {reason}")
        if isinstance(exc, av.error.DecoderNotFoundError | av.error.PatchWelcomeError):
            return SourceInvalid(f"{where}: unsupported codec ({reason})")
        if isinstance(exc, av.error.DemuxerNotFoundError | av.error.ProtocolNotFoundError):
            return SourceInvalid(f"{where}: unsupported format or protocol ({reason})")
        if isinstance(exc, av.error.FileNotFoundError):
            if self._network:
                return SourceUnavailable(f"{where}: not found ({reason})")
            return SourceInvalid(f"{where}: file not found")
        if isinstance(exc, av.error.EOFError):
            if self.live or self._network:
                return SourceUnavailable(f"{where}: the stream ended (EOF)")
            return SourceInvalid(f"{where}: the file ends before any video (truncated)")
        if isinstance(exc, av.error.InvalidDataError):
            if self.live and not opening:
                return SourceUnavailable(f"{where}: invalid data from the stream ({reason})")
            return SourceInvalid(f"{where}: not a playable video ({reason})")
        if isinstance(exc, OSError):
            if self._network:
                return SourceUnavailable(f"{where}: {reason}")
            return SourceInvalid(f"{where}: cannot read the file ({reason})")
        if self._network:
            return SourceUnavailable(f"{where}: {reason}")
        return SourceInvalid(f"{where}: {reason}")


class _Damage:
    """Finds the stretches of a file the decoder could not decode: a jump in frame times across which
    the demuxer handed over packets (or decoding failed) is data that was there and was lost, reported
    with its extent (`progress.corrupt`, a warning). A jump without packets is a gap in the media (a low
    or variable frame rate), which the timeline keeps as it is."""

    def __init__(self, where: str, progress: Progress, interval: float) -> None:
        self.where = where
        self.progress = progress
        self.gap = max(3.0 * interval, 0.5)  # a jump longer than this is a gap, not jitter
        self.errors = 0  # decode errors since the last frame
        self.packets: deque[float] = deque(maxlen=4096)  # packet times since the last frame

    def packet(self, t: float) -> None:
        self.packets.append(t)

    def error(self) -> None:
        self.errors += 1

    def frame(self, last: float | None, t: float) -> None:
        if last is not None and t - last > self.gap:
            lost = any(last < p < t for p in self.packets)
            if lost or self.errors:
                self._report(last, t)
        self.errors = 0
        self.packets.clear()

    def end(self, last: float) -> None:
        after = [p for p in self.packets if p > last]
        if self.errors or after:
            self._report(last, max(after, default=last))
        self.errors = 0
        self.packets.clear()

    def _report(self, start: float, end: float) -> None:
        self.progress.corrupt.append((start, end))
        log.warning(
            "%s: corrupt data from %.3f s to %.3f s: %.3f s of video could not be decoded",
            self.where, start, end, end - start,
        )  # fmt: skip


def _from_env(value: str | None, env: str | None, what: str, name: str) -> str | None:
    if value is not None or env is None:
        return value
    found = os.environ.get(env)
    if found is None:
        raise SourceInvalid(f"stream {name!r}: environment variable {env} (the {what}) is not set")
    return found
