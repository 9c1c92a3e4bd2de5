"""Checkpoint layout: tiny checkpoints written with the released key names load strictly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashlive.model.checkpoint import (
    INDEX_FILE,
    CheckpointError,
    config_from_released,
    load_config,
    released_config_dict,
    resolve_checkpoint_dir,
    save_released_layout,
)
from flashlive.model.config import PRESETS, DropoutConfig, UnknownPresetError, get_preset
from flashlive.model.llm import Qwen2LM
from flashlive.model.pipeline import build_llm, build_projector, build_tower, resolve
from flashlive.model.projector import Projector
from flashlive.model.vision import VisionTower

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint in the released layout: sharded safetensors + index + config.json."""
    cfg = replace(TINY, dropout=DropoutConfig("uniform0_attention", (1, 3), (1.0, 0.75, 0.25)))
    tower = VisionTower(cfg.vision).init_random(11)
    projector = Projector(cfg.vision.width, cfg.llm.hidden_size).init_random(12)
    torch.manual_seed(13)
    llm = Qwen2LM(cfg.llm)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-released"
    parts = [("model.vision_tower.vision_tower.", tower), ("model.mm_projector.", projector), ("", llm)]
    save_released_layout(path, cfg, parts, shard_bytes=1 << 20)
    return path


def test_layout_has_released_keys_and_shards(tiny_ckpt: Path) -> None:
    index = json.loads((tiny_ckpt / INDEX_FILE).read_text())
    keys = set(index["weight_map"])
    assert len(set(index["weight_map"].values())) > 1, "expected several shards"
    assert "model.vision_tower.vision_tower.encoder.patch_embed.proj.weight" in keys
    assert "model.vision_tower.vision_tower.encoder.blocks.1.attn.q_bias" in keys
    assert "model.vision_tower.vision_tower.encoder.vision_layernorm.weight" in keys
    assert "model.mm_projector.mlp.0.weight" in keys and "model.mm_projector.mlp.2.bias" in keys
    assert "model.layers.3.self_attn.q_proj.bias" in keys and "model.embed_tokens.weight" in keys
    raw = json.loads((tiny_ckpt / "config.json").read_text())
    assert raw["mm_projector_type"] == "tome16_mlp_hd64" and raw["mm_vision_tower"] == "umt-large"
    assert raw["llm_compress_layer_list"] == [1, 3]


def test_loads_strictly_and_reproduces_weights(tiny_ckpt: Path) -> None:
    spec = resolve(str(tiny_ckpt))
    assert spec.ckpt == tiny_ckpt
    assert spec.cfg.dropout == DropoutConfig("uniform0_attention", (1, 3), (1.0, 0.75, 0.25))
    tower, projector = build_tower(spec), build_projector(spec)
    want_tower = VisionTower(TINY.vision).init_random(11)
    want_proj = Projector(TINY.vision.width, TINY.llm.hidden_size).init_random(12)
    llm = build_llm(spec)
    torch.manual_seed(13)
    want_llm = Qwen2LM(TINY.llm)
    assert "lm_head.weight" not in json.loads((tiny_ckpt / INDEX_FILE).read_text())["weight_map"]  # tied
    assert torch.equal(llm.lm_head.weight, llm.model.embed_tokens.weight)
    for got, want in ((tower, want_tower), (projector, want_proj), (llm, want_llm)):
        for key, value in want.state_dict().items():
            assert torch.equal(got.state_dict()[key], value), key


def _corrupt(src: Path, dst: Path, edit: str) -> Path:
    """Copy a checkpoint and break one tensor of the tower: drop it, reshape it, or add a stray one."""
    import shutil

    shutil.copytree(src, dst)
    index = json.loads((dst / INDEX_FILE).read_text())
    key = "model.vision_tower.vision_tower.encoder.blocks.0.attn.proj.weight"
    shard = dst / index["weight_map"][key]
    tensors = load_file(str(shard))
    if edit == "shape":
        tensors[key] = tensors[key][:, :-1].contiguous()
    elif edit == "missing":
        del tensors[key]
        del index["weight_map"][key]
    elif edit == "unexpected":
        extra = "model.vision_tower.vision_tower.encoder.blocks.0.attn.k_bias"
        tensors[extra] = torch.zeros(4)
        index["weight_map"][extra] = shard.name
    save_file(tensors, str(shard))
    (dst / INDEX_FILE).write_text(json.dumps(index))
    return dst


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("shape", "encoder.blocks.0.attn.proj.weight has shape (64, 63), expected (64, 64)"),
        ("missing", "missing tensor model.vision_tower.vision_tower.encoder.blocks.0.attn.proj.weight"),
        ("unexpected", "unexpected tensor model.vision_tower.vision_tower.encoder.blocks.0.attn.k_bias"),
    ],
)
def test_bad_tensor_names_the_key(tiny_ckpt: Path, tmp_path: Path, edit: str, message: str) -> None:
    broken = _corrupt(tiny_ckpt, tmp_path / "broken", edit)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_tower(resolve(str(broken)))


def test_released_configs_map_to_presets() -> None:
    for short in ("VideoChat-Flash-Qwen2_5-2B_res448", "VideoChat-Flash-Qwen2-7B_res224"):
        preset = PRESETS[short]
        raw = released_config_dict(preset)
        got = config_from_released(raw, preset.name)
        assert got.vision == preset.vision and got.llm == preset.llm and got.merge == preset.merge
    # The release may store the lists as comma-separated strings.
    raw = released_config_dict(PRESETS["VideoChat-Flash-Qwen2-7B_res448"])
    raw.update(mm_llm_compress=True, llm_compress_type="uniform0_attention")
    raw.update(llm_compress_layer_list="4,18", llm_image_token_ratio_list="1,0.75,0.25")
    assert config_from_released(raw, "x").dropout == DropoutConfig(
        "uniform0_attention", (4, 18), (1, 0.75, 0.25)
    )


def test_bad_configs_and_sources_are_clear(tmp_path: Path) -> None:
    raw = released_config_dict(TINY)
    for key, value, msg in [
        ("mm_vision_tower", "eva-giant", "mm_vision_tower 'eva-giant' is not supported"),
        ("mm_projector_type", "mlp2x_gelu", "mm_projector_type 'mlp2x_gelu' is not supported"),
    ]:
        with pytest.raises(CheckpointError, match=msg):
            config_from_released({**raw, key: value}, "x")
    with pytest.raises(CheckpointError, match="missing key 'hidden_size'"):
        config_from_released({k: v for k, v in raw.items() if k != "hidden_size"}, "x")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        resolve_checkpoint_dir(str(tmp_path))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        resolve_checkpoint_dir("OpenGVLab/VideoChat-Flash-Qwen2-7B_res224")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_config(tmp_path)
    with pytest.raises(UnknownPresetError, match="unknown model preset 'huge'"):
        get_preset("huge")
