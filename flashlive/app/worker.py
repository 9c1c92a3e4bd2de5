"""Run a query worker: load the model, serve ask jobs and watch ticks from Redis until a signal.

`flashlive worker` (flashlive/commands/worker.py) builds a `WorkerPlan` from the config file and the
command line and calls `run_worker`. `flashlive serve` and docker-compose start the same command as a
child process (`WORKER_COMMAND` in flashlive/app/serve.py), so this is the one way a worker runs.

SIGINT or SIGTERM: no new jobs; running ones get `drain` s (from the signal) to finish, the rest are
handed back to the queue (another worker takes them over at its next reclaim, within a heartbeat);
the heartbeat is removed. A second signal stops waiting for the model threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from flashlive.errors import CommandError
from flashlive.memory.settings import RedisSettings
from flashlive.model.worker.service import Worker, WorkerSettings

if TYPE_CHECKING:
    from flashlive.model.worker.model_engine import ModelEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process runs."""

    model: str  # preset name, checkpoint directory or repo id
    device: str  # cpu, cuda, cuda:N or auto
    settings: WorkerSettings
    dtype: str = "auto"
    download: bool = False
    threads: int | None = None  # torch's CPU threads (None: torch's default, one per core)
    step_delay: float = 0.0  # test-only: seconds slept in every model step (catch an answer mid-way)


def load_engine(plan: WorkerPlan) -> ModelEngine:
    """The model engine of `plan` (torch is imported here, not when the command line is parsed)."""
    from flashlive.model.errors import ModelError
    from flashlive.model.worker.model_engine import ModelEngine

    if plan.threads is not None:
        import torch

        torch.set_num_threads(plan.threads)
    t0 = time.perf_counter()
    try:
        engine = ModelEngine.load(
            plan.model, device=plan.device, dtype=plan.dtype, download=plan.download,
            progress=sys.stderr.isatty(), step_delay=plan.step_delay,
        )  # fmt: skip
    except (ModelError, OSError) as exc:
        raise CommandError(f"cannot load model {plan.model!r}: {exc}") from None
    cfg = engine.engine.cfg
    log.info(
        "model %s loaded in %.1f s on %s (%d LLM layers, context %d, encoder %s)%s",
        engine.name, time.perf_counter() - t0, engine.engine.llm.device, cfg.llm.num_hidden_layers,
        cfg.llm.max_position_embeddings, engine.encoder_id,
        " with random weights: answers are noise" if cfg.seed is not None else "",
    )  # fmt: skip
    return engine


async def run_worker(plan: WorkerPlan, redis: RedisSettings) -> int:
    """Serve until SIGINT/SIGTERM; 0 after a clean stop."""
    from flashlive.memory.connect import open_memory
    from flashlive.memory.jobs import JobQueue
    from flashlive.memory.server import RedisServerError

    engine = await asyncio.to_thread(load_engine, plan)
    try:
        async with open_memory(redis) as memory:
            worker = Worker(engine, memory, JobQueue(memory.client, prefix=memory.prefix), plan.settings)
            await _reachable(memory.client, redis)
            run = asyncio.create_task(worker.run(), name="worker")
            _on_signals(worker, run)
            with contextlib.suppress(asyncio.CancelledError):
                await run
    except RedisServerError as exc:
        raise CommandError(str(exc)) from None
    return 0


async def _reachable(client: aioredis.Redis, redis: RedisSettings) -> None:
    """Say so when Redis cannot be reached at start; the worker waits for it rather than exiting (a
    worker started before its Redis, as compose may do, starts serving once it is up)."""
    from flashlive.memory.store import CONNECTION_ERRORS

    try:
        await client.ping()
    except CONNECTION_ERRORS as exc:
        log.warning("Redis at %s is unreachable (%s); waiting for it", redis.where(), exc)


def _on_signals(worker: Worker, run: asyncio.Task[None]) -> None:
    loop = asyncio.get_running_loop()
    seen = 0

    def handle(sig: signal.Signals) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            log.info("%s: stopping (running jobs are finished or handed back)", sig.name)
            worker.stop()
        else:
            log.warning("%s again: not waiting for the model any longer", sig.name)
            run.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handle, sig)
