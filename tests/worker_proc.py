"""A worker process with the fake engine, for the failover, web and serve tests and bench/web.py.

    python tests/worker_proc.py REDIS_URL PREFIX NAME STEP_S LENGTH [--random] [--encoder-id ID]
                                [--concurrency N] [--model PRESET]

Prints "ready" once serving; SIGTERM or SIGINT stops it cleanly. `--random` makes the engine report
untrained weights in its heartbeat (the page's banner); `--encoder-id` makes it read the tokens of
that encoder (e.g. the tiny model's, under `flashlive serve`). `--model tiny` runs the real model's
`ModelEngine` instead of the fake engine (STEP_S, LENGTH and --random are then unused): the page's
browser tests answer with it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_engine import FakeEngine

from flashlive.model.worker.engine import Engine
from flashlive.model.worker.service import Worker, WorkerSettings


async def main(args: argparse.Namespace) -> None:
    settings = WorkerSettings(
        name=args.name, heartbeat=0.2, lease=1.0, tick_lease=1.0, block=0.2, drain=0.5,
        concurrency=args.concurrency,
    )  # fmt: skip
    engine: Engine
    if args.model:
        from flashlive.model.worker.model_engine import ModelEngine

        engine = ModelEngine.load(args.model)
    else:
        engine = FakeEngine(step_s=args.step_s, length=args.length, random_weights=args.random)
        if args.encoder_id:
            engine.encoder_id = args.encoder_id
    worker = Worker.connect(engine, args.url, prefix=args.prefix, settings=settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, worker.stop)
    print("ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("name")
    parser.add_argument("step_s", type=float)
    parser.add_argument("length", type=int)
    parser.add_argument("--random", action="store_true")
    parser.add_argument("--encoder-id")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--model", help="a preset run by the real ModelEngine instead of the fake engine")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main(args))
