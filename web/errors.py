"""Every error the web app returns is JSON: `{"error": {"code": "...", "message": "...", "type": "..."}}`.

The shape is OpenAI's (`error.message`, `error.type`, `error.code`), so the official client shows our
messages too. `ApiError` is what routes raise; the handlers here turn every other failure (validation,
memory errors, Redis being away, a bug) into the same shape, so the service answers and stays up.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flashlive.memory.errors import (
    EmptyStreamError,
    EncoderMismatchError,
    InvalidRequestError,
    MemoryStoreError,
    MemoryUnavailableError,
    RangeOutsideMemoryError,
    UnknownStreamError,
)
from flashlive.memory.messages import ErrorCode, explain
from flashlive.memory.store import CONNECTION_ERRORS

log = logging.getLogger(__name__)

# what an error record of a worker becomes when a route answers with a status instead of a stream
STATUS_OF_CODE: dict[str, int] = {
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.UNKNOWN_STREAM: 404,
    ErrorCode.EMPTY_MEMORY: 409,
    ErrorCode.WINDOW_OUTSIDE_MEMORY: 404,
    ErrorCode.WINDOW_EMPTY: 404,
    ErrorCode.ENCODER_MISMATCH: 409,
    ErrorCode.CONTEXT_LIMIT: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.CANCELLED: 409,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INTERNAL: 500,
}
_CODE_OF_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """A failure to report to the client: HTTP status, a machine code, a message for a person."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def code_for_status(status: int) -> str:
    return _CODE_OF_STATUS.get(status, "error" if status < 500 else "internal")


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"code": code, "message": message, "type": kind}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, code, message), status_code=status, headers=headers)


def memory_error(exc: MemoryStoreError) -> ApiError:
    """The memory's errors as API errors (each already says what was asked and what is there)."""
    if isinstance(exc, UnknownStreamError):
        return ApiError(404, ErrorCode.UNKNOWN_STREAM, str(exc))
    if isinstance(exc, EmptyStreamError):
        return ApiError(409, ErrorCode.EMPTY_MEMORY, str(exc))
    if isinstance(exc, RangeOutsideMemoryError):
        return ApiError(404, ErrorCode.WINDOW_OUTSIDE_MEMORY, str(exc))
    if isinstance(exc, InvalidRequestError):
        return ApiError(400, "invalid_request", str(exc))
    if isinstance(exc, EncoderMismatchError):
        return ApiError(409, ErrorCode.ENCODER_MISMATCH, str(exc))
    if isinstance(exc, MemoryUnavailableError):
        return ApiError(503, "redis_unavailable", str(exc))
    return ApiError(500, "internal", f"memory error: {exc}")


def explain_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return f"malformed JSON body: {ctx.get('error', err.get('msg'))}"
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc) or 'body'}: {msg}")
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_request", explain_validation(exc))

    @app.exception_handler(ValidationError)
    async def _model(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(400, "invalid_request", explain(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 413:
            message = "the request body is too large"
        return error_response(
            exc.status_code, code_for_status(exc.status_code), message, dict(exc.headers or {})
        )

    @app.exception_handler(MemoryStoreError)
    async def _memory(request: Request, exc: MemoryStoreError) -> JSONResponse:
        err = memory_error(exc)
        return error_response(err.status, err.code, err.message)

    for kind in CONNECTION_ERRORS:

        @app.exception_handler(kind)
        async def _redis(request: Request, exc: Exception) -> JSONResponse:
            log.warning("%s %s: redis unreachable: %s", request.method, request.url.path, exc)
            return error_response(
                503, "redis_unavailable", "the memory (Redis) cannot be reached; try again shortly"
            )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); it was logged")
