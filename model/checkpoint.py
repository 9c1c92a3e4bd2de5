"""Checkpoints: the released VideoChat-Flash layout, read and written.

A checkpoint directory holds `config.json` (Qwen2 keys plus the `mm_*` / `llm_compress*` keys of the
release) and safetensors weights, one file or shards with `model.safetensors.index.json`. One state
dict holds all three parts under these prefixes (DESIGN §2):

    model.vision_tower.vision_tower.encoder.*   -> VisionTower   (its keys start with `encoder.`)
    model.mm_projector.*                        -> Projector     (`mlp.0.*`, `mlp.2.*`)
    everything else (model.embed_tokens, model.layers.N, model.norm, lm_head) -> Qwen2LM

Each part is read on its own, so ingest loads only the tower and workers only projector + LLM.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flashlive.model.config import (
    DROPOUT_MODES,
    DropoutConfig,
    FlashConfig,
    LLMConfig,
    MergeConfig,
    VisionConfig,
    get_preset,
)
from flashlive.model.errors import CheckpointError
from flashlive.model.shipped import PROVENANCE_FILE, require_shipped
from flashlive.model.vocab_rows import kept_ids

log = logging.getLogger(__name__)

TOWER_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
RELEASED_TOWERS = {224: "umt-large", 448: "umt-hd-large"}  # the names the released configs carry
SUPPORTED_PROJECTOR = "tome16_mlp_hd64"
VOCAB_IDS_KEY = "flashlive_vocab_ids"  # a restricted vocabulary's kept ids, in row order
DEFAULT_MAX_FRAMES = 512
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------- locating


def looks_like_repo_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not Path(spec).exists()


def resolve_checkpoint_dir(spec: str, *, download: bool = False) -> Path:
    """A local directory, or a Hugging Face repo id found in the local cache (or fetched if `download`)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not a checkpoint directory (no config.json)")
        return path
    if not looks_like_repo_id(spec):
        from flashlive.model.config import PRESETS

        raise CheckpointError(
            f"unknown model {spec!r}: not a preset ({', '.join(PRESETS)}), checkpoint directory or repo id"
        )
    return _from_hub(spec, download=download)


def _from_hub(repo_id: str, *, download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        if not download:
            raise CheckpointError(
                f"{repo_id} is not in the local Hugging Face cache; pass --download to fetch it"
            ) from None
    if os.environ.get("HF_HUB_OFFLINE"):
        raise CheckpointError(f"{repo_id}: HF_HUB_OFFLINE is set, cannot download")
    log.info("downloading %s", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))  # shows tqdm progress bars
    except Exception as exc:  # network errors come in many types; the message is what matters
        raise CheckpointError(f"{repo_id}: download failed: {exc}") from exc


# ---------------------------------------------------------------- config


def _as_int_list(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(v) for v in value.replace("[", "").replace("]", "").split(",") if v.strip())
    return tuple(int(v) for v in value)


def _as_float_list(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        return tuple(float(v) for v in value.replace("[", "").replace("]", "").split(",") if v.strip())
    return tuple(float(v) for v in value)


# What the release can run and we implement. Each entry: key -> (value when absent, accepted values).
# `llava_arch.py::prepare_inputs_labels_for_multimodal` (HF: modeling_videochat_flash.py) reads these;
# for a video, every accepted value gives the clips' tokens concatenated in order, with nothing added.
_ACCEPTED: dict[str, tuple[object, tuple[object, ...]]] = {
    "vision_encode_type": ("image", ("video_image",)),  # "image" raises NotImplementedError there
    "mm_patch_merge_type": ("flat", ("flat", "spatial", "spatial_nopad")),  # "unpad" adds a newline weight
    "mm_newline_position": ("nothing", ("nothing",)),  # "one_token" appends a learned newline token
    "frame_aspect_ratio": ("square", ("square",)),  # "anyres" raises NotImplementedError there
    "rope_scaling": (None, (None,)),  # no scaled rotary embedding is implemented here
}
# Towers the release's `multimodal_encoder/builder.py::build_vision_tower` matches before UMT.
_OTHER_TOWERS_IN = ("clip-vit", "ShareGPT4V", "siglip", "internvideo2")
_OTHER_TOWERS_START = ("openai", "laion")
UMT_DEPTH = 24  # UMT-L has 24 blocks; the release builds depth + mm_vision_select_layer + 1 of them


def tower_image_size(name: str) -> int:
    """The release picks the tower by substring: "umt-hd" -> 448, else "umt" -> 224."""
    if any(other in name for other in _OTHER_TOWERS_IN) or name.startswith(_OTHER_TOWERS_START):
        raise CheckpointError(f"config.json: mm_vision_tower {name!r} is not supported (only UMT towers)")
    if "umt-hd" in name:
        return 448
    if "umt" in name:
        return 224
    raise CheckpointError(f"config.json: mm_vision_tower {name!r} is not supported (a name with 'umt')")


def tower_layers(raw: dict[str, Any]) -> int:
    """Blocks to build: depth + mm_vision_select_layer + 1 (umt/vit.py), 23 for the releases' -2."""
    depth = int(raw.get("flashlive_vision_depth", UMT_DEPTH))
    select = raw.get("mm_vision_select_layer", -2)
    if not isinstance(select, int) or isinstance(select, bool) or not -depth <= select <= -1:
        raise CheckpointError(
            f"config.json: mm_vision_select_layer {select!r} is not supported "
            f"(a layer from the end of the tower: -1 to -{depth})"
        )
    return depth + select + 1


def check_supported(raw: dict[str, Any]) -> None:
    """Refuse, naming the key, every setting this implementation would otherwise silently ignore."""
    for key, (absent, accepted) in _ACCEPTED.items():
        value = raw.get(key, absent)
        if value not in accepted:
            shown = ", ".join(repr(a) for a in accepted)
            raise CheckpointError(f"config.json: {key} {value!r} is not supported (supported: {shown})")
    projector = raw.get("mm_projector_type", SUPPORTED_PROJECTOR)
    if projector != SUPPORTED_PROJECTOR:
        raise CheckpointError(
            f"config.json: mm_projector_type {projector!r} is not supported ({SUPPORTED_PROJECTOR})"
        )


def _vocab_ids(raw: dict[str, Any]) -> tuple[int, ...] | None:
    """A restricted vocabulary's kept ids (model/vocab_rows.py); absent in released checkpoints."""
    ids = raw.get(VOCAB_IDS_KEY)
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise CheckpointError(f"config.json: {VOCAB_IDS_KEY} must be a list of token ids")
    return tuple(ids)


def config_from_released(raw: dict[str, Any], name: str) -> FlashConfig:
    """Map a released config.json onto FlashConfig, refusing what this implementation cannot run."""
    check_supported(raw)
    clip_frames = raw.get("mm_local_num_frames", 4)
    if not isinstance(clip_frames, int) or clip_frames < 1:
        raise CheckpointError(f"config.json: mm_local_num_frames {clip_frames!r} is not a positive integer")
    vision = VisionConfig(
        image_size=tower_image_size(str(raw.get("mm_vision_tower", "umt-large"))),
        clip_frames=clip_frames,
        width=int(raw.get("mm_hidden_size", 1024)),
        layers=tower_layers(raw),
        **{k: raw[f"flashlive_vision_{k}"] for k in ("heads", "mlp_dim") if f"flashlive_vision_{k}" in raw},
    )
    try:
        llm = LLMConfig(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            num_key_value_heads=int(raw.get("num_key_value_heads", raw["num_attention_heads"])),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            vocab_ids=_vocab_ids(raw),
        )
    except KeyError as exc:
        raise CheckpointError(f"config.json: missing key {exc.args[0]!r}") from None
    except ValueError as exc:  # LLMConfig's own checks (vocab_ids)
        raise CheckpointError(f"config.json: {VOCAB_IDS_KEY}: {exc}") from None
    dropout = None
    if raw.get("mm_llm_compress"):
        mode = raw.get("llm_compress_type", "attention")
        if mode not in DROPOUT_MODES:
            raise CheckpointError(f"config.json: llm_compress_type {mode!r} is not supported")
        try:
            dropout = DropoutConfig(
                mode,
                _as_int_list(raw.get("llm_compress_layer_list", ())),
                _as_float_list(raw.get("llm_image_token_ratio_list", ())),
            )
        except ValueError as exc:
            raise CheckpointError(f"config.json: bad dropout settings: {exc}") from None
    return FlashConfig(
        name=name,
        vision=vision,
        merge=MergeConfig(tokens_per_clip=16 * vision.clip_frames, metric_chunks=vision.heads),
        llm=llm,
        dropout=dropout,
        max_frames=int(raw.get("flashlive_max_frames", DEFAULT_MAX_FRAMES)),
    )


def released_config_dict(cfg: FlashConfig) -> dict[str, Any]:
    """The config.json a released checkpoint of this shape carries (used to write tiny checkpoints)."""
    v, m = cfg.vision, cfg.llm
    tower = RELEASED_TOWERS.get(v.image_size)
    if tower is None:
        raise CheckpointError(f"image size {v.image_size} has no released tower name")
    raw: dict[str, Any] = {
        "architectures": ["VideoChatFlashQwenForCausalLM"],
        "model_type": "videochat_flash_qwen",
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size,
        "num_hidden_layers": m.num_hidden_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_key_value_heads,
        "rope_theta": m.rope_theta,
        "rms_norm_eps": m.rms_norm_eps,
        "max_position_embeddings": m.max_position_embeddings,
        "tie_word_embeddings": m.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "mm_vision_tower": tower,
        "mm_vision_select_layer": -2,
        "mm_projector_type": SUPPORTED_PROJECTOR,
        "mm_hidden_size": v.width,
        "mm_local_num_frames": v.clip_frames,
        "vision_encode_type": "video_image",
        "mm_patch_merge_type": "spatial_nopad",
        "mm_newline_position": "nothing",
        "mm_llm_compress": cfg.dropout is not None,
        "llm_compress_type": cfg.dropout.mode if cfg.dropout else "attention",
        "llm_compress_layer_list": list(cfg.dropout.layers) if cfg.dropout else [],
        "llm_image_token_ratio_list": list(cfg.dropout.ratios) if cfg.dropout else [],
    }
    if (v.layers, v.heads, v.mlp_dim) != (
        VisionConfig().layers,
        VisionConfig().heads,
        VisionConfig().mlp_dim,
    ):
        # The release hard-codes UMT-L; tiny towers record their shape in extra keys (depth as the
        # release counts it: the blocks built for mm_vision_select_layer -2, plus the one not run).
        raw.update(
            flashlive_vision_depth=v.layers + 1,
            flashlive_vision_heads=v.heads,
            flashlive_vision_mlp_dim=v.mlp_dim,
        )
    ids = kept_ids(m)
    if ids is not None:
        raw[VOCAB_IDS_KEY] = list(ids)
    if cfg.max_frames != DEFAULT_MAX_FRAMES:
        raw["flashlive_max_frames"] = cfg.max_frames
    return raw


def load_config(ckpt_dir: Path, name: str | None = None) -> FlashConfig:
    try:
        raw = json.loads((ckpt_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{ckpt_dir / 'config.json'}: unreadable ({exc})") from None
    return config_from_released(raw, name or ckpt_dir.name)


# ---------------------------------------------------------------- tensors


def _weight_files(ckpt_dir: Path) -> dict[str, Path]:
    """key -> the safetensors file holding it."""
    index = ckpt_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: unreadable index ({exc})") from None
        return {key: ckpt_dir / fname for key, fname in weight_map.items()}
    single = ckpt_dir / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {SINGLE_FILE} or {INDEX_FILE}")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return {key: single for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


def read_tensors(
    ckpt_dir: Path, select: Callable[[str], str | None], *, dtype: torch.dtype, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Read the tensors whose key `select` maps to a new name (None skips the key)."""
    from safetensors import safe_open
    from tqdm import tqdm

    by_file: dict[Path, list[tuple[str, str]]] = {}
    for key, fname in _weight_files(ckpt_dir).items():
        new = select(key)
        if new is not None:
            by_file.setdefault(fname, []).append((key, new))
    out: dict[str, torch.Tensor] = {}
    total = sum(len(v) for v in by_file.values())
    with tqdm(total=total, desc="loading weights", unit="tensor", disable=not progress) as bar:
        for fname, keys in by_file.items():
            if not fname.is_file():
                raise CheckpointError(f"{fname}: shard named in the index is missing")
            with safe_open(str(fname), framework="pt") as f:
                for key, new in keys:
                    out[new] = f.get_tensor(key).to(dtype)
                    bar.update(1)
    return out


def tower_key(key: str) -> str | None:
    return key[len(TOWER_PREFIX) :] if key.startswith(TOWER_PREFIX) else None


def projector_key(key: str) -> str | None:
    return key[len(PROJECTOR_PREFIX) :] if key.startswith(PROJECTOR_PREFIX) else None


def llm_key(key: str) -> str | None:
    return None if key.startswith(("model.vision_tower.", PROJECTOR_PREFIX)) else key


def load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], part: str, prefix: str = "") -> None:
    """load_state_dict(strict=True), with errors that name the released key."""
    expected = module.state_dict()
    tied = tied_keys(module)
    tensors = drop_tied_copies(tensors, tied, prefix)
    missing = sorted(set(expected) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{part}: missing tensor {prefix}{missing[0]}" + _more(missing))
    if unexpected:
        raise CheckpointError(f"{part}: unexpected tensor {prefix}{unexpected[0]}" + _more(unexpected))
    for key, want in expected.items():
        if key in tensors and tensors[key].shape != want.shape:
            got = tuple(tensors[key].shape)
            raise CheckpointError(
                f"{part}: tensor {prefix}{key} has shape {got}, expected {tuple(want.shape)}"
            )
    module.load_state_dict(tensors, strict=True)  # a tied module's pre-hook fills lm_head.weight


# A tied key -> the key whose tensor it shares.
TIED_SOURCES = {"lm_head.weight": "model.embed_tokens.weight"}


def tied_keys(module: nn.Module) -> set[str]:
    """Keys a checkpoint may leave out because they share storage with another (a tied LM head)."""
    cfg = getattr(module, "config", None)
    return {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()


def drop_tied_copies(
    tensors: dict[str, torch.Tensor], tied: set[str], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """With `tie_word_embeddings` the head *is* the embedding; a stored copy of it is not loaded.

    The 2B release stores `lm_head.weight` beside `tie_word_embeddings: true`. transformers ties the
    head to the input embedding after loading (`PreTrainedModel.tie_weights`), so the embedding is
    what the release computes with; a stored head that differs from it is reported, not used.
    """
    out = dict(tensors)
    for key in tied & set(out):
        stored = out.pop(key)
        source = out.get(TIED_SOURCES[key])
        if source is not None and not torch.equal(stored, source):
            diff = (
                float((stored.float() - source.float()).abs().max()) if stored.shape == source.shape else None
            )
            log.warning(
                "%s%s is stored but tie_word_embeddings is true: using %s%s instead (max difference %s)",
                prefix,
                key,
                prefix,
                TIED_SOURCES[key],
                "n/a (shapes differ)" if diff is None else f"{diff:.3g}",
            )
    return out


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


# ---------------------------------------------------------------- writing


def save_released_layout(
    ckpt_dir: Path,
    cfg: FlashConfig,
    parts: Iterable[tuple[str, nn.Module]],
    *,
    shard_bytes: int = 2 << 20,
    single_file: bool = False,
    store_tied: bool = False,
    dtype: torch.dtype | None = None,
) -> None:
    """Write config.json and the weights with the release's keys.

    Sharded safetensors + index (the 7B layout), or with `single_file` one `model.safetensors` and no
    index (the 2B layout). `store_tied` writes a tied head too, as the 2B release does. `dtype`: store
    floating-point tensors in it (None: as they are). Weight files already in `ckpt_dir` are removed
    first, so a stale index or shard can never shadow the new weights.
    """
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    for prefix, module in parts:
        for key, tensor in module.state_dict().items():
            if key in tied_keys(module) and not store_tied:
                continue
            t = tensor.detach()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            state[prefix + key] = t.to("cpu").contiguous().clone()
    for old in [*ckpt_dir.glob("*.safetensors"), ckpt_dir / INDEX_FILE]:
        old.unlink(missing_ok=True)
    (ckpt_dir / "config.json").write_text(json.dumps(released_config_dict(cfg), indent=2))
    if single_file:
        save_file(state, str(ckpt_dir / SINGLE_FILE), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(ckpt_dir / fname), metadata={"format": "pt"})
        weight_map.update({key: fname for key in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (ckpt_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))


def save_checkpoint(
    ckpt_dir: Path,
    cfg: FlashConfig,
    tower: nn.Module,
    projector: nn.Module,
    llm: nn.Module,
    *,
    provenance: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
    single_file: bool = True,
    shard_bytes: int = 2 << 20,
) -> None:
    """A whole model as a loadable checkpoint folder: what `flashlive train` ships (model/weights/mini).

    The release's keys and config.json (restricted vocabulary and max_frames included), weights in
    `dtype` (fp16: the shipped file), generation_config.json, and `provenance` (commit, seed, recipe,
    accuracy: whatever the caller knows) as provenance.json.
    """
    from flashlive.model.generation_config import ENDOFTEXT_ID, GENERATION_FILE, PRESET_EOS_IDS

    parts = [(TOWER_PREFIX, tower), (PROJECTOR_PREFIX, projector), ("", llm)]
    save_released_layout(ckpt_dir, cfg, parts, single_file=single_file, shard_bytes=shard_bytes, dtype=dtype)
    # Qwen2's stop ids and no repetition penalty; chat() decodes greedily, the file decides the rest.
    generation = {
        "bos_token_id": ENDOFTEXT_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "eos_token_id": list(PRESET_EOS_IDS),
        "repetition_penalty": 1.0,
    }
    (ckpt_dir / GENERATION_FILE).write_text(json.dumps(generation, indent=2))
    if provenance is not None:
        (ckpt_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True))


# ---------------------------------------------------------------- dtype / device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' is fp32 on CPU (bf16 matmuls are ~5x slower there) and bf16 on CUDA."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose auto, fp32, bf16 or fp16")
    if device == "cpu" and dtype != "fp32":
        log.warning("computing in %s on the CPU is several times slower than fp32", dtype)
    return DTYPES[dtype]


def preset_or_dir(spec: str, *, download: bool = False) -> tuple[FlashConfig, Path | None]:
    """A preset name gives (config, None); anything else is a checkpoint directory or repo id."""
    try:
        cfg = get_preset(spec)
    except ValueError:
        ckpt = resolve_checkpoint_dir(spec, download=download)
        return load_config(ckpt, name=spec), ckpt
    if cfg.seed is not None:
        return cfg, None
    if cfg.shipped is not None:
        # Weights inside the package; the preset picks the resolution the tower runs at.
        ckpt = require_shipped(spec, cfg.shipped)
        loaded = load_config(ckpt, name=cfg.name)
        vision = replace(loaded.vision, image_size=cfg.vision.image_size)
        return replace(loaded, vision=vision, max_frames=cfg.max_frames), ckpt
    # A released preset names a repo id: its weights must come from the cache or a download.
    ckpt = resolve_checkpoint_dir(cfg.name, download=download)
    return replace(load_config(ckpt, name=cfg.name), max_frames=cfg.max_frames), ckpt
