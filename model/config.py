"""Model configuration: dataclasses and named presets.

The numbers for the released presets are the ones the public VideoChat-Flash checkpoints were trained
with (see docs/model.md and ../shared/DESIGN.md §2); they must not drift, or the checkpoints stop
loading or stop behaving as published.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from flashlive.model.errors import UnknownPresetError

DROPOUT_MODES = ("uniform", "attention", "uniform0_attention", "uniform1_attention")
# LLMConfig.vocab_ids: keep the ids of the generated world's language (model/world/vocab.py), computed
# when a model is built; a checkpoint stores the list itself.
WORLD_VOCAB: Literal["world"] = "world"


@dataclass(frozen=True)
class VisionConfig:
    """UMT-L style video ViT. Only `layers` blocks are built: the release reads layer -2 of 24."""

    image_size: int = 224
    patch_size: int = 16
    clip_frames: int = 4  # frames per clip (the release's mm_local_num_frames)
    # The sinusoid table is defined for 4 frames whatever the clip length (the release's
    # ckpt_num_frame=4 in umt/vit.py) and resized over time to clip_frames.
    base_frames: int = 4
    width: int = 1024
    layers: int = 23
    heads: int = 16
    mlp_dim: int = 4096
    norm_eps: float = 1e-6
    final_norm_eps: float = 1e-12
    base_grid: int = 14  # the sinusoid table is defined on a 14x14 grid and interpolated to others

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches_per_clip(self) -> int:
        return self.clip_frames * self.grid * self.grid


@dataclass(frozen=True)
class MergeConfig:
    """HiCo clip-level token merging ("tome16_mlp_hd64")."""

    tokens_per_clip: int = 64
    metric_chunks: int = 16  # the merge metric averages the features over this many equal chunks


@dataclass(frozen=True)
class LLMConfig:
    """Qwen2 decoder. Field names follow the released config.json where one exists."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    # Restricted vocabulary (model/vocab_rows.py): the ids that get embedding and output rows, sorted;
    # every other id shares one reserved row and is never produced. None: one row per id. WORLD_VOCAB:
    # the generated world's ids. vocab_size stays the size of the id space (the logits' width).
    vocab_ids: tuple[int, ...] | Literal["world"] | None = None

    def __post_init__(self) -> None:
        ids = self.vocab_ids
        if ids is None or ids == WORLD_VOCAB:
            return
        if isinstance(ids, str):
            raise ValueError(f"vocab_ids must be a list of token ids or {WORLD_VOCAB!r}, got {ids!r}")
        if not ids or list(ids) != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= self.vocab_size:
            raise ValueError(f"vocab_ids must be distinct increasing token ids in 0..{self.vocab_size - 1}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class DropoutConfig:
    """Progressive visual-token dropout inside the LLM (prefill only). Chosen per request.

    At layer `layers[s]` stage s keeps int(N * ratios[s + 1]) of the current visual tokens; ratios[0]
    is the share the first layer sees (1 in every released recipe).
    """

    mode: str = "uniform0_attention"
    layers: tuple[int, ...] = (4, 18)
    ratios: tuple[float, ...] = (1.0, 0.75, 0.25)

    def __post_init__(self) -> None:
        if self.mode not in DROPOUT_MODES:
            raise ValueError(f"unknown dropout mode {self.mode!r}; choose one of {', '.join(DROPOUT_MODES)}")
        if len(self.ratios) != len(self.layers) + 1:
            raise ValueError(
                "dropout needs one ratio more than layers: "
                f"{len(self.layers)} layers, {len(self.ratios)} ratios"
            )
        if list(self.layers) != sorted(set(self.layers)) or any(k < 1 for k in self.layers):
            raise ValueError(f"dropout layers must be increasing and >= 1, got {list(self.layers)}")
        if any(not 0.0 < r <= 1.0 for r in self.ratios):
            raise ValueError(f"dropout ratios must lie in (0, 1], got {list(self.ratios)}")


@dataclass(frozen=True)
class FlashConfig:
    """A whole VideoChat-Flash model: tower, merge, projector, LLM."""

    name: str
    vision: VisionConfig = field(default_factory=VisionConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    # The model-card recipe; None means the checkpoint's config turns dropout off by default.
    dropout: DropoutConfig | None = None
    max_frames: int = 512
    seed: int | None = None  # set for presets whose weights are generated, so the encoder id is stable
    # Presets whose weights ship with the package: the folder under model/weights/ (model/shipped.py).
    shipped: str | None = None

    @property
    def encoder_id(self) -> str:
        """Identifies the token space: tokens of one encoder must never be read by another."""
        v, m = self.vision, self.merge
        weights = self.name if self.seed is None else f"{self.name}-seed{self.seed}"
        return f"{weights}/umt{v.width}x{v.layers}@{v.image_size}/hico{m.tokens_per_clip}-hd{m.metric_chunks}"


MODEL_CARD_DROPOUT = DropoutConfig("uniform0_attention", (4, 18), (1.0, 0.75, 0.25))
MODEL_CARD_LAYERS = 28  # the recipe's layers are those of the 28-layer Qwen2 / Qwen2.5 LLMs


def scale_dropout(
    dropout: DropoutConfig, num_layers: int, reference: int = MODEL_CARD_LAYERS
) -> DropoutConfig:
    """The same recipe at the same relative depths in an LLM of `num_layers` layers.

    A stage before layer k of `reference` runs before layer round(k * num_layers / reference), and
    never before layer 1 (the first layer always sees every token). [4, 18] of 28 -> [1, 4] of 6.
    """
    layers = tuple(max(1, round(k * num_layers / reference)) for k in dropout.layers)
    if len(set(layers)) != len(layers) or layers[-1] >= num_layers:
        raise ValueError(f"{num_layers} layers are too few to place dropout stages at {list(dropout.layers)}")
    return replace(dropout, layers=layers)


_QWEN25_1P5B = LLMConfig(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
_QWEN2_7B = LLMConfig()
_QWEN25_7B_1M = replace(_QWEN2_7B, rope_theta=10_000_000.0, max_position_embeddings=1_010_000)

# The small model trained here on the generated world (issue 11; docs/model.md, "The mini preset"): the
# same code as the released models, narrow. Its weights ship in model/weights/mini, made by
# `flashlive train`; the final model is the 448 one (stage 4 fine-tunes the tower at 448).
_MINI_VISION = VisionConfig(image_size=448, width=192, layers=4, heads=4, mlp_dim=768)
_MINI_LLM = LLMConfig(
    vocab_size=151936,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=1_000_000.0,
    # 3,200 frames are 51,200 visual tokens before dropout: the needle tests reach 3,000 frames
    max_position_embeddings=65_536,
    tie_word_embeddings=True,
    vocab_ids=WORLD_VOCAB,
)
_MINI = FlashConfig(
    name="mini",
    vision=_MINI_VISION,
    merge=MergeConfig(metric_chunks=_MINI_VISION.heads),  # the metric averages over the tower's heads
    llm=_MINI_LLM,
    dropout=scale_dropout(MODEL_CARD_DROPOUT, _MINI_LLM.num_hidden_layers),
    max_frames=3_200,
    shipped="mini",
)

PRESETS: dict[str, FlashConfig] = {
    # Real architecture at toy scale: every code path of the big models, in seconds on a CPU.
    "tiny": FlashConfig(
        name="tiny",
        vision=VisionConfig(image_size=224, width=64, layers=2, heads=4, mlp_dim=256),
        merge=MergeConfig(metric_chunks=4),  # the release averages the metric over the tower's heads
        llm=LLMConfig(
            vocab_size=151936,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,  # a toy context, so "question too long" is cheap to reach
            tie_word_embeddings=True,
        ),
        dropout=None,
        max_frames=64,
        seed=0,
    ),
    # The shipped weights (448 tower).
    "mini": _MINI,
    # The same weights run at 224 (a quarter of the patches per frame: cheaper ingest, small objects
    # harder to see); the shape `flashlive train` uses before its high-resolution stage.
    "mini-224": replace(_MINI, name="mini-224", vision=replace(_MINI_VISION, image_size=224)),
    # The mini shape with random weights from a seed, like tiny: asked for by name, never a fallback.
    "mini-random": replace(_MINI, name="mini-random", seed=0, shipped=None),
    "VideoChat-Flash-Qwen2_5-2B_res448": FlashConfig(
        name="OpenGVLab/VideoChat-Flash-Qwen2_5-2B_res448",
        vision=VisionConfig(image_size=448),
        llm=_QWEN25_1P5B,
    ),
    "VideoChat-Flash-Qwen2-7B_res224": FlashConfig(
        name="OpenGVLab/VideoChat-Flash-Qwen2-7B_res224",
        vision=VisionConfig(image_size=224),
        llm=_QWEN2_7B,
    ),
    "VideoChat-Flash-Qwen2-7B_res448": FlashConfig(
        name="OpenGVLab/VideoChat-Flash-Qwen2-7B_res448",
        vision=VisionConfig(image_size=448),
        llm=_QWEN2_7B,
    ),
    "VideoChat-Flash-Qwen2_5-7B-1M_res224": FlashConfig(
        name="OpenGVLab/VideoChat-Flash-Qwen2_5-7B-1M_res224",
        vision=VisionConfig(image_size=224),
        llm=_QWEN25_7B_1M,
        max_frames=10_000,
    ),
}


def get_preset(name: str) -> FlashConfig:
    """Look a preset up by its short name or by the Hugging Face repo id it stands for."""
    if name in PRESETS:
        return PRESETS[name]
    for cfg in PRESETS.values():
        if cfg.name == name:
            return cfg
    raise UnknownPresetError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
