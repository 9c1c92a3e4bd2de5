"""Who answers: the `AnswerSource` protocol and the model behind it.

The harness hands a source one item (a video and its questions) and a dropout setting, and gets back
one answer per question and the prefill time. `ModelSource` runs the real pipeline: clip tokens from
the tower (cached across items and dropout settings, see tokens.py), a window, the engine's shared
visual prefix, then all the item's questions as one batch (greedy, short answers). Tests plug in
sources that answer from the truth, to check the harness and the scoring without a trained model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from flashlive.model.config import DropoutConfig, FlashConfig
from flashlive.model.evaluation.errors import EvalError
from flashlive.model.evaluation.items import Item, Video, WorldVideo
from flashlive.model.evaluation.scoring import MULTIPLE_CHOICE
from flashlive.model.evaluation.tokens import ClipEncoder, FileTokens, WorldTokens
from flashlive.model.world import CLIP_FRAMES

if TYPE_CHECKING:
    from flashlive.model.engine import Engine
    from flashlive.model.result import StepOutput
    from flashlive.model.window import VideoWindow

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 32  # the longest world answer (an event sentence) is about 12 tokens
CHOICE_TOKENS = 4  # an option letter, maybe with its parenthesis: the paper reads the first token
PROMPT_MARGIN = 256  # text tokens a question, the time message and the answer take beside the video


@dataclass(frozen=True)
class Answers:
    texts: list[str]  # one per question, in order
    prefill_s: float = 0.0  # wall seconds: projector + shared prefix + the questions' prefill
    prefill_cpu_s: float = 0.0  # process CPU seconds over the same span
    visual_tokens: int = 0  # before dropout
    visual_kept: tuple[int, ...] = ()  # after each dropout stage


class Context(Protocol):
    """What decides which haystacks can be asked about: a name for messages and the context's size."""

    @property
    def name(self) -> str: ...

    @property
    def max_frames(self) -> int | None:
        """The longest video (frames) whose tokens fit the context with a question; None: no limit."""
        ...


class AnswerSource(Context, Protocol):
    """Anything that answers an item's questions under a dropout setting."""

    @property
    def num_layers(self) -> int:
        """LLM layers, to place the dropout recipe at the same relative depths."""
        ...

    def answer(self, item: Item, dropout: DropoutConfig | None) -> Answers: ...


def context_frames(cfg: FlashConfig) -> int:
    """Frames of video that fit a model's context beside a question and a short answer."""
    per_clip = cfg.merge.tokens_per_clip
    return max(0, (cfg.llm.max_position_embeddings - PROMPT_MARGIN) // per_clip) * CLIP_FRAMES


@dataclass(frozen=True)
class ModelContext:
    """A model's context, from its config alone (no weights): checks a run before the model loads."""

    name: str
    max_frames: int

    @classmethod
    def of(cls, model: str, *, download: bool = False) -> ModelContext:
        from flashlive.model.checkpoint import preset_or_dir

        cfg, _ = preset_or_dir(model, download=download)
        return cls(cfg.name, context_frames(cfg))


class ModelSource:
    """The model answering: tower tokens -> window -> shared prefix -> batched greedy answers."""

    def __init__(self, engine: Engine, encoder: ClipEncoder, *, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        from flashlive.model.decoding import SamplingParams

        if encoder.encoder_id != engine.encoder_id:
            raise EvalError(f"tower {encoder.encoder_id!r} and LLM {engine.encoder_id!r} are not one model")
        self.engine = engine
        self.encoder = encoder
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        self.choice_params = SamplingParams(
            max_new_tokens=min(CHOICE_TOKENS, max_new_tokens), temperature=0.0
        )
        self.world_tokens = WorldTokens(encoder)
        self.file_tokens = FileTokens(encoder)
        self._window: tuple[str, VideoWindow] | None = None  # the last item's: reused across dropouts

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        download: bool = False,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ) -> ModelSource:
        from flashlive.model.engine import Engine
        from flashlive.model.pipeline import load_tower_encoder

        encoder = load_tower_encoder(model, device=device, dtype=dtype, download=download)
        engine = Engine.load(model, device=device, dtype=dtype, download=download)
        return cls(engine, encoder, max_new_tokens=max_new_tokens)

    @property
    def name(self) -> str:
        return self.engine.cfg.name

    @property
    def num_layers(self) -> int:
        return self.engine.cfg.llm.num_hidden_layers

    @property
    def max_frames(self) -> int | None:
        return context_frames(self.engine.cfg)

    def tokens(self, video: Video) -> np.ndarray:
        if isinstance(video, WorldVideo):
            return self.world_tokens.tokens(video)
        return self.file_tokens.tokens(video)

    def _window_of(self, item: Item) -> VideoWindow:
        from flashlive.model.window import VideoWindow

        if self._window is not None and self._window[0] == item.id:
            return self._window[1]
        self._window = None
        tokens = self.tokens(item.video)
        n = len(tokens)
        fps = item.video.fps if isinstance(item.video, WorldVideo) else 1.0
        times = [i / fps for i in range(n * CLIP_FRAMES)]
        window = VideoWindow.from_file(
            tokens, times, duration=item.video.seconds, name=item.id, encoder_id=self.encoder.encoder_id
        )
        self._window = (item.id, window)
        return window

    def answer(self, item: Item, dropout: DropoutConfig | None) -> Answers:
        from flashlive.model.errors import PromptError, WindowError

        window = self._window_of(item)
        engine = self.engine
        texts: dict[int, str] = {}
        asked: list[int] = []
        prefill_wall = prefill_cpu = 0.0
        step = engine.scheduler.max_batch
        questions = [
            (q.text, self.choice_params if q.kind in MULTIPLE_CHOICE else self.params) for q in item.questions
        ]
        try:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            prefix = engine.prefix(window, dropout)
            for i in range(0, len(questions), step):
                ids = [engine.add(prefix, q, params) for q, params in questions[i : i + step]]
                asked += ids
                if i:  # later batches: time their prefill alone
                    wall0, cpu0 = time.perf_counter(), time.process_time()
                outputs = engine.step()  # the batch's prefill (and its first tokens)
                prefill_wall += time.perf_counter() - wall0
                prefill_cpu += time.process_time() - cpu0
                _collect(outputs, texts)
                while engine.has_unfinished():
                    _collect(engine.step(), texts)
        except (PromptError, WindowError) as exc:
            raise EvalError(f"{item.id}: {exc}") from None
        missing = [k for k in asked if k not in texts]
        if missing:
            raise EvalError(f"{item.id}: the engine finished without answers for sequences {missing}")
        return Answers(
            [texts[k] for k in asked],
            prefill_s=prefill_wall,
            prefill_cpu_s=prefill_cpu,
            visual_tokens=window.visual_tokens,
            visual_kept=tuple(prefix.visual_kept),
        )


def _collect(outputs: Sequence[StepOutput], texts: dict[int, str]) -> None:
    for out in outputs:
        if out.error is not None:
            raise EvalError(f"answering failed: {out.error}") from out.error
        if out.finished:
            assert out.result is not None
            texts[out.seq_id] = out.result.answer
