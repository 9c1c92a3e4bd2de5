"""The Engine as a worker drives it: windows of clips, shared prefixes, batched steps, cancel, watches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flashlive.memory.keys import entry_id
from flashlive.memory.types import Clip
from flashlive.model.config import DropoutConfig
from flashlive.model.decoding import SamplingParams
from flashlive.model.engine import Engine, PrefixHandle
from flashlive.model.errors import PromptError, PromptTooLongError, WindowError
from flashlive.model.prompt import question_text, video_prefix_text
from flashlive.model.result import AnswerResult, StepOutput
from flashlive.model.window import VideoWindow

RECIPE = DropoutConfig("uniform0_attention", (1, 3), (1.0, 0.75, 0.25))  # the model card's, on 4 layers
QUESTIONS = ["What happens?", "Is the red square still moving to the left side of the frame?", "Who?"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load("tiny")


def clips(engine: Engine, n: int = 6, stream: str = "lobby", t0: float = 1000.0, seed: int = 0) -> list[Clip]:
    rng = np.random.default_rng(seed)
    width = engine.cfg.vision.width
    return [
        Clip(
            stream=stream,
            start=t0 + 4 * i,
            end=t0 + 4 * i + 4,
            frames=4,
            tokens=(rng.standard_normal((64, width)) * 2).astype(np.float16),
            encoder_id=engine.encoder_id,
        )
        for i in range(n)
    ]


def run_all(engine: Engine) -> tuple[dict[int, list[StepOutput]], dict[int, AnswerResult]]:
    outputs: dict[int, list[StepOutput]] = {}
    results: dict[int, AnswerResult] = {}
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.seq_id, []).append(out)
            if out.finished:
                assert out.result is not None
                results[out.seq_id] = out.result
    return outputs, results


def alone(engine: Engine, prefix: PrefixHandle, question: str, params: SamplingParams) -> AnswerResult:
    seq = engine.add(prefix, question, params)
    _, results = run_all(engine)
    return results[seq]


def test_window_from_memory_clips_carries_real_times(engine: Engine) -> None:
    window = VideoWindow.from_clips(clips(engine, 3))
    assert window.stream == "lobby" and window.encoder_id == engine.encoder_id
    assert window.clip_ids == tuple(entry_id(1000.0 + 4 * i) for i in range(3))
    assert (window.start, window.end, window.duration, window.num_frames) == (1000.0, 1012.0, 12.0, 12)
    assert window.tokens.shape == (3, 64, engine.cfg.vision.width) and window.visual_tokens == 192
    # the time message of every question on it says what was actually used
    prefix = engine.prefix(window)
    seq = engine.add(prefix, "What happens?", SamplingParams(max_new_tokens=1))
    request = engine.scheduler.waiting[-1]
    assert request.seq_id == seq
    text = engine.tokenizer.decode(request.suffix_ids)
    assert (
        "The video lasts for 12.00 seconds, and 12 frames are uniformly sampled from it. What happens?"
        in text
    )
    assert engine.abort(seq) is not None


def test_window_errors(engine: Engine) -> None:
    good = clips(engine, 3)
    with pytest.raises(WindowError, match="at least one clip"):
        VideoWindow.from_clips([])
    with pytest.raises(WindowError, match="one stream"):
        VideoWindow.from_clips([good[0], replace(good[1], stream="yard")])
    with pytest.raises(WindowError, match="share an encoder"):
        VideoWindow.from_clips([good[0], replace(good[1], encoder_id="other")])
    with pytest.raises(WindowError, match="time order"):
        VideoWindow.from_clips([good[1], good[0]])
    with pytest.raises(WindowError, match="end after it starts"):
        VideoWindow.from_clips([replace(good[0], end=good[0].start)])
    with pytest.raises(WindowError, match="one token shape"):
        VideoWindow.from_clips([good[0], replace(good[1], tokens=good[1].tokens[:32])])
    with pytest.raises(WindowError, match="encoder"):
        engine.prefix(VideoWindow.from_clips([replace(c, encoder_id="umt-other") for c in good]))
    narrow = [replace(c, tokens=c.tokens[:, :32], encoder_id="") for c in good]
    with pytest.raises(WindowError, match="64 tokens of 64 channels"):
        engine.prefix(VideoWindow.from_clips(narrow))


def test_window_from_file_frames() -> None:
    tokens = np.zeros((2, 64, 8), np.float16)
    times = [0.625, 1.875, 3.125, 4.375, 5.625, 6.875, 8.125, 9.375]  # middles of 8 intervals of 10 s
    w = VideoWindow.from_file(tokens, times, duration=10.0, name="a.mp4")
    assert w.clip_ids == ("0", "1") and w.frames == (4, 4) and w.num_frames == 8
    assert w.starts == (0.625, 5.625) and w.ends == (5.625, 10.0) and w.duration == 10.0
    with pytest.raises(WindowError, match="do not split"):
        VideoWindow.from_file(tokens, times[:7], duration=10.0)


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [None, RECIPE], ids=["off", "recipe"])
def test_batched_answers_equal_one_at_a_time(engine: Engine, dropout: DropoutConfig | None) -> None:
    prefix = engine.prefix(VideoWindow.from_clips(clips(engine)), dropout)
    params = [
        SamplingParams(max_new_tokens=8),
        SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.9, top_k=50, seed=3),
        SamplingParams(max_new_tokens=7, repetition_penalty=1.3),
    ]
    ids = [engine.add(prefix, q, p) for q, p in zip(QUESTIONS, params, strict=True)]
    outputs, results = run_all(engine)
    for seq, question, p in zip(ids, QUESTIONS, params, strict=True):
        single = alone(engine, prefix, question, p)
        both = results[seq]
        tokens = [o.token_id for o in outputs[seq] if o.token_id is not None]
        assert len(tokens) == both.new_tokens == single.new_tokens
        assert both.answer == single.answer == "".join(o.text for o in outputs[seq])
        assert [e.clip_id for e in both.evidence] == [e.clip_id for e in single.evidence] != []
        assert [e.score for e in both.evidence] == pytest.approx([e.score for e in single.evidence], abs=1e-6)
        assert both.visual_kept == ([] if dropout is None else [288, 96])
    assert engine.num_running == engine.num_waiting == 0


def test_final_result_fields(engine: Engine) -> None:
    window = VideoWindow.from_clips(clips(engine, 5))
    stream = engine.answer(window, "What happens?", dropout=RECIPE, params=SamplingParams(max_new_tokens=5))
    pieces = list(stream)
    r = stream.result
    assert r is not None and r.finish_reason in ("stop", "length")
    assert "".join(pieces) == r.answer == r.answer.strip()
    assert (r.stream, r.window_start, r.window_end) == ("lobby", 1000.0, 1020.0)
    assert [c.clip_id for c in r.clips] == list(window.clip_ids) and r.clips[2].start == 1008.0
    assert (r.duration, r.num_frames, r.visual_tokens, r.visual_kept) == (20.0, 20, 320, [240, 80])
    text_before = len(engine.tokenizer.encode(video_prefix_text()))
    after = len(engine.tokenizer.encode(question_text("What happens?", 20.0, 20)))
    assert r.prompt_tokens == text_before + 320 + after
    assert 1 <= len(r.evidence) <= 3
    assert all(e.clip_id in window.clip_ids for e in r.evidence)
    assert [e.score for e in r.evidence] == sorted((e.score for e in r.evidence), reverse=True)
    for e in r.evidence:
        i = window.clip_ids.index(e.clip_id)
        assert (e.start, e.end) == (window.starts[i], window.ends[i]) and 0 < e.score <= 1
    t = r.timings
    assert t.projector > 0 and t.prefix > 0 and t.prefill > 0
    assert t.first_token >= t.prefix + t.prefill  # counted from the start of answer(): prefix included
    if r.new_tokens > 1:
        assert t.decode > 0 and t.tokens_per_s > 0
    assert r.to_dict()["dropout"]["mode"] == "uniform0_attention"


def test_stop_ids_and_length_limit(engine: Engine) -> None:
    assert engine.stop_ids == (151645, 151643)  # the tokenizer's <|im_end|> (eos) and <|endoftext|>
    prefix = engine.prefix(VideoWindow.from_clips(clips(engine)))
    params = SamplingParams(max_new_tokens=6, repetition_penalty=3.0, stop_ids=())  # no repeats
    free = alone(engine, prefix, "What happens?", params)
    assert free.finish_reason == "length" and free.new_tokens == 6
    seq = engine.add(prefix, "What happens?", params)
    outputs, _ = run_all(engine)
    tokens = [o.token_id for o in outputs[seq]]
    stop = tokens[3]
    assert stop is not None and stop not in tokens[:3]
    stopped = alone(engine, prefix, "What happens?", replace(params, stop_ids=(999, stop)))
    assert stopped.finish_reason == "stop" and stopped.new_tokens == 3


def test_abort_between_steps_frees_the_row(engine: Engine) -> None:
    prefix = engine.prefix(VideoWindow.from_clips(clips(engine)), RECIPE)
    params = SamplingParams(max_new_tokens=6, stop_ids=())
    a, b = engine.add(prefix, QUESTIONS[0], params), engine.add(prefix, QUESTIONS[1], params)
    waiting = engine.add(prefix, QUESTIONS[2], params)
    cancelled = engine.abort(waiting)  # never started
    assert cancelled is not None and cancelled.finish_reason == "abort" and cancelled.new_tokens == 0
    engine.step()  # prefill a and b
    engine.step()  # one decode step
    assert engine.num_running == 2
    partial = engine.abort(a)
    assert partial is not None and partial.finish_reason == "abort" and partial.new_tokens == 2
    assert engine.num_running == 1 and engine.runner is not None
    _, results = run_all(engine)
    assert list(results) == [b]
    assert results[b].answer == alone(engine, prefix, QUESTIONS[1], params).answer
    assert engine.abort(a) is None and engine.abort(12345) is None


def test_late_question_joins_the_running_batch(engine: Engine) -> None:
    prefix = engine.prefix(VideoWindow.from_clips(clips(engine)))
    other = engine.prefix(VideoWindow.from_clips(clips(engine, 3, stream="yard", seed=5)), RECIPE)
    params = SamplingParams(max_new_tokens=6, stop_ids=())
    first = engine.add(prefix, QUESTIONS[0], params)
    engine.step()
    engine.step()
    late = engine.add(other, QUESTIONS[1], params)  # another stream's prefix, mid-way
    outputs = engine.step()  # prefills the newcomer
    assert [o.seq_id for o in outputs] == [late]
    outputs = engine.step()  # then both decode in one batch
    assert sorted(o.seq_id for o in outputs) == [first, late]
    _, results = run_all(engine)
    assert results[first].answer == alone(engine, prefix, QUESTIONS[0], params).answer
    assert results[late].answer == alone(engine, other, QUESTIONS[1], params).answer


def test_max_batch_queues_the_rest(engine: Engine) -> None:
    small = Engine(engine.cfg, engine.projector, engine.llm, engine.tokenizer, max_batch=2)
    prefix = small.prefix(VideoWindow.from_clips(clips(small)))
    params = SamplingParams(max_new_tokens=3, stop_ids=())
    ids = [small.add(prefix, q, params) for q in QUESTIONS]
    assert {o.seq_id for o in small.step()} == set(ids[:2]) and small.num_waiting == 1
    _, results = run_all(small)
    assert results[ids[2]].answer == alone(engine, engine.prefix(prefix.window), QUESTIONS[2], params).answer


def test_answer_stream_cancels_when_abandoned(engine: Engine) -> None:
    stream = engine.answer(
        VideoWindow.from_clips(clips(engine)),
        "Describe it.",
        params=SamplingParams(max_new_tokens=50, stop_ids=()),
    )
    for _ in stream:
        break
    assert stream.result is not None and stream.result.finish_reason == "abort"
    assert not engine.has_unfinished()


def test_yes_no_scores(engine: Engine) -> None:
    window = VideoWindow.from_clips(clips(engine))
    questions = ["Is anyone at the door?", "Is the light on?", "Did a car pass by in the street?"]
    for dropout in (None, RECIPE):
        prefix = engine.prefix(window, dropout)
        scores = engine.score_yes_no(prefix, questions)
        assert scores == pytest.approx([engine.score_yes_no(prefix, [q])[0] for q in questions], abs=1e-6)
        assert all(0.0 < s < 1.0 for s in scores) and len(set(scores)) == 3
        # the reference: a plain prefill of the whole prompt, softmax over the two answers
        yes, no = engine.tokenizer.encode("Yes"), engine.tokenizer.encode("No")
        for q, s in zip(questions, scores, strict=True):
            text = engine.tokenizer.encode(video_prefix_text())
            after = engine.tokenizer.encode(question_text(f"{q} Answer with Yes or No.", 24.0, 24))
            with torch.no_grad():
                visual = engine._project(window.tokens)
                embeds = torch.cat(
                    [
                        engine.llm.embed(torch.tensor([text]))[0],
                        visual,
                        engine.llm.embed(torch.tensor([after]))[0],
                    ]
                )
            logits = engine.llm.prefill(embeds[None], (len(text), len(visual)), dropout).logits[0]
            p = torch.softmax(logits.double(), -1)
            assert s == pytest.approx(float(p[yes[0]] / (p[yes[0]] + p[no[0]])), abs=1e-5)


def test_questions_that_do_not_fit(engine: Engine) -> None:
    prefix = engine.prefix(VideoWindow.from_clips(clips(engine)))
    with pytest.raises(PromptTooLongError, match="does not fit"):
        engine.add(prefix, "why? " * 9000)
    with pytest.raises(PromptTooLongError):
        engine.add(prefix, "What?", SamplingParams(max_new_tokens=8000))
    with pytest.raises(PromptError, match="empty"):
        engine.add(prefix, "  ")
    with pytest.raises(PromptError, match="control token"):
        engine.add(prefix, "hi <|im_end|>")
    with pytest.raises(PromptError, match="empty"):
        engine.score_yes_no(prefix, ["Is it on?", " "])
    with pytest.raises(PromptTooLongError):
        engine.prefix(VideoWindow.from_clips(clips(engine, 130)))  # 8,320 visual tokens > 8,192 positions
    assert not engine.has_unfinished()


@pytest.mark.cuda
def test_engine_on_cuda_matches_the_cpu_answers(engine: Engine) -> None:
    """bf16 on the GPU: same kept counts and evidence clips as fp32 on the CPU for a clear-cut window."""
    gpu = Engine.load("tiny", device="cuda", dtype="bf16")
    window = VideoWindow.from_clips(clips(engine))
    for dropout in (None, RECIPE):
        params = SamplingParams(max_new_tokens=4, stop_ids=())
        on_gpu = gpu.answer(window, "What happens?", dropout=dropout, params=params)
        list(on_gpu)
        on_cpu = engine.answer(window, "What happens?", dropout=dropout, params=params)
        list(on_cpu)
        assert on_gpu.result is not None and on_cpu.result is not None
        assert on_gpu.result.new_tokens == 4 and on_gpu.result.visual_kept == on_cpu.result.visual_kept
        assert on_gpu.result.evidence
        scores = gpu.score_yes_no(gpu.prefix(window, dropout), QUESTIONS)
        assert scores == pytest.approx(
            engine.score_yes_no(engine.prefix(window, dropout), QUESTIONS), abs=0.05
        )


def test_checkpoint_generation_settings_are_layered_under_the_request(engine: Engine) -> None:
    from flashlive.model.generation_config import RequestSampling, parse_generation_config

    assert engine.sampling() == SamplingParams(max_new_tokens=1024, stop_ids=(151645, 151643))  # chat()'s
    file = {"eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "top_k": 20}
    qwen2 = parse_generation_config(file)
    tuned = Engine(engine.cfg, engine.projector, engine.llm, engine.tokenizer, generation=qwen2)
    params = tuned.sampling(RequestSampling(max_new_tokens=5))
    # greedy: no top-k
    assert (params.repetition_penalty, params.top_k, params.max_new_tokens) == (1.05, 0, 5)
    assert tuned.sampling(RequestSampling(temperature=0.5)).top_k == 20
    prefix = tuned.prefix(VideoWindow.from_clips(clips(tuned)))
    result = alone(tuned, prefix, "What happens?", params)
    assert result.new_tokens <= 5
    same = alone(tuned, prefix, "What happens?", SamplingParams(max_new_tokens=5, repetition_penalty=1.05))
    assert result.answer == same.answer


def test_a_failed_step_ends_its_sequences_and_the_engine_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device fault in a decode step (simulated: it cannot be caused for real on a CPU)."""
    prefix = engine.prefix(VideoWindow.from_clips(clips(engine)))
    params = SamplingParams(max_new_tokens=5, stop_ids=())
    ids = [engine.add(prefix, q, params) for q in QUESTIONS[:2]]
    engine.step()

    def fault(*_: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine.runner, "decode", fault)
    outputs = engine.step()
    assert sorted(o.seq_id for o in outputs) == ids
    for out in outputs:
        assert out.finished and isinstance(out.error, RuntimeError)
        assert out.result is not None and out.result.finish_reason == "error" and out.result.new_tokens == 1
    assert not engine.has_unfinished()
    monkeypatch.undo()
    assert alone(engine, prefix, QUESTIONS[0], params).new_tokens == 5
