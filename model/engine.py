"""The engine: the model API a query worker schedules.

Split as in vLLM v1: this front end turns windows and questions into prompts, samples tokens and
turns them into text; `Scheduler` decides what runs next; `ModelRunner` runs it on the LLM.

    engine = Engine.load("tiny")
    prefix = engine.prefix(VideoWindow.from_clips(clips), dropout)   # once per window: the video
    a = engine.add(prefix, "What happens?", SamplingParams(max_new_tokens=64))
    b = engine.add(prefix, "Is the door open?")                      # shares the prefix, no copy
    while engine.has_unfinished():
        for out in engine.step():   # prefills new questions as a batch, else one batched decode step
            ...                     # out.text pieces; out.result once out.finished
    engine.abort(b)                 # between steps: frees its row at once
    engine.score_yes_no(prefix, ["Is anyone at the door?"])          # watches: P(Yes) / (P(Yes) + P(No))

Synchronous and not thread-safe: one thread at a time drives `add`, `step` and `abort` (a worker
bridges with a thread and an asyncio queue). `prefix` and `score_yes_no` read only the weights and
the prefix they are given and build caches of their own, so they may run in other threads meanwhile:
a long prefix need not stall the running answers' decode steps. Every call returns within one
prefill or one decode step, so a caller can cancel between steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from flashlive.memory.messages import Evidence
from flashlive.model.answer import AnswerStream
from flashlive.model.config import DropoutConfig, FlashConfig
from flashlive.model.decoding import Sampler, SamplingParams, default_stop_ids
from flashlive.model.detokenize import IncrementalDetokenizer, StrippedText, token_bytes
from flashlive.model.errors import PromptError, WindowError
from flashlive.model.generation_config import (
    CheckpointGeneration,
    RequestSampling,
    read_generation_config,
    resolve_sampling,
)
from flashlive.model.kv_cache import BatchKVCache
from flashlive.model.llm import Qwen2LM
from flashlive.model.pipeline import build_llm, build_projector, resolve
from flashlive.model.projector import Projector
from flashlive.model.prompt import check_fits, question_text, video_prefix_text
from flashlive.model.result import (
    FINISH_ABORT,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    AnswerResult,
    ClipTime,
    StepOutput,
    Timings,
)
from flashlive.model.runner import PREFILL_CHUNK, BatchPrefill, ModelRunner, VisualPrefix
from flashlive.model.scheduler import DecodePlan, Scheduler
from flashlive.model.tokenizer import load_tokenizer
from flashlive.model.window import VideoWindow

log = logging.getLogger(__name__)

MAX_BATCH = 16
EVIDENCE_TOP = 3  # clips cited per answer
YES_NO_INSTRUCTION = "Answer with Yes or No."


@dataclass(eq=False)
class PrefixHandle:
    """A window's visual prefix, computed once and shared read-only by any number of questions."""

    window: VideoWindow
    dropout: DropoutConfig | None
    visual: VisualPrefix
    text_ids: tuple[int, ...]  # the prompt's tokens before the video
    projector_s: float
    prefix_s: float

    @property
    def visual_kept(self) -> list[int]:
        """Visual tokens left after each dropout stage (the same for every question)."""
        return list(self.visual.plan.counts[1:])

    def nbytes(self) -> int:
        return self.visual.nbytes()


@dataclass(eq=False)
class _Request:
    seq_id: int
    prefix: PrefixHandle
    suffix_ids: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    sampler: Sampler
    detok: IncrementalDetokenizer
    arrival: float
    text: StrippedText = field(default_factory=StrippedText)
    output_ids: list[int] = field(default_factory=list)
    sampled: int = 0  # tokens drawn, a final stop token included
    prefill_s: float = 0.0
    first_token_at: float | None = None
    finish_reason: str | None = None
    evidence: list[Evidence] = field(default_factory=list)
    prefill_batch: int = 0  # questions in the prefill batch it was in
    decode_batch: int = 0  # the largest decode step it took part in

    @property
    def prefix_key(self) -> int:
        return id(self.prefix)


class Engine:
    """Projector + LLM + tokenizer, loaded once, answering and scoring many questions."""

    def __init__(
        self,
        cfg: FlashConfig,
        projector: Projector,
        llm: Qwen2LM,
        tokenizer: PreTrainedTokenizerFast,
        *,
        max_batch: int = MAX_BATCH,
        prefill_chunk: int = PREFILL_CHUNK,
        evidence_top: int = EVIDENCE_TOP,
        evidence_layer: int | None = None,
        generation: CheckpointGeneration | None = None,
    ) -> None:
        self.cfg = cfg
        self.generation = generation or CheckpointGeneration()  # the checkpoint's generation_config.json
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.runner = ModelRunner(llm, chunk=prefill_chunk, evidence_layer=evidence_layer)
        self.scheduler: Scheduler[_Request] = Scheduler(max_batch)
        self.evidence_top = evidence_top
        self._tokenizer_lock = threading.Lock()  # prefix() may encode in another thread than add()
        self.stop_ids = default_stop_ids(tokenizer)
        self._bytes = token_bytes(tokenizer)
        self._yes, self._no = self._single_token("Yes"), self._single_token("No")
        self._cache: BatchKVCache | None = (
            None  # BatchKVCache of the running sequences, rows in scheduler.running order
        )
        self._next_id = 0

    @classmethod
    def load(
        cls,
        model: str = "tiny",
        *,
        device: str = "cpu",
        dtype: str = "auto",
        download: bool = False,
        progress: bool = False,
        **kwargs: int,
    ) -> Engine:
        """Projector, LLM and tokenizer of a preset, checkpoint directory or HF repo id."""
        spec = resolve(model, device=device, dtype=dtype, download=download)
        projector = build_projector(spec, progress=progress)
        llm = build_llm(spec, progress=progress)
        generation = read_generation_config(spec.ckpt)
        return cls(spec.cfg, projector, llm, load_tokenizer(spec.ckpt), generation=generation, **kwargs)

    def sampling(self, request: RequestSampling | None = None) -> SamplingParams:
        """A request's settings over chat()'s arguments over the checkpoint's generation_config.json."""
        return resolve_sampling(self.generation, request or RequestSampling())

    @property
    def encoder_id(self) -> str:
        """The token space this engine reads: windows from another encoder are refused."""
        return self.cfg.encoder_id

    @property
    def max_positions(self) -> int:
        return self.cfg.llm.max_position_embeddings

    # ------------------------------------------------------------------------------------------ prefix

    def prefix(
        self,
        window: VideoWindow,
        dropout: DropoutConfig | None = None,
        *,
        cancel: Callable[[], bool] | None = None,
    ) -> PrefixHandle:
        """Project the window's tokens and run the question-independent part of the prompt.

        `cancel` is polled between chunks of the computation (raises PrefixCancelled when it says so).
        """
        self._check_window(window)
        text_ids = self._encode(video_prefix_text())
        check_fits(len(text_ids), window.visual_tokens, 0, max_positions=self.max_positions)
        t0 = time.perf_counter()
        visual = self._project(window.tokens)
        t1 = time.perf_counter()
        with torch.inference_mode():
            text = self.llm.embed(torch.tensor([text_ids]))[0]
        state = self.runner.compute_prefix(text, visual, dropout, cancel=cancel)
        t2 = time.perf_counter()
        log.debug("prefix of %d clips: projector %.3f s, prefix %.3f s", window.num_clips, t1 - t0, t2 - t1)
        return PrefixHandle(window, dropout, state, tuple(text_ids), t1 - t0, t2 - t1)

    def _check_window(self, window: VideoWindow) -> None:
        if window.encoder_id and window.encoder_id != self.encoder_id:
            raise WindowError(
                f"the window's tokens come from encoder {window.encoder_id!r}, this model reads "
                f"{self.encoder_id!r}"
            )
        width, per_clip = self.cfg.vision.width, self.cfg.merge.tokens_per_clip
        if window.tokens.shape[1:] != (per_clip, width):
            raise WindowError(
                f"this model reads clips of {per_clip} tokens of {width} channels, got "
                f"{tuple(window.tokens.shape[1:])}"
            )

    def _project(self, tokens: np.ndarray) -> torch.Tensor:
        # tokens: [N, 64, C] fp16 -> [N*64, H]
        t = torch.from_numpy(np.ascontiguousarray(tokens)).to(self.llm.device, self.llm.dtype)
        with torch.inference_mode():
            return self.projector(t).reshape(-1, self.cfg.llm.hidden_size)

    # ---------------------------------------------------------------------------------------- requests

    def add(
        self,
        prefix: PrefixHandle,
        question: str,
        params: SamplingParams | None = None,
        *,
        arrival: float | None = None,
    ) -> int:
        """Queue a question on a prefix; returns its sequence id. Raises PromptError if it cannot fit.

        `arrival` (a `time.perf_counter()` value) is where its first-token time counts from.
        """
        params = params or SamplingParams()
        suffix = self._suffix(prefix, question, params.max_new_tokens)
        stops = params.stop_ids if params.stop_ids is not None else self.stop_ids
        request = _Request(
            seq_id=self._next_id,
            prefix=prefix,
            suffix_ids=suffix,
            params=params,
            stop_ids=frozenset(stops),
            sampler=Sampler(params),
            detok=IncrementalDetokenizer(self._bytes),
            arrival=time.perf_counter() if arrival is None else arrival,
        )
        self._next_id += 1
        self.scheduler.add(request)
        return request.seq_id

    def _suffix(self, prefix: PrefixHandle, question: str, max_new_tokens: int) -> list[int]:
        if not isinstance(question, str):
            raise PromptError(f"a question must be text, not {type(question).__name__}")
        w = prefix.window
        ids = self._encode(question_text(question, w.duration, w.num_frames))
        check_fits(
            len(prefix.text_ids),
            w.visual_tokens,
            len(ids),
            max_positions=self.max_positions,
            max_new_tokens=max_new_tokens,
        )
        return ids

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def abort(self, seq_id: int) -> AnswerResult | None:
        """Stop a sequence now (waiting or running); returns its partial result, None if unknown."""
        found = self.scheduler.remove(seq_id)
        if found is None:
            return None
        request, row = found
        if row is not None and self._cache is not None:
            self._cache.select([r for r in range(self._cache.batch) if r != row])
            if self._cache.batch == 0:
                self._cache = None
        request.finish_reason = FINISH_ABORT
        return self._result(request, time.perf_counter())

    # -------------------------------------------------------------------------------------------- step

    def step(self) -> list[StepOutput]:
        """Prefill every waiting question that fits the batch (one batch per prefix), or else run one
        decode step for every running sequence. Returns one output per sequence that advanced."""
        plan = self.scheduler.schedule()
        if plan is None:
            return []
        if isinstance(plan, DecodePlan):
            try:
                return self._decode(plan.running)
            except Exception as exc:  # a device fault: the running batch cannot go on
                log.exception("a decode step failed; ending the %d running sequences", len(plan.running))
                self.scheduler.running, self._cache = [], None
                return self._fail(plan.running, exc)
        outputs: list[StepOutput] = []
        for group in plan.groups:
            try:
                outputs += self._prefill(group)
            except Exception as exc:
                log.exception("a prefill failed; ending its %d sequences", len(group))
                outputs += self._fail(group, exc)
        return outputs

    def _fail(self, requests: list[_Request], exc: Exception) -> list[StepOutput]:
        """End `requests` with `exc` as their outputs' error (the other sequences go on)."""
        now = time.perf_counter()
        outputs = []
        for request in requests:
            request.finish_reason = FINISH_ERROR
            result = self._result(request, now)
            outputs.append(StepOutput(request.seq_id, "", None, finished=True, result=result, error=exc))
        return outputs

    def _prefill(self, group: list[_Request]) -> list[StepOutput]:
        t0 = time.perf_counter()
        batch = self.runner.prefill(group[0].prefix.visual, [r.suffix_ids for r in group])
        prefill_s = time.perf_counter() - t0
        outputs, alive = [], []
        for row, request in enumerate(group):
            request.prefill_s = prefill_s
            request.prefill_batch = len(group)
            request.evidence = self._evidence(request.prefix.window, batch, row)
            outputs.append(self._advance(request, batch.logits[row]))
            if request.finish_reason is None:
                alive.append(row)
        if alive:
            if len(alive) < len(group):
                batch.cache.select(alive)
            self._cache = (
                batch.cache if self._cache is None else BatchKVCache.concat([self._cache, batch.cache])
            )
            self.scheduler.running += [group[row] for row in alive]
        return outputs

    def _decode(self, running: list[_Request]) -> list[StepOutput]:
        assert self._cache is not None and self._cache.batch == len(running)
        logits = self.runner.decode(self._cache, [r.output_ids[-1] for r in running])
        for r in running:
            r.decode_batch = max(r.decode_batch, len(running))
        outputs = [self._advance(r, logits[row]) for row, r in enumerate(running)]
        keep = [row for row, r in enumerate(running) if r.finish_reason is None]
        if len(keep) < len(running):
            self._cache.select(keep)
            self.scheduler.running = [running[row] for row in keep]
            if not keep:
                self._cache = None
        return outputs

    def _advance(self, request: _Request, logits: torch.Tensor) -> StepOutput:
        """Sample one token for `request` and turn it into text; finish it at a stop id or the limit."""
        token = request.sampler(logits, request.output_ids)
        now = time.perf_counter()
        request.sampled += 1
        if request.first_token_at is None:
            request.first_token_at = now
        text = ""
        out_token: int | None = token
        if token in request.stop_ids:
            request.finish_reason = FINISH_STOP
            out_token = None
        else:
            request.output_ids.append(token)
            text = request.text.push(request.detok.push(token))
            if len(request.output_ids) >= request.params.max_new_tokens:
                request.finish_reason = FINISH_LENGTH
        if request.finish_reason is None:
            return StepOutput(request.seq_id, text, out_token)
        text += request.text.push(request.detok.flush())
        return StepOutput(request.seq_id, text, out_token, finished=True, result=self._result(request, now))

    # ------------------------------------------------------------------------------------------ results

    def _evidence(self, window: VideoWindow, batch: BatchPrefill, row: int) -> list[Evidence]:
        """Clips by their share of the last prompt token's attention to the visual tokens."""
        found = batch.attention[row] if batch.attention else None
        if found is None or self.evidence_top < 1:
            return []
        indices, scores = found
        per_clip = torch.zeros(window.num_clips, dtype=torch.float64)
        per_clip.index_add_(0, indices // window.tokens_per_clip, scores.double())
        total = float(per_clip.sum())
        if total <= 0:
            return []
        order = torch.argsort(per_clip, descending=True, stable=True)[: self.evidence_top]
        return [
            Evidence(
                clip_id=window.clip_ids[c],
                start=window.starts[c],
                end=window.ends[c],
                score=float(per_clip[c]) / total,
            )
            for c in order.tolist()
            if per_clip[c] > 0
        ]

    def _result(self, request: _Request, now: float) -> AnswerResult:
        p, w = request.prefix, request.prefix.window
        first = request.first_token_at
        decode_s = now - first if first is not None else 0.0
        steps = max(0, request.sampled - 1)
        timings = Timings(
            projector=p.projector_s,
            prefix=p.prefix_s,
            prefill=request.prefill_s,
            first_token=first - request.arrival if first is not None else 0.0,
            decode=decode_s,
            tokens_per_s=steps / decode_s if decode_s > 0 else 0.0,
        )
        return AnswerResult(
            seq_id=request.seq_id,
            answer=request.text.text,
            finish_reason=request.finish_reason or FINISH_ABORT,
            stream=w.stream,
            window_start=w.start,
            window_end=w.end,
            clips=[
                ClipTime(cid, s, e, f)
                for cid, s, e, f in zip(w.clip_ids, w.starts, w.ends, w.frames, strict=True)
            ],
            duration=w.duration,
            num_frames=w.num_frames,
            visual_tokens=w.visual_tokens,
            visual_kept=p.visual_kept,
            dropout=p.dropout,
            evidence=list(request.evidence),
            prompt_tokens=len(p.text_ids) + w.visual_tokens + len(request.suffix_ids),
            new_tokens=len(request.output_ids),
            timings=timings,
            prefill_batch=request.prefill_batch,
            decode_batch=request.decode_batch,
        )

    # ----------------------------------------------------------------------------------------- watches

    def score_yes_no(self, prefix: PrefixHandle, questions: Sequence[str]) -> list[float]:
        """P("Yes") / (P("Yes") + P("No")) of the first answer token, per question, batched on one prefix.

        Each question is asked as "{question} Answer with Yes or No."; nothing is decoded.
        """
        if any(not isinstance(q, str) or not q.strip() for q in questions):
            raise PromptError("a yes/no question is empty")
        suffixes = [self._suffix(prefix, f"{q.strip()} {YES_NO_INSTRUCTION}", 1) for q in questions]
        scores: list[float] = []
        step = self.scheduler.max_batch
        for i in range(0, len(suffixes), step):
            logits = self.runner.prefill(prefix.visual, suffixes[i : i + step], evidence=False).logits
            pair = torch.stack([logits[:, self._yes], logits[:, self._no]], dim=-1)
            scores += torch.softmax(pair.double(), dim=-1)[:, 0].tolist()
        return scores

    # ---------------------------------------------------------------------------------------- blocking

    def answer(
        self,
        window: VideoWindow,
        question: str,
        *,
        dropout: DropoutConfig | None = None,
        params: SamplingParams | None = None,
    ) -> AnswerStream:
        """Answer one question now: computes the prefix, then iterate for text; `.result` at the end.

        Drives `step()` itself, so use it where nothing else drives this engine (CLI, scripts).
        """
        t0 = time.perf_counter()
        prefix = self.prefix(window, dropout)
        return AnswerStream(self, self.add(prefix, question, params, arrival=t0))

    # --------------------------------------------------------------------------------------- internals

    def _encode(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _single_token(self, word: str) -> int:
        ids = self._encode(word)
        if len(ids) != 1:
            raise PromptError(
                f"the tokenizer splits {word!r} into {len(ids)} tokens; yes/no scoring needs one"
            )
        return ids[0]
