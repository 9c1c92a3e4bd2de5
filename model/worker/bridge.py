"""Blocking engine calls in a thread, their results on the event loop (as the AV source decodes).

The event loop keeps serving heartbeats, cancels and other jobs while a job's thread runs the model.
Text crosses through an unbounded asyncio queue (pieces are small and the loop drains it at once).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _End(Generic[R]):
    def __init__(self, result: R | None = None, error: BaseException | None = None) -> None:
        self.result = result
        self.error = error


class ThreadedRun(Generic[T, R]):
    """Run `work(emit)` in a thread: `emit(x)` hands x to the loop; the return value is `result`.

    Iterate with `async for batch in run.batches()`: each batch is every item emitted since the
    last one (so a slow consumer writes fewer, larger pieces). After the iteration `result` holds
    the return value; an exception of `work` is raised from the iteration. `wait()` returns once
    the thread has ended (the engine is free).
    """

    def __init__(self, work: Callable[[Callable[[T], None]], R], *, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[T | _End[R]] = asyncio.Queue()
        self._done = self._loop.create_future()
        self.result: R | None = None
        self._thread = threading.Thread(target=self._main, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _main(self, work: Callable[[Callable[[T], None]], R]) -> None:
        end: _End[R]
        try:
            end = _End(result=work(self._emit))
        except BaseException as exc:  # handed to the loop, raised there
            end = _End(error=exc)
        self._loop.call_soon_threadsafe(self._finish, end)

    def _emit(self, item: T) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _finish(self, end: _End[R]) -> None:
        self._queue.put_nowait(end)
        if not self._done.done():
            self._done.set_result(None)

    async def batches(self) -> AsyncIterator[list[T]]:
        while True:
            items: list[T] = []
            item = await self._queue.get()
            while True:
                if isinstance(item, _End):
                    if items:
                        yield items
                    if item.error is not None:
                        raise item.error
                    self.result = item.result
                    return
                items.append(item)
                if self._queue.empty():
                    break
                item = self._queue.get_nowait()
            yield items

    async def wait(self) -> None:
        await asyncio.shield(self._done)


def drain(iterator: Iterator[T], emit: Callable[[T], None]) -> None:
    for item in iterator:
        emit(item)
