"""/healthz (Redis, workers, ingest states), /metrics (Prometheus), /api/info (what the page shows)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from flashlive.memory.store import CONNECTION_ERRORS
from flashlive.web.schemas import Info, WorkerOut
from flashlive.web.security import require_token
from flashlive.web.services import Services, services
from flashlive.web.status import all_streams, queue_and_workers
from flashlive.web.version import VERSION as __version__

router = APIRouter(tags=["ops"])
Svc = Annotated[Services, Depends(services)]


@router.get("/healthz")
async def healthz(svc: Svc) -> JSONResponse:
    """200 while Redis answers (`status` ok, or degraded: no worker, or a stream not live); 503 when
    Redis cannot be reached. Public: it names no secret and no stream source."""
    started = time.perf_counter()
    try:
        await svc.client.ping()
        latency = (time.perf_counter() - started) * 1000
        depth, workers = await queue_and_workers(svc)
        streams = await all_streams(svc)
    except CONNECTION_ERRORS as exc:
        down = {"status": "down", "redis": {"ok": False, "error": str(exc) or type(exc).__name__}}
        return JSONResponse(down, status_code=503)
    ingest = {s.name: {"state": s.state, "stale": s.stale, "clips": s.clips} for s in streams}
    troubled = [n for n, s in ingest.items() if s["stale"] or s["state"] in ("retrying", "connecting")]
    status = "ok" if workers and not troubled else "degraded"
    body: dict[str, Any] = {
        "status": status,
        "version": __version__,
        "redis": {"ok": True, "latency_ms": round(latency, 2)},
        "workers": {"alive": len(workers), "names": [w.name for w in workers]},
        "queue": {"waiting": depth.waiting, "running": depth.running},
        "ingest": ingest,
    }
    return JSONResponse(body)


@router.get("/metrics", dependencies=[Depends(require_token)])
async def metrics(request: Request, svc: Svc) -> Response:
    data = await request.app.state.metrics.render(svc)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/info", response_model=Info, dependencies=[Depends(require_token)])
async def info(svc: Svc) -> Info:
    depth, workers = await queue_and_workers(svc)
    s = svc.settings
    return Info(
        version=__version__,
        models=sorted({w.model for w in workers if w.model}),
        random_weights=any(w.random_weights for w in workers),
        workers=[
            WorkerOut(
                name=w.name,
                host=w.host,
                model=w.model,
                random_weights=w.random_weights,
                running=len(w.running),
                concurrency=w.concurrency,
            )
            for w in workers
        ],
        queue={"waiting": depth.waiting, "running": depth.running},
        auth=s.token is not None,
        whip=svc.whip,
        limits={
            "max_body_bytes": s.max_body_bytes,
            "max_question_chars": s.max_question_chars,
            "rate_per_s": s.rate_limit.per_s,
            "rate_burst": s.rate_limit.burst,
            "max_ws_message_bytes": s.max_ws_message_bytes,
            "job_timeout_s": s.job_timeout_s,
            "max_replay_frames": s.max_replay_frames,
        },
    )
