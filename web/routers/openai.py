"""OpenAI-compatible chat completions over a stream's memory: `/v1/chat/completions`, `/v1/models`.

The video is a `video_url` content part naming a stream and a window:

    {"type": "video_url", "video_url": {"url": "stream://lobby?last=600"}}
    {"type": "video_url", "video_url": {"url": "stream://lobby?start=1767000000&end=1767000600"}}

The question is the text of the last user message (the model answers one question about the video;
earlier turns are not part of its prompt). Our extra fields (evidence, timings, the clips used) are in
the `flashlive` field of the completion and of the last chunk; OpenAI clients ignore it. Request
extras go in `flashlive` too (`extra_body={"flashlive": {"budget": 256}}` with the official client).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flashlive.memory.keys import NAME_RULE, STREAM_NAME
from flashlive.memory.messages import (
    MAX_FRAME_BUDGET,
    MAX_NEW_TOKENS,
    DropoutSettings,
    ErrorRecord,
    FinalRecord,
    Generation,
    Piece,
    Window,
    explain,
)
from flashlive.memory.results import AnswerText
from flashlive.web.answers import cancel_later, check_window, follow, make_job, require_worker, submit
from flashlive.web.errors import STATUS_OF_CODE, ApiError, error_body, error_response
from flashlive.web.routers.ask import SSE_HEADERS
from flashlive.web.security import require_token
from flashlive.web.services import Services, services

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_token)])
Svc = Annotated[Services, Depends(services)]
DEFAULT_MODEL = "flashlive"  # always accepted: whichever model the workers run


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI adds fields over time; unknown ones are ignored


class VideoUrl(_Lenient):
    url: str


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    video_url: VideoUrl | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class Extension(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: int | None = Field(default=None, ge=1, le=MAX_FRAME_BUDGET)
    recent: int = Field(default=0, ge=0, le=MAX_FRAME_BUDGET)
    dropout: DropoutSettings | None = None


class ChatRequest(_Lenient):
    model: str = DEFAULT_MODEL
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    n: int = Field(default=1, ge=1, le=1)
    flashlive: Extension | None = None


def parse_video_url(url: str) -> tuple[str, Window]:
    """`stream://NAME?last=S` or `stream://NAME?start=T&end=T` (either end may be left out) or
    `stream://NAME` (the whole memory) -> (stream, window). ApiError 400 with what is wrong."""

    def bad(why: str) -> ApiError:
        return ApiError(400, "invalid_video_url", f"bad video_url {url[:200]!r}: {why}")

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if parts.scheme != "stream":
        raise bad("expected stream://NAME?last=SECONDS or stream://NAME?start=T&end=T")
    name = parts.netloc
    if not STREAM_NAME.match(name):
        raise bad(f"the stream name {name!r} is not valid: {NAME_RULE}")
    if parts.path not in ("", "/"):
        raise bad("nothing may follow the stream name but a query (?last=... or ?start=...&end=...)")
    values: dict[str, float] = {}
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        if key not in ("last", "start", "end"):
            raise bad(f"unknown parameter {key!r} (use last, or start and end)")
        if key in values:
            raise bad(f"{key} is given twice")
        try:
            value = float(raw)
        except ValueError:
            raise bad(f"{key}={raw!r} is not a number of seconds") from None
        if not math.isfinite(value):
            raise bad(f"{key} must be finite")
        values[key] = value
    try:
        return name, Window(**values)
    except ValidationError as exc:
        raise bad(explain(exc)) from None


def _text(content: str | list[ContentPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content if p.type == "text" and p.text)


def _request_parts(body: ChatRequest) -> tuple[str, Window, str]:
    """(stream, window, question) of a chat request."""
    video: str | None = None
    for message in reversed(body.messages):
        if isinstance(message.content, list):
            for part in message.content:
                if part.type == "video_url":
                    if part.video_url is None:
                        raise ApiError(400, "invalid_video_url", 'a video_url part needs {"url": ...}')
                    video = video or part.video_url.url
                elif part.type not in ("text", "video_url"):
                    raise ApiError(
                        400, "unsupported_content", f"content parts of type {part.type!r} are not supported"
                    )
    if video is None:
        raise ApiError(
            400,
            "missing_video",
            'name the video with a content part {"type": "video_url", "video_url": '
            '{"url": "stream://NAME?last=600"}}',
        )
    users = [m for m in body.messages if m.role == "user"]
    question = _text(users[-1].content).strip() if users else ""
    if not question:
        raise ApiError(400, "invalid_request", "the last user message has no text (the question)")
    stream, window = parse_video_url(video)
    return stream, window, question


@router.get("/models")
async def models(svc: Svc) -> dict[str, Any]:
    workers = await svc.queue.workers()
    names = sorted({w.model for w in workers if w.model})
    now = int(time.time())
    data = [{"id": n, "object": "model", "created": now, "owned_by": "flashlive"} for n in names]
    return {"object": "list", "data": data}


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, svc: Svc) -> Response:
    stream, window, question = _request_parts(body)
    ext = body.flashlive or Extension()
    max_new = body.max_completion_tokens or body.max_tokens
    given: dict[str, Any] = {
        "max_new_tokens": max_new, "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
    }  # fmt: skip
    generation = Generation.model_validate({k: v for k, v in given.items() if v is not None})
    job = make_job(
        svc, stream=stream, question=question, window=window, budget=ext.budget, recent=ext.recent,
        dropout=ext.dropout, generation=generation,
    )  # fmt: skip
    await check_window(svc, stream, window)
    await _check_model(svc, body.model)
    await submit(svc, job, "openai")
    completion_id = f"chatcmpl-{job.id}"
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _chunks(svc, job.id, job.deadline, completion_id, body.model, usage)
        return EventSourceResponse(chunks, headers=SSE_HEADERS)
    return await _complete(svc, job.id, job.deadline, completion_id, body.model)


async def _check_model(svc: Services, model: str) -> None:
    await require_worker(svc)
    names = {w.model for w in await svc.queue.workers() if w.model}
    if model != DEFAULT_MODEL and model not in names:
        known = ", ".join(sorted(names | {DEFAULT_MODEL}))
        raise ApiError(404, "model_not_found", f"no worker runs model {model!r}; available: {known}")


def _extension(record: FinalRecord) -> dict[str, Any]:
    data = record.model_dump(mode="json")
    keep = ("job", "stream", "window", "used_start", "used_end", "clips", "frames", "visual_tokens",
            "dropout", "timings", "evidence", "worker", "model")  # fmt: skip
    return {k: data[k] for k in keep}


def _usage(record: FinalRecord) -> dict[str, int]:
    return {
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.new_tokens,
        "total_tokens": record.prompt_tokens + record.new_tokens,
    }


async def _complete(svc: Services, job: str, deadline: float, cid: str, model: str) -> Response:
    async for item in follow(svc, job, deadline=deadline):
        if item is None:
            continue
        _, record = item
        if isinstance(record, FinalRecord):
            return JSONResponse(
                {
                    "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                    "choices": [{
                        "index": 0, "message": {"role": "assistant", "content": record.answer},
                        "finish_reason": record.finish_reason, "logprobs": None,
                    }],
                    "usage": _usage(record),
                    "flashlive": _extension(record),
                }
            )  # fmt: skip
        if isinstance(record, ErrorRecord):
            return error_response(STATUS_OF_CODE.get(record.code, 500), record.code, record.message)
    return error_response(500, "internal", "the job ended without a final record")


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
    body = {
        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra,
    }  # fmt: skip
    return format_sse_event(data_str=json.dumps(body, separators=(",", ":")))


async def _chunks(
    svc: Services, job: str, deadline: float, cid: str, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    text = AnswerText()
    sent = ""  # what the client has; a restarted attempt only adds once it has caught up with it
    finished = False
    try:
        yield _chunk(cid, model, {"role": "assistant", "content": ""}, None)
        async for item in follow(svc, job, deadline=deadline):
            if item is None:
                yield b": keep-alive\n\n"
                continue
            _, record = item
            if isinstance(record, Piece):
                text.add(record)
                if text.text.startswith(sent) and len(text.text) > len(sent):
                    delta, sent = text.text[len(sent) :], text.text
                    yield _chunk(cid, model, {"content": delta}, None)
            elif isinstance(record, FinalRecord):
                finished = True
                if record.answer.startswith(sent) and len(record.answer) > len(sent):
                    yield _chunk(cid, model, {"content": record.answer[len(sent) :]}, None)
                yield _chunk(cid, model, {}, record.finish_reason, flashlive=_extension(record))
                if include_usage:
                    usage = {
                        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": model, "choices": [], "usage": _usage(record),
                    }  # fmt: skip
                    yield format_sse_event(data_str=json.dumps(usage))
            else:
                finished = True
                status = STATUS_OF_CODE.get(record.code, 500)
                yield format_sse_event(data_str=json.dumps(error_body(status, record.code, record.message)))
        yield format_sse_event(data_str="[DONE]")
    finally:
        if not finished:
            cancel_later(svc, job)
