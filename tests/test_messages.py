"""Typed messages between viewers, workers and event readers: validation on both sides, versions."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from flashlive.memory.messages import (
    DEFAULT_FRAME_BUDGET,
    DEFAULT_MAX_NEW_TOKENS,
    SCHEMA_VERSION,
    AskJob,
    DropoutSettings,
    ErrorCode,
    ErrorRecord,
    Event,
    FinalRecord,
    MessageError,
    Piece,
    Timings,
    Watch,
    Window,
    parse_event,
    parse_job,
    parse_record,
    parse_watch,
)
from flashlive.memory.sampling import recent_indices, uniform_indices


def test_ask_job_defaults_and_round_trip() -> None:
    job = AskJob(stream="lobby", question="Who is at the door?", window=Window(last=600))
    assert job.budget == DEFAULT_FRAME_BUDGET == 512
    assert job.generation.max_new_tokens == DEFAULT_MAX_NEW_TOKENS == 1024
    assert job.dropout is None  # off by default, as in the release
    assert job.deadline > job.submitted and job.v == SCHEMA_VERSION
    back = parse_job(job.dumps())
    assert back == job
    # the recipe: its layers are left to the serving model's depth (model/worker/model_engine.py)
    assert DropoutSettings() == DropoutSettings(
        mode="uniform0_attention", layers=None, ratios=[1, 0.75, 0.25]
    )


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"budget": 0}, "budget"),
        ({"budget": 10**9}, "budget"),
        ({"budget": "lots"}, "budget"),
        ({"stream": "../etc"}, "stream"),
        ({"question": "   "}, "question"),
        ({"question": "x" * 40_000}, "question"),
        ({"window": {"last": -5}}, "window.last"),
        ({"window": {"last": 5, "start": 1}}, "window"),
        ({"window": {"start": 10, "end": 5}}, "window"),
        ({"window": {"start": float("nan")}}, "window.start"),
        ({"dropout": {"layers": [4, 18], "ratios": [1.0]}}, "dropout"),
        ({"dropout": {"ratios": [1.0, 0.5]}}, "dropout"),  # the recipe has two stages
        ({"dropout": {"layers": [18, 4], "ratios": [1, 0.5, 0.2]}}, "dropout"),
        ({"dropout": {"mode": "random"}}, "dropout.mode"),
        ({"generation": {"top_p": 0}}, "generation.top_p"),
        ({"generation": {"max_new_tokens": 0}}, "generation.max_new_tokens"),
        ({"surprise": 1}, "surprise"),
        ({"deadline": 1e12}, "deadline"),
    ],
)
def test_malformed_jobs_become_error_records_with_the_job_id(change: dict[str, object], where: str) -> None:
    data = json.loads(AskJob(id="job-1", stream="lobby", question="what?").dumps())
    data.update(change)
    with pytest.raises(MessageError) as info:
        parse_job(json.dumps(data))
    record = info.value.record
    assert record.code == ErrorCode.INVALID_MESSAGE and record.job == "job-1"
    assert where in record.message, record.message


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff\xfe", b'{"id": "j", "v": "one"}', b""])
def test_garbage_on_the_wire_is_an_error_record_not_a_crash(raw: bytes) -> None:
    with pytest.raises(MessageError) as info:
        parse_job(raw)
    assert info.value.record.code == ErrorCode.INVALID_MESSAGE
    assert info.value.record.message.startswith("bad ask job:")


def test_newer_version_gets_a_clear_error_before_field_checks() -> None:
    raw = json.dumps({"v": SCHEMA_VERSION + 1, "id": "j2", "stream": "x", "question": "q", "new_field": 1})
    with pytest.raises(MessageError) as info:
        parse_job(raw)
    rec = info.value.record
    assert rec.code == ErrorCode.UNSUPPORTED_VERSION and rec.job == "j2"
    assert f"version {SCHEMA_VERSION + 1}" in rec.message and "newer" in rec.message
    with pytest.raises(ValidationError):  # the sending side refuses to build one, too
        AskJob(v=SCHEMA_VERSION + 1, stream="x", question="q")


def test_records_parse_or_become_terminal_errors() -> None:
    piece = Piece(job="j", attempt=1, seq=0, text="Hel")
    assert parse_record(piece.dumps()) == piece
    final = FinalRecord(
        job="j", attempt=1, stream="s", question="q", answer="Hello", finish_reason="stop", window=Window(),
        used_start=0.0, used_end=8.0, clips=[], frames=8, visual_tokens=[128, 96, 32], prompt_tokens=170,
        new_tokens=2, dropout=DropoutSettings(), timings=Timings(prefill=0.5), evidence=[], worker="w",
        model="tiny",
    )  # fmt: skip
    assert parse_record(final.dumps()) == final
    bad = parse_record(b'{"type": "piece", "job": "j"}', job="j")
    assert isinstance(bad, ErrorRecord) and bad.code == ErrorCode.INVALID_MESSAGE and bad.job == "j"
    newer = parse_record(json.dumps({"v": 99, "type": "final", "job": "j"}))
    assert isinstance(newer, ErrorRecord) and newer.code == ErrorCode.UNSUPPORTED_VERSION


def test_watch_cadence_is_clip_or_seconds() -> None:
    assert parse_watch(Watch(stream="s", condition="a dog").dumps()).cadence == "clip"
    assert parse_watch(Watch(stream="s", condition="a dog", cadence=10).dumps()).cadence == 10.0
    for bad in ("hourly", 0, -1):
        with pytest.raises(MessageError):
            parse_watch(json.dumps({"stream": "s", "condition": "a dog", "cadence": bad}))
    with pytest.raises(MessageError, match="threshold"):
        parse_watch(json.dumps({"stream": "s", "condition": "a dog", "threshold": 1.5}))


def test_event_round_trip_and_kind_checked() -> None:
    ev = Event(
        id="e1", watch="w1", stream="s", condition="c", kind="start", score=0.9, peak=0.9, threshold=0.5,
        clip_id="4000-1", clip_start=4.0, clip_end=8.0, started=4.0, thumbnail="4000-1",
    )  # fmt: skip
    assert parse_event(ev.dumps()) == ev
    with pytest.raises(MessageError):
        parse_event(ev.dumps().replace('"start"', '"begin"'))


def test_recent_keeps_the_newest_clips_and_spreads_the_rest() -> None:
    assert recent_indices(10, 4, 2) == [0, 7, 8, 9]
    assert recent_indices(10, 3, 3) == [7, 8, 9]
    assert recent_indices(10, 4, 0) == uniform_indices(10, 4)
    assert recent_indices(3, 5, 2) == [0, 1, 2]
    for n, b, k in [(100, 16, 5), (37, 7, 1), (1000, 128, 32)]:
        idx = recent_indices(n, b, k)
        assert len(idx) == b and idx == sorted(set(idx)) and idx[-k:] == list(range(n - k, n))


def test_release_sampling_is_a_defaulted_field_and_refuses_recent() -> None:
    job = AskJob(stream="cam", question="q")
    assert job.sampling == "uniform" and '"sampling":"uniform"' in job.dumps()
    assert parse_job(AskJob(stream="cam", question="q", sampling="release").dumps()).sampling == "release"
    with pytest.raises(MessageError, match="sampling"):
        parse_job(json.dumps({**json.loads(job.dumps()), "sampling": "everything"}))
    with pytest.raises(MessageError, match="recent"):
        parse_job(json.dumps({**json.loads(job.dumps()), "sampling": "release", "recent": 2}))


def test_a_final_record_without_the_later_fields_still_reads() -> None:
    """Records of workers from before `sampling`, `file_frames` and `batching` parse with defaults."""
    record = {
        "v": 1, "type": "final", "job": "j1", "attempt": 1, "stream": "cam", "question": "q", "answer": "a",
        "finish_reason": "stop", "window": {}, "used_start": 0.0, "used_end": 4.0,
        "clips": [{"id": "0-1", "start": 0.0, "end": 4.0}], "frames": 4, "visual_tokens": [64],
        "prompt_tokens": 80, "new_tokens": 1, "dropout": None, "timings": {}, "evidence": [],
        "worker": "w", "model": "tiny",
    }  # fmt: skip
    final = parse_record(json.dumps(record))
    assert isinstance(final, FinalRecord)
    assert (final.sampling, final.file_frames, final.batching.prefill_batch) == ("uniform", None, 1)
