"""A worker process with the fake engine, for the failover tests (run as a script).

    python tests/worker_proc.py REDIS_URL PREFIX NAME STEP_S LENGTH

Prints "ready" once serving; SIGTERM stops it cleanly.
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


async def main(url: str, prefix: str, name: str, step_s: float, length: int) -> None:
    settings = WorkerSettings(name=name, heartbeat=0.2, lease=1.0, tick_lease=1.0, block=0.2, drain=0.5)
    worker = Worker.connect(FakeEngine(step_s=step_s, length=length), url, prefix=prefix, settings=settings)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    print("ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {sys.argv[3]} %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])))
