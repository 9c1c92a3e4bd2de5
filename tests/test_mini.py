"""The `mini` presets: their shape, the restricted vocabulary, their weights folder (save, load, absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import media
import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from flashlive.model.checkpoint import (
    INDEX_FILE,
    SINGLE_FILE,
    VOCAB_IDS_KEY,
    CheckpointError,
    config_from_released,
    preset_or_dir,
    released_config_dict,
    save_checkpoint,
)
from flashlive.model.config import (
    MODEL_CARD_DROPOUT,
    WORLD_VOCAB,
    DropoutConfig,
    FlashConfig,
    LLMConfig,
    get_preset,
    scale_dropout,
)
from flashlive.model.decoding import SamplingParams
from flashlive.model.engine import Engine
from flashlive.model.llm import Qwen2LM, random_init_
from flashlive.model.pipeline import build_llm, build_projector, build_tower, load_tower_encoder, resolve
from flashlive.model.projector import Projector
from flashlive.model.shipped import WEIGHTS_ENV, weights_present
from flashlive.model.vision import VisionTower
from flashlive.model.vocab_rows import kept_ids, world_vocab_ids
from flashlive.model.window import VideoWindow

MB = 1_000_000


# ------------------------------------------------------------------------------------------- presets


def test_mini_presets_are_one_shape_at_two_resolutions() -> None:
    mini, mini224, rand = get_preset("mini"), get_preset("mini-224"), get_preset("mini-random")
    assert (mini.vision.image_size, mini224.vision.image_size, rand.vision.image_size) == (448, 224, 448)
    assert mini.llm == mini224.llm == rand.llm and mini.merge == mini224.merge
    assert replace(mini224.vision, image_size=448) == mini.vision
    assert mini.merge.tokens_per_clip == 64 and mini.merge.metric_chunks == mini.vision.heads
    assert mini.shipped == mini224.shipped == "mini" and rand.shipped is None
    # only the explicitly random preset generates weights (the page's banner follows cfg.seed)
    assert mini.seed is None and mini224.seed is None and rand.seed is not None
    assert len({mini.encoder_id, mini224.encoder_id, rand.encoder_id}) == 3


def test_mini_context_holds_its_longest_haystack() -> None:
    cfg = get_preset("mini")
    assert cfg.max_frames >= 3000
    visual = cfg.max_frames // cfg.vision.clip_frames * cfg.merge.tokens_per_clip
    assert visual + 1024 <= cfg.llm.max_position_embeddings  # prompt and answer fit beside it


def test_mini_dropout_is_the_model_card_recipe_at_the_same_depths() -> None:
    cfg = get_preset("mini")
    assert cfg.dropout == DropoutConfig("uniform0_attention", (1, 4), (1.0, 0.75, 0.25))
    assert cfg.dropout == scale_dropout(MODEL_CARD_DROPOUT, cfg.llm.num_hidden_layers)


@pytest.mark.parametrize(("layers", "want"), [(28, (4, 18)), (14, (2, 9)), (6, (1, 4)), (4, (1, 3))])
def test_scale_dropout_keeps_relative_depths(layers: int, want: tuple[int, ...]) -> None:
    assert scale_dropout(MODEL_CARD_DROPOUT, layers).layers == want


def test_scale_dropout_refuses_too_few_layers() -> None:
    with pytest.raises(ValueError, match="too few"):
        scale_dropout(MODEL_CARD_DROPOUT, 2)


def test_llm_config_refuses_bad_vocab_ids() -> None:
    for bad in ((5, 3), (1, 1), (-1, 2), (7, 200), ()):
        with pytest.raises(ValueError, match="vocab_ids"):
            LLMConfig(vocab_size=100, vocab_ids=bad)
    with pytest.raises(ValueError, match="vocab_ids"):
        LLMConfig(vocab_ids="everything")  # type: ignore[arg-type]


def test_world_vocab_covers_the_prompt_tokens(tok: PreTrainedTokenizerFast) -> None:
    ids = set(world_vocab_ids())
    assert {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")} <= ids
    for word in ("Yes", "No"):  # watches score these two tokens
        assert set(tok.encode(word, add_special_tokens=False)) <= ids


# ------------------------------------------------------------------------------- restricted vocabulary

KEPT = (3, 10, 500, 151643, 151645)
SMALL = LLMConfig(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
    vocab_ids=KEPT,
)


@pytest.fixture(scope="module")
def restricted() -> Qwen2LM:
    return random_init_(Qwen2LM(SMALL), 5).eval()


def test_restricted_model_has_one_row_per_kept_id_and_a_reserved_row(restricted: Qwen2LM) -> None:
    state = restricted.state_dict()
    assert state["model.embed_tokens.weight"].shape == (len(KEPT) + 1, 64)
    assert state["lm_head.weight"].shape == (len(KEPT) + 1, 64)
    assert not any("row" in key for key in state)  # the mapping lives in config.json, not the weights


def test_unknown_ids_share_the_reserved_row(restricted: Qwen2LM) -> None:
    ids = torch.tensor([[3, 500, 151645, 4, 151644, 0]])
    assert restricted.rows(ids).tolist() == [[0, 2, 4, 5, 5, 5]]
    emb = restricted.embed(ids)[0]
    table = restricted.model.embed_tokens.weight
    assert torch.equal(emb[1], table[2]) and torch.equal(emb[3], table[5]) and torch.equal(emb[4], emb[5])
    with pytest.raises(ValueError, match="token ids must lie in"):
        restricted.rows(torch.tensor([151936]))


def test_restricted_model_is_the_full_model_on_its_kept_ids(restricted: Qwen2LM) -> None:
    # The same weights in a full-vocabulary model (kept rows at their ids) give the same logits there.
    full = Qwen2LM(replace(SMALL, vocab_ids=None)).eval()
    state = {k: v.clone() for k, v in restricted.state_dict().items()}
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        table = torch.zeros(SMALL.vocab_size, 64)
        table[list(KEPT)] = state[key][: len(KEPT)]
        state[key] = table
    full.load_state_dict(state)
    ids = torch.tensor([[3, 10, 500, 151643, 3, 10]])
    with torch.no_grad():
        got, want = restricted(restricted.embed(ids)), full(full.embed(ids))
    assert got.shape == want.shape == (1, 6, SMALL.vocab_size)
    assert torch.allclose(got[..., list(KEPT)], want[..., list(KEPT)], atol=1e-5)
    others = torch.ones(SMALL.vocab_size, dtype=torch.bool)
    others[list(KEPT)] = False
    assert bool(torch.isneginf(got[..., others]).all())
    rows = restricted(restricted.embed(ids), rows=True)  # training: logits over rows
    assert rows.shape == (1, 6, len(KEPT) + 1)
    assert torch.equal(rows[..., : len(KEPT)], got[..., list(KEPT)])


@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_decoding_produces_only_kept_ids(restricted: Qwen2LM, temperature: float) -> None:
    from flashlive.model.generate import generate

    gen = torch.Generator().manual_seed(2)
    embeds = torch.randn(1, 12, 64, generator=gen)
    params = SamplingParams(max_new_tokens=40, temperature=temperature, top_k=0, seed=3)
    out = list(generate(restricted, restricted.prefill(embeds), params, stop_ids=()))
    assert len(out) == 40 and set(out) <= set(KEPT)
    assert len(set(out)) > 1 or temperature == 0.0


def test_config_json_carries_the_kept_ids() -> None:
    cfg = FlashConfig(name="t", vision=get_preset("tiny").vision, llm=SMALL)
    raw = released_config_dict(cfg)
    assert raw[VOCAB_IDS_KEY] == list(KEPT) and raw["vocab_size"] == SMALL.vocab_size
    assert config_from_released(raw, "t").llm.vocab_ids == KEPT
    for bad, why in (([10, 3], "increasing"), ([3, 151936], "increasing"), ("3,10", "list of token ids")):
        with pytest.raises(CheckpointError, match=why):
            config_from_released({**raw, VOCAB_IDS_KEY: bad}, "t")
    assert VOCAB_IDS_KEY not in released_config_dict(get_preset("tiny"))


# ------------------------------------------------------------------------------------ weights folder


def mini_model(image_size: int, seed: int = 0) -> tuple[FlashConfig, VisionTower, Projector, Qwen2LM]:
    """A random mini in fp16-exact values (what an fp16 file stores), computing in fp32."""
    cfg = replace(get_preset("mini"), shipped=None)
    cfg = replace(cfg, vision=replace(cfg.vision, image_size=image_size))
    tower = VisionTower(cfg.vision).init_random(seed)
    projector = Projector(cfg.vision.width, cfg.llm.hidden_size).init_random(seed + 1)
    llm = random_init_(Qwen2LM(cfg.llm), seed + 2)
    for part in (tower, projector, llm):
        part.half().float().eval()
    return cfg, tower, projector, llm


@pytest.fixture(scope="module")
def mini224() -> tuple[FlashConfig, VisionTower, Projector, Qwen2LM]:
    return mini_model(224)


def window_of(tokens: np.ndarray, name: str = "w") -> VideoWindow:
    n = tokens.shape[0]
    times = [i * 1.0 for i in range(4 * n)]
    return VideoWindow.from_file(tokens, times, duration=4.0 * n, name=name)


def greedy_ids(engine: Engine, window: VideoWindow, question: str, n: int = 12) -> list[int]:
    prefix = engine.prefix(window, None)
    seq = engine.add(prefix, question, SamplingParams(max_new_tokens=n, stop_ids=()))
    ids: list[int] = []
    while engine.has_unfinished():
        ids += [out.token_id for out in engine.step() if out.seq_id == seq and out.token_id is not None]
    return ids


def test_fp16_file_of_mini_is_at_most_20_mb(
    tmp_path: Path, mini224: tuple[FlashConfig, VisionTower, Projector, Qwen2LM]
) -> None:
    cfg, tower, projector, llm = mini224
    save_checkpoint(tmp_path, cfg, tower, projector, llm, provenance={"seed": 0})
    size = (tmp_path / SINGLE_FILE).stat().st_size
    params = sum(p.numel() for m in (tower, projector, llm) for p in m.parameters())
    assert 6_000_000 <= params <= 10_000_000
    assert size <= 20 * MB and size >= 2 * params  # fp16: two bytes a parameter, a little header
    assert json.loads((tmp_path / "provenance.json").read_text()) == {"seed": 0}
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]


@pytest.mark.parametrize("single_file", [True, False])
def test_mini_round_trips_through_the_loader(
    tmp_path: Path,
    tok: PreTrainedTokenizerFast,
    mini224: tuple[FlashConfig, VisionTower, Projector, Qwen2LM],
    single_file: bool,
) -> None:
    cfg, tower, projector, llm = mini224
    save_checkpoint(tmp_path, cfg, tower, projector, llm, single_file=single_file, shard_bytes=4 << 20)
    assert (tmp_path / INDEX_FILE).is_file() != single_file
    assert (len(list(tmp_path.glob("*.safetensors"))) == 1) == single_file
    spec = resolve(str(tmp_path))
    assert spec.cfg.llm.vocab_ids == kept_ids(cfg.llm) and spec.cfg.dropout == cfg.dropout
    assert spec.cfg.vision == cfg.vision and spec.cfg.max_frames == cfg.max_frames
    got_tower, got_projector, got_llm = build_tower(spec), build_projector(spec), build_llm(spec)
    for got, want in ((got_tower, tower), (got_projector, projector), (got_llm, llm)):
        state = got.state_dict()
        assert all(torch.equal(state[k], v) for k, v in want.state_dict().items())
    clip = torch.rand(1, 3, 4, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        features = tower(clip)
        assert torch.equal(got_tower(clip), features)
    tokens = np.random.default_rng(5).standard_normal((2, 64, cfg.vision.width)).astype(np.float16)
    window = window_of(tokens)
    question = "What colour is the ball?"
    loaded = Engine.load(str(tmp_path))
    original = Engine(cfg, projector, llm, tok)
    assert greedy_ids(loaded, window, question) == greedy_ids(original, window, question)


def test_mini_preset_loads_the_weights_folder_at_its_resolution(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mini224: tuple[FlashConfig, VisionTower, Projector, Qwen2LM],
) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    assert not weights_present("mini")
    cfg, tower, projector, llm = mini224
    cfg448 = replace(cfg, vision=replace(cfg.vision, image_size=448))
    save_checkpoint(tmp_path / "mini", cfg448, tower, projector, llm)
    assert weights_present("mini")
    for name, size in (("mini", 448), ("mini-224", 224)):
        got, ckpt = preset_or_dir(name)
        assert ckpt == tmp_path / "mini" and got.vision.image_size == size and got.name == name
        assert got.seed is None and got.llm.vocab_ids == kept_ids(cfg.llm)
    encoder = load_tower_encoder("mini-224")
    assert encoder.encoder_id == get_preset("mini-224").encoder_id
    clips = np.random.default_rng(6).integers(0, 256, (1, 4, 96, 128, 3), dtype=np.uint8)
    assert encoder.encode(clips).shape == (1, 64, cfg.vision.width)


def test_mini_without_weights_says_how_to_make_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "README.md").write_text("empty until trained\n")
    for load in (lambda: load_tower_encoder("mini"), lambda: Engine.load("mini-224")):
        with pytest.raises(CheckpointError, match=r"no trained weights yet.*`flashlive train`.*mini-random"):
            load()


def test_ask_file_with_mini_and_no_weights_fails_clearly(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    media.write_video(video, seconds=2.0)
    env = {**os.environ, WEIGHTS_ENV: str(tmp_path / "none"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "flashlive", "ask-file", str(video), "What is there?", "--model", "mini"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode != 0
    assert "no trained weights yet" in proc.stderr and "flashlive train" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_picks_mini_only_when_its_weights_are_there(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mini224: tuple[FlashConfig, VisionTower, Projector, Qwen2LM],
) -> None:
    from flashlive.app.serve import default_model, quickstart_config

    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    assert default_model() == "tiny"
    save_checkpoint(tmp_path / "mini", *mini224)
    assert default_model() == "mini"
    assert quickstart_config(tmp_path / "data").model.name == "mini"


def test_mini_random_is_random_by_name_only() -> None:
    spec = resolve("mini-random")
    assert spec.ckpt is None and spec.cfg.seed is not None
    llm = build_llm(spec)
    assert llm.model.embed_tokens.weight.shape == (len(world_vocab_ids()) + 1, spec.cfg.llm.hidden_size)
    assert spec.cfg.llm.vocab_ids == WORLD_VOCAB
