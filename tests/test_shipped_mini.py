"""The weights shipped in model/weights/mini: loaded through the normal loader, they answer held-out
world questions.

These run when the weights are there; without them they skip, and under CI=true they fail (the weights
are part of the release). `flashlive train` makes them (docs/model.md, "The mini preset").
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import require

from flashlive.model.engine import Engine
from flashlive.model.generation_config import RequestSampling
from flashlive.model.pipeline import TowerEncoder, load_tower_encoder
from flashlive.model.shipped import PROVENANCE_FILE, shipped_dir, weights_present
from flashlive.model.window import VideoWindow
from flashlive.model.world import QA, Style, World, ask

# Worlds from this seed on are held out: training draws its worlds below it.
HELD_OUT_SEED = 1_000_000_000
KINDS = ("colour", "shape", "count", "motion", "presence")
PER_KIND = 8  # 40 questions
FRAMES = 8  # two 4-frame clips at 1 fps
MAX_BYTES = 20_000_000

pytestmark = pytest.mark.slow


def held_out_questions() -> list[tuple[int, list[QA]]]:
    """A fixed set: PER_KIND questions of each kind, from consecutive held-out worlds (seed, questions)."""
    counts = dict.fromkeys(KINDS, 0)
    out: list[tuple[int, list[QA]]] = []
    seed = HELD_OUT_SEED
    while min(counts.values()) < PER_KIND:
        video = World(seed, style=Style.random(seed)).video(0.0, FRAMES)
        picked = []
        for qa in ask(video, np.random.default_rng(seed), KINDS):
            if counts[qa.kind] < PER_KIND:
                counts[qa.kind] += 1
                picked.append(qa)
        if picked:
            out.append((seed, picked))
        seed += 1
    return out


def normalise(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


@pytest.fixture(scope="module")
def shipped() -> Iterator[None]:
    require(
        weights_present("mini"), f"no shipped mini weights in {shipped_dir('mini')}: run `flashlive train`"
    )
    yield


def world_window(encoder: TowerEncoder, seed: int) -> VideoWindow:
    frames = list(World(seed, style=Style.random(seed)).frames(fps=1.0, count=FRAMES))
    images = np.stack([f.image for f in frames if f.image is not None])  # [8, H, W, 3]
    clips = images.reshape(FRAMES // 4, 4, *images.shape[1:])
    tokens = encoder.encode(clips)
    return VideoWindow.from_file(
        tokens,
        [f.t for f in frames],
        duration=float(FRAMES),
        name=f"world-{seed}",
        encoder_id=encoder.encoder_id,
    )


def test_shipped_mini_is_small_named_and_trained(shipped: None) -> None:
    folder = shipped_dir("mini")
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) <= MAX_BYTES
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    assert provenance.get("commit") and provenance.get("seed") is not None
    from flashlive.model.worker.model_engine import ModelEngine

    assert ModelEngine.load("mini", progress=False).random_weights is False  # no "untrained" banner


def test_shipped_mini_answers_held_out_questions(shipped: None) -> None:
    encoder = load_tower_encoder("mini")
    engine = Engine.load("mini")
    params = engine.sampling(RequestSampling(max_new_tokens=16))  # greedy; answers are a few words
    asked, wrong = 0, []
    for seed, qas in held_out_questions():
        window = world_window(encoder, seed)
        for qa in qas:
            stream = engine.answer(window, qa.question, dropout=None, params=params)  # the service's default
            answer = "".join(stream)
            asked += 1
            if normalise(answer) != normalise(qa.answer):
                wrong.append(f"world {seed} {qa.kind}: {qa.question!r} -> {answer!r}, want {qa.answer!r}")
    assert asked == len(KINDS) * PER_KIND
    assert len(wrong) <= asked // 10, "\n".join(wrong)
