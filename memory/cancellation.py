"""Cancellation that survives redis-py's timeouts.

On Python 3.11, redis-py's `asyncio.timeout` around a blocking read can turn a task's cancellation into
a `TimeoutError`, which is an `OSError`: a loop that waits out connection errors (XREAD BLOCK in a
reader, a worker's loops) would take it for a Redis outage, retry, and never stop. Every such loop
calls `reraise_if_cancelling` first.
"""

from __future__ import annotations

import asyncio


def reraise_if_cancelling(exc: BaseException) -> None:
    """Raise CancelledError (from `exc`) when the running task is being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc
