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
from flashlive.model.config import PRESETS, DropoutConfig, FlashConfig, UnknownPresetError, get_preset
from flashlive.model.llm import Qwen2LM
from flashlive.model.pipeline import build_llm, build_projector, build_tower, resolve
from flashlive.model.projector import Projector
from flashlive.model.vision import VisionTower, position_table, sinusoid_table

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


# ---------------------------------------------------------------- release parity: config and layouts


def _parts(cfg: FlashConfig, seed: int) -> list[tuple[str, torch.nn.Module]]:
    tower = VisionTower(cfg.vision).init_random(seed)
    projector = Projector(cfg.vision.width, cfg.llm.hidden_size).init_random(seed + 1)
    torch.manual_seed(seed + 2)
    return [
        ("model.vision_tower.vision_tower.", tower),
        ("model.mm_projector.", projector),
        ("", Qwen2LM(cfg.llm)),
    ]


def _assert_loads_back(path: Path, parts: list[tuple[str, torch.nn.Module]]) -> Qwen2LM:
    spec = resolve(str(path))
    llm = build_llm(spec)
    for got, (_, want) in zip((build_tower(spec), build_projector(spec), llm), parts, strict=True):
        for key, value in want.state_dict().items():
            assert torch.equal(got.state_dict()[key], value), key
    return llm


@pytest.mark.parametrize("store_tied", [True, False])
def test_single_file_layout_with_and_without_a_stored_tied_head(tmp_path: Path, store_tied: bool) -> None:
    # The 2B release: one model.safetensors, no index, tie_word_embeddings true and lm_head.weight stored.
    assert TINY.llm.tie_word_embeddings
    parts = _parts(TINY, 20)
    save_released_layout(tmp_path, TINY, parts, single_file=True, store_tied=store_tied)
    assert not (tmp_path / INDEX_FILE).exists()
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert ("lm_head.weight" in keys) == store_tied
    llm = _assert_loads_back(tmp_path, parts)
    assert llm.lm_head.weight is llm.model.embed_tokens.weight


def test_a_stored_head_that_differs_from_the_tied_embedding_is_reported_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parts = _parts(TINY, 30)
    save_released_layout(tmp_path, TINY, parts, single_file=True, store_tied=True)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 0.5
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with caplog.at_level("WARNING"):
        llm = _assert_loads_back(tmp_path, parts)  # the embedding, as transformers' tie_weights leaves it
    assert "lm_head.weight is stored but tie_word_embeddings is true" in caplog.text
    assert "max difference 0.5" in caplog.text
    assert torch.equal(llm.lm_head.weight, tensors["model.embed_tokens.weight"])


def test_untied_head_is_loaded_and_required(tmp_path: Path) -> None:
    cfg = replace(TINY, llm=replace(TINY.llm, tie_word_embeddings=False))
    parts = _parts(cfg, 40)
    save_released_layout(tmp_path / "ok", cfg, parts, single_file=True)
    llm = _assert_loads_back(tmp_path / "ok", parts)
    assert not torch.equal(llm.lm_head.weight, llm.model.embed_tokens.weight)
    tensors = load_file(str(tmp_path / "ok" / "model.safetensors"))
    del tensors["lm_head.weight"]
    (tmp_path / "broken").mkdir()
    save_file(tensors, str(tmp_path / "broken" / "model.safetensors"))
    (tmp_path / "broken" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"LLM: missing tensor lm_head\.weight"):
        build_llm(resolve(str(tmp_path / "broken")))


@pytest.mark.parametrize(
    ("tower", "size"),
    [("umt-hd-large", 448), ("umt-large", 224), ("OpenGVLab/umt-hd-l16", 448), ("my-umt-l", 224)],
)
def test_tower_is_picked_by_substring(tower: str, size: int) -> None:
    raw = {**released_config_dict(TINY), "mm_vision_tower": tower}
    assert config_from_released(raw, "x").vision.image_size == size


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling"),
        ("mm_newline_position", "one_token", "mm_newline_position 'one_token' is not supported"),
        ("mm_patch_merge_type", "spatial_unpad", "mm_patch_merge_type 'spatial_unpad' is not supported"),
        ("frame_aspect_ratio", "anyres", "frame_aspect_ratio 'anyres' is not supported"),
        ("vision_encode_type", "image", "vision_encode_type 'image' is not supported"),
        ("vision_encode_type", None, "vision_encode_type 'image' is not supported"),  # the release's default
        ("mm_vision_select_layer", 0, "mm_vision_select_layer 0 is not supported"),
        ("mm_vision_select_layer", -4, "mm_vision_select_layer -4 is not supported"),  # tiny depth is 3
        ("mm_vision_select_layer", "-2", "mm_vision_select_layer '-2' is not supported"),
        ("mm_vision_tower", "siglip-so400m-umt", r"mm_vision_tower 'siglip-so400m-umt' .* \(only UMT towers"),
        ("mm_vision_tower", "internvideo2", r"mm_vision_tower 'internvideo2' is not supported"),
        ("mm_local_num_frames", 0, "mm_local_num_frames 0 is not a positive integer"),
    ],
)
def test_unimplemented_settings_are_refused_naming_the_key(key: str, value: object, message: str) -> None:
    raw = released_config_dict(TINY)
    if value is None:
        del raw[key]
    else:
        raw[key] = value
    with pytest.raises(CheckpointError, match=f"config.json: {message}"):
        config_from_released(raw, "x")


def test_released_spellings_are_accepted() -> None:
    raw = released_config_dict(PRESETS["VideoChat-Flash-Qwen2-7B_res448"])
    assert raw["mm_vision_select_layer"] == -2 and raw["vision_encode_type"] == "video_image"
    for merge in ("flat", "spatial", "spatial_nopad"):
        assert config_from_released({**raw, "mm_patch_merge_type": merge}, "x").vision.layers == 23
    assert config_from_released({**raw, "rope_scaling": None}, "x").llm.rope_theta == 1e6


def test_select_layer_sets_the_blocks_built_and_loaded(tmp_path: Path) -> None:
    raw = released_config_dict(PRESETS["VideoChat-Flash-Qwen2-7B_res224"])
    assert config_from_released(raw, "x").vision.layers == 23  # 24 - 2 + 1
    assert config_from_released({**raw, "mm_vision_select_layer": -1}, "x").vision.layers == 24
    assert config_from_released({**raw, "mm_vision_select_layer": -24}, "x").vision.layers == 1
    # Honoured when loading: a tiny checkpoint (depth 3, blocks 0-1 stored) asked for its last layer
    # needs block 2, which is not there.
    save_released_layout(tmp_path, TINY, _parts(TINY, 50), single_file=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["flashlive_vision_depth"] == 3
    (tmp_path / "config.json").write_text(json.dumps({**config, "mm_vision_select_layer": -1}))
    with pytest.raises(
        CheckpointError, match=r"missing tensor model\.vision_tower\.vision_tower\.encoder\.blocks\.2"
    ):
        build_tower(resolve(str(tmp_path)))


def test_position_table_base_is_four_frames_whatever_the_clip_length() -> None:
    raw = {**released_config_dict(TINY), "mm_local_num_frames": 8}
    cfg = config_from_released(raw, "x")
    assert (cfg.vision.clip_frames, cfg.vision.base_frames, cfg.merge.tokens_per_clip) == (8, 4, 128)
    tower = VisionTower(cfg.vision)
    table = tower.positions(8, torch.device("cpu"), torch.float32)
    assert torch.equal(table, position_table(8, 14, cfg.vision.width, base_frames=4))
    assert not torch.allclose(table, sinusoid_table(8 * 196, cfg.vision.width))
