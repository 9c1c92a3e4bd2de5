"""The ASGI app: `create_app(WebSettings, RedisSettings, whip=...)`.

    app = create_app(settings, redis)                 # WHIP proxied to settings.whip_upstream, if set
    app = create_app(settings, redis, whip=whip_app)  # WHIP served by an in-process ASGI app

web/ reaches workers and ingest only through Redis; it never imports the model or torch. The only
in-process tie is the WHIP app, which the app layer (`flashlive serve`) passes in: web/ does not
import stream/ for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from flashlive.memory.settings import RedisSettings
from flashlive.web.errors import install_handlers
from flashlive.web.metrics import WebMetrics
from flashlive.web.routers import ask, memory, openai, ops, streams, watches, ws
from flashlive.web.routers import whip as whip_proxy
from flashlive.web.security import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    JsonErrors,
    RateLimitMiddleware,
    hide_query_strings_in_server_logs,
)
from flashlive.web.services import Services
from flashlive.web.settings import WebSettings
from flashlive.web.version import VERSION as __version__

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(settings: WebSettings, redis: RedisSettings, *, whip: Any = None) -> FastAPI:
    """The web app on the Redis `redis` names (a URL is required: the app layer resolves the
    embedded server). `whip`: an ASGI app serving WHIP in this process (mounted at /whip)."""
    if redis.url is None:
        raise ValueError("the web app needs a Redis URL (start the embedded server first)")
    hide_query_strings_in_server_logs()
    served_whip = whip is not None or settings.whip_upstream is not None
    svc = Services.build(settings, redis, whip=served_whip)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.hub.start()
        if settings.whip_upstream:
            app.state.whip_client = httpx.AsyncClient(base_url=settings.whip_upstream, timeout=30.0)
        try:
            yield
        finally:
            if settings.whip_upstream:
                await app.state.whip_client.aclose()
            await svc.close()

    app = FastAPI(
        title="FlashLive",
        version=__version__,
        description="Ask questions about live video streams (docs/web.md)",
        lifespan=lifespan,
    )
    app.state.services = svc
    app.state.metrics = WebMetrics()
    install_handlers(app)
    for module in (streams, memory, ask, openai, watches, ops, ws):
        app.include_router(module.router)
    if whip is not None:
        app.mount("/whip", JsonErrors(whip))
    elif settings.whip_upstream:
        app.include_router(whip_proxy.router)
    _page(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "If-Match"],
            expose_headers=["Location", "Retry-After"],
        )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(RateLimitMiddleware, limiter=svc.limiter, trust_proxy=settings.trust_proxy)
    app.add_middleware(AccessLogMiddleware)
    return app


def _page(app: FastAPI) -> None:
    """The page (web/static, built by the page's own work) at /, its files at /static."""
    index = STATIC / "index.html"
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False, response_model=None)
    async def page() -> FileResponse | JSONResponse:
        if index.is_file():
            return FileResponse(index)
        about = {"name": "FlashLive", "version": __version__, "api": "/docs", "health": "/healthz"}
        return JSONResponse(about)
