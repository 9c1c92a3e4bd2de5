"""The official `openai` package against /v1 (unchanged client, real HTTP, a real worker process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from helpers import unique_prefix
from web_helpers import Web, fill, web_app, worker_process

from flashlive.memory.server import RedisServer
from flashlive.web.errors import ApiError
from flashlive.web.routers.openai import parse_video_url


@pytest.fixture(scope="module")
def web(redis_server: RedisServer) -> Iterator[Web]:
    prefix = unique_prefix("o")
    with (
        worker_process(redis_server.url, prefix, "w-openai", step_s=0.01, length=12),
        web_app(redis_server.url, prefix, token="sk-test-token") as service,
    ):
        deadline = time.monotonic() + 20
        client = openai.OpenAI(base_url=service.url + "/v1", api_key="sk-test-token")
        while not client.models.list().data:
            assert time.monotonic() < deadline, "the worker never sent a heartbeat"
            time.sleep(0.1)
        yield service


@pytest.fixture
async def clips(web: Web) -> None:
    async with web.memory() as memory:
        if "hall" not in await memory.streams():
            await fill(memory, "hall", 10)


def messages(url: str, question: str = "What is going on?") -> list[Any]:
    return [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}],
        },
    ]


def client(web: Web, key: str = "sk-test-token") -> openai.OpenAI:
    return openai.OpenAI(base_url=web.url + "/v1", api_key=key, max_retries=0)


async def test_models_lists_what_workers_run(web: Web) -> None:
    assert [m.id for m in client(web).models.list().data] == ["fake"]


async def test_completion_not_streamed(web: Web, clips: None) -> None:
    done = client(web).chat.completions.create(
        model="fake",
        messages=messages("stream://hall?last=8"),
        max_tokens=5,
    )
    answer = done.choices[0].message.content
    assert answer is not None and answer.startswith("2 clips from 1032 to 1040.")
    assert done.choices[0].finish_reason == "length" and done.usage is not None
    assert done.usage.completion_tokens > 0
    extension = done.model_extra["flashlive"]  # type: ignore[index]
    assert extension["used_start"] == 1032.0 and extension["evidence"][0]["start"] in (1032.0, 1036.0)
    assert extension["window"] == {"last": 8.0, "start": None, "end": None}


async def test_completion_streamed(web: Web, clips: None) -> None:
    stream = client(web).chat.completions.create(
        model="flashlive",
        messages=messages("stream://hall?start=1000&end=1012"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("3 clips from 1000 to 1012.") and text.endswith("w8")
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert finals[0].model_extra["flashlive"]["clips"][0]["start"] == 1000.0  # type: ignore[index]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


async def test_async_client_streams_too(web: Web, clips: None) -> None:
    aclient = openai.AsyncOpenAI(base_url=web.url + "/v1", api_key="sk-test-token", max_retries=0)
    stream = await aclient.chat.completions.create(
        model="fake",
        messages=messages("stream://hall"),
        stream=True,
        max_tokens=3,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.startswith("10 clips from 1000 to 1040.")
    await aclient.close()


@pytest.mark.parametrize(
    ("url", "exc", "needle"),
    [
        ("http://example.com/video.mp4", openai.BadRequestError, "expected stream://NAME"),
        ("stream://hall?last=soon", openai.BadRequestError, "not a number"),
        ("stream://hall?start=50&end=10", openai.BadRequestError, "before its end"),
        ("stream://hall?fps=3", openai.BadRequestError, "unknown parameter 'fps'"),
        ("stream://no-such-stream?last=60", openai.NotFoundError, "unknown stream"),
        ("stream://hall?start=99999", openai.NotFoundError, "no clip"),
    ],
)
async def test_bad_video_urls_are_refused_clearly(
    web: Web, clips: None, url: str, exc: type[Exception], needle: str
) -> None:
    with pytest.raises(exc) as info:
        client(web).chat.completions.create(model="fake", messages=messages(url))
    assert needle in str(info.value)


async def test_missing_video_wrong_model_and_token(web: Web, clips: None) -> None:
    with pytest.raises(openai.BadRequestError, match="video_url"):
        client(web).chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="no worker runs model 'gpt-4o'"):
        client(web).chat.completions.create(model="gpt-4o", messages=messages("stream://hall"))
    with pytest.raises(openai.AuthenticationError, match="Bearer"):
        client(web, key="wrong").models.list()


def test_video_url_parsing() -> None:
    assert parse_video_url("stream://lobby?last=600")[1].last == 600
    name, window = parse_video_url("stream://lobby?start=1767000000&end=1767000600")
    assert name == "lobby" and (window.start, window.end) == (1767000000, 1767000600)
    assert parse_video_url("stream://lobby")[1].describe() == "the whole memory"
    for bad in (
        "stream://lo bby",
        "stream://lobby/x",
        "stream://lobby?last=nan",
        "stream://lobby?last=1&last=2",
    ):
        with pytest.raises(ApiError):
            parse_video_url(bad)
