"""Run many streams in one process: one task per stream, one compressor (worker thread) per device.

    async with Ingest(encoder, memory, IngestSettings()) as ingest:
        ingest.start_stream(StreamSpec("lobby", "rtsp://cam/1"))
        await ingest.wait()

WHIP sessions come in through `on_session(name, source)`: the WHIP app calls it when a publisher
connects, and the session's frames go through the same sampler -> clips -> compressor path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from flashlive.memory.keys import check_stream_name
from flashlive.model.encoder import ClipEncoder

from .compressor import ClipSink, Compressor
from .lifecycle import StateSink, StreamRunner, StreamSpec
from .metrics import Metrics
from .settings import IngestSettings
from .sources.base import Source
from .types import SourceInvalid

if TYPE_CHECKING:
    from .sources.whip import WhipApp, WhipSource

log = logging.getLogger(__name__)


class IngestMemory(ClipSink, StateSink, Protocol):
    """What ingest needs from memory: `append(clip)` and `set_state(stream, state, **fields)`."""


class Ingest:
    """The streams of one process. `settings` (the config's `ingest` section) gives the encoder batch
    and thumbnails, and the defaults of WHIP streams that arrive without a spec of their own."""

    def __init__(
        self,
        encoder: ClipEncoder,
        memory: IngestMemory | Any,
        settings: IngestSettings | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.encoder = encoder
        self.memory = memory
        self.settings = settings or IngestSettings()
        self.metrics = metrics or Metrics()
        self.compressor = Compressor(encoder, memory, self.metrics, settings=self.settings)
        self.runners: dict[str, StreamRunner] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def running(self, name: str) -> bool:
        task = self.tasks.get(name)
        return task is not None and not task.done()

    def start_stream(self, spec: StreamSpec, source: Source | None = None) -> StreamRunner:
        """Start one stream's task. `source`: an already-made source (a WHIP session), used once."""
        check_stream_name(spec.name)  # InvalidRequestError (a ValueError) before anything starts
        if self.running(spec.name):
            raise ValueError(f"stream {spec.name!r} is already running")
        if source is None and spec.url is None:
            raise ValueError(f"stream {spec.name!r} has neither a URL nor a source")
        runner = StreamRunner(
            spec,
            self.compressor,
            self.memory,
            opener=self._opener(spec, source),
            clip_frames=self.encoder.clip_frames,
        )
        self.runners[spec.name] = runner
        task = asyncio.get_running_loop().create_task(runner.run(), name=f"stream-{spec.name}")
        task.add_done_callback(lambda t: self._done(spec.name, t))
        self.tasks[spec.name] = task
        return runner

    @staticmethod
    def _opener(spec: StreamSpec, source: Source | None) -> Any:
        handed = [source] if source is not None else []

        def open_it() -> Source:
            if handed:
                return handed.pop()
            if spec.url is None:
                raise SourceInvalid(f"{spec.name}: the session ended and cannot be reopened")
            from .sources import source_from_options

            return source_from_options(spec.url, spec.name, spec.source)

        return open_it

    def _done(self, name: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: stream task failed: %r", name, task.exception())

    async def on_session(self, name: str, source: Source, spec: StreamSpec | None = None) -> None:
        """A WHIP publisher connected as `name`: ingest its frames until it leaves (DELETE ends the
        stream in `stopped`). A second publisher for a stream that is running gets 409."""
        from .sources.whip import WhipRejected

        if self.running(name):
            raise WhipRejected(409, f"stream {name!r} already has a publisher")
        spec = spec or StreamSpec(name, settings=self.settings)
        self.start_stream(dataclasses.replace(spec, retry=False), source)  # the publisher reconnects

    def whip_app(
        self, *, token: str | None = None, prefix: str = "", streams: Mapping[str, StreamSpec] | None = None
    ) -> WhipApp:
        """A WHIP ASGI app whose sessions are ingested here. With `streams`, only those names (and
        their settings) are accepted; without, any valid stream name is."""
        from .sources.whip import WhipApp, WhipRejected

        async def on_session(name: str, source: WhipSource) -> None:
            if streams is not None and name not in streams:
                raise WhipRejected(404, f"no stream named {name!r} accepts WHIP publishers")
            await self.on_session(name, source, streams[name] if streams is not None else None)

        return WhipApp(on_session, token=token, prefix=prefix)

    async def stop_stream(self, name: str) -> None:
        runner, task = self.runners.get(name), self.tasks.get(name)
        if runner is None or task is None:
            return
        await runner.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def wait(self, names: Iterable[str] | None = None) -> None:
        """Until the named streams (default: all) have stopped."""
        tasks = [self.tasks[n] for n in (names or list(self.tasks)) if n in self.tasks]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop every stream; each stores what it has cut within `settings.stop_timeout_s`."""
        await asyncio.gather(*(self.stop_stream(n) for n in list(self.tasks)), return_exceptions=True)
        await self.compressor.close(drain=True, timeout=self.settings.stop_timeout_s)
