"""A worker process with the fake engine, for the failover, web and serve tests (run as a script).

    python tests/worker_proc.py REDIS_URL PREFIX NAME STEP_S LENGTH [random|trained [ENCODER_ID]]

Prints "ready" once serving; SIGTERM or SIGINT stops it cleanly. `random` makes the engine report
untrained weights in its heartbeat (the page's banner). ENCODER_ID makes it read the tokens of that
encoder (e.g. the tiny model's, under `flashlive serve`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_engine import FakeEngine

from flashlive.model.worker.service import Worker, WorkerSettings


async def main(
    url: str, prefix: str, name: str, step_s: float, length: int, random_weights: bool, encoder_id: str | None
) -> None:
    settings = WorkerSettings(name=name, heartbeat=0.2, lease=1.0, tick_lease=1.0, block=0.2, drain=0.5)
    engine = FakeEngine(step_s=step_s, length=length, random_weights=random_weights)
    if encoder_id:
        engine.encoder_id = encoder_id
    worker = Worker.connect(engine, url, prefix=prefix, settings=settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, worker.stop)
    print("ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {sys.argv[3]} %(levelname)s %(name)s: %(message)s"
    )
    random_weights = len(sys.argv) > 6 and sys.argv[6] == "random"
    encoder_id = sys.argv[7] if len(sys.argv) > 7 else None
    url, prefix, name = sys.argv[1:4]
    asyncio.run(main(url, prefix, name, float(sys.argv[4]), int(sys.argv[5]), random_weights, encoder_id))
