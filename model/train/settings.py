"""Settings of `flashlive train`: the config file's `train` section, one sub-section per stage.

The defaults are the CPU recipe (the whole of it in under three hours on two cores); a GPU run reads
bigger numbers from a file (scripts/train-gpu.yaml). Torch-free, so validating a config file does not
load torch.

    train:
      seed: 0
      model: mini
      device: cpu
      short: {steps: 800, lr: 5.0e-4, clips: [1, 4]}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flashlive.model.device import DEVICE_RULE, Device

Part = Literal["tower", "projector", "llm"]
# The stages in order: (number, name). Stage 0 has two parts, trained apart: the tower on attributes
# and the LLM on text.
STAGES: tuple[tuple[str, str], ...] = (
    ("0", "tower"),
    ("0", "text"),
    ("1", "align"),
    ("2", "short"),
    ("3", "long"),
    ("4", "hires"),
)
STAGE_NAMES: tuple[str, ...] = tuple(name for _, name in STAGES)
# Training draws its worlds below this seed; every seed from it on is held out for evaluation (the
# shipped-weights test and `flashlive eval` ask about worlds from 1,000,000,000 on).
HELD_OUT_SEEDS = 1_000_000_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class StageSettings(_Section):
    """What every stage has: its length, batch, optimiser and bookkeeping."""

    steps: int = Field(default=400, ge=0, le=10_000_000, title="Optimiser steps")
    batch: int = Field(default=8, ge=1, le=4096, title="Items per step")
    lr: float = Field(default=5e-4, gt=0, le=1, allow_inf_nan=False, title="Peak learning rate (AdamW)")
    warmup: int = Field(default=40, ge=0, le=1_000_000, title="Linear warm-up steps")
    min_lr: float = Field(
        default=0.1, ge=0, le=1, allow_inf_nan=False, title="Cosine floor, as a share of the peak"
    )
    weight_decay: float = Field(default=0.05, ge=0, le=1, allow_inf_nan=False)
    clip_grad: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False, title="Gradient norm clip")
    save_every: int = Field(default=50, ge=1, le=1_000_000, title="Checkpoint every N steps")
    eval_every: int = Field(default=100, ge=0, le=1_000_000, title="Held-out check every N steps (0: end)")
    eval_items: int = Field(default=32, ge=0, le=4096, title="Held-out items per check")
    log_every: int = Field(default=10, ge=1, le=1_000_000, title="Log a loss line every N steps")
    repeat: int = Field(
        default=1,
        ge=1,
        le=64,
        title="Steps each rendered batch is trained on",
        description="rendering is the bound on a GPU and a third of the work on a CPU: a batch kept "
        "in memory and trained on again, `spacing` x repeat steps later, costs no rendering",
    )
    spacing: int = Field(
        default=64, ge=1, le=100_000, title="Rendered batches between two uses of one (with repeat > 1)"
    )


class TowerStage(StageSettings):
    """Stage 0, tower: per-object and per-frame attributes from pooled patch tokens (heads discarded)."""

    steps: int = Field(default=500, ge=0, le=10_000_000)
    batch: int = Field(default=4, ge=1, le=4096, title="Clips per step")
    lr: float = Field(default=1.5e-3, gt=0, le=1, allow_inf_nan=False)
    eval_items: int = Field(default=48, ge=0, le=4096, title="Held-out clips per check")
    needle_share: float = Field(default=0.35, ge=0, le=1, allow_inf_nan=False, title="Clips with a needle")
    plain_share: float = Field(
        default=0.3, ge=0, le=1, allow_inf_nan=False, title="Clips drawn plainly (no texture, noise, codec)"
    )
    mix_share: float = Field(
        default=0.5, ge=0, le=1, allow_inf_nan=False, title="Clips made of four frames of four worlds"
    )
    objects: tuple[int, int] = Field(default=(3, 7), title="Objects per scene (min, max)")

    @field_validator("objects")
    @classmethod
    def _objects(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] <= v[1] <= 7:
            raise ValueError(f"objects must be [min, max] with 0 <= min <= max <= 7, got {list(v)}")
        return v


class TextStage(StageSettings):
    """Stage 0, text: the LLM learns the world's language (captions, questions, answers)."""

    batch: int = Field(default=12, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0, le=1, allow_inf_nan=False)


class VideoStage(StageSettings):
    """Stages with video: clips per video and questions per video."""

    clips: tuple[int, int] = Field(default=(1, 4), title="Clips per short video (min, max)")
    questions: int = Field(default=2, ge=1, le=16, title="Questions asked per video")
    needle_share: float = Field(default=0.25, ge=0, le=1, allow_inf_nan=False, title="Videos with needles")
    train: tuple[Part, ...] = Field(default=("tower", "projector", "llm"), title="Parts trained")

    @field_validator("clips")
    @classmethod
    def _clip_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 64:
            raise ValueError(f"clips must be [min, max] with 1 <= min <= max <= 64, got {list(v)}")
        return v

    @field_validator("train")
    @classmethod
    def _parts(cls, v: tuple[Part, ...]) -> tuple[Part, ...]:
        if not v:
            raise ValueError("a stage must train at least one part (tower, projector, llm)")
        if len(set(v)) != len(v):
            raise ValueError(f"a part is named twice: {list(v)}")
        return v


class AlignStage(VideoStage):
    """Stage 1: the projector learns to speak to the frozen LLM, on clip captions."""

    steps: int = Field(default=250, ge=0, le=10_000_000)
    batch: int = Field(default=4, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0, le=1, allow_inf_nan=False)
    eval_items: int = Field(default=16, ge=0, le=4096)
    clips: tuple[int, int] = (1, 2)
    questions: int = Field(default=1, ge=1, le=16)
    needle_share: float = Field(default=0.15, ge=0, le=1, allow_inf_nan=False)
    train: tuple[Part, ...] = ("projector",)

    @field_validator("train")
    @classmethod
    def _projector_only(cls, v: tuple[Part, ...]) -> tuple[Part, ...]:
        if tuple(v) != ("projector",):
            raise ValueError("alignment trains the projector only")
        return v


class ShortStage(VideoStage):
    """Stage 2: every question kind on short videos of 1 to 4 clips."""

    steps: int = Field(default=500, ge=0, le=10_000_000)
    batch: int = Field(default=4, ge=1, le=4096)
    lr: float = Field(default=5e-4, gt=0, le=1, allow_inf_nan=False)
    # the tower learnt its attributes in stage 0; tuning it here too is the GPU recipe's (4x the cost)
    train: tuple[Part, ...] = ("projector", "llm")


class LongStage(VideoStage):
    """Stage 3: short videos mixed with long streams holding needles and temporal questions.

    The tower is frozen here: a long stream's clips are encoded once (a pool of worlds whose tokens
    are cached per clip) and needle clips are encoded on their own and spliced in.
    """

    steps: int = Field(default=400, ge=0, le=10_000_000)
    batch: int = Field(default=4, ge=1, le=4096, title="Short videos per short step")
    eval_items: int = Field(default=16, ge=0, le=4096)
    lr: float = Field(default=3e-4, gt=0, le=1, allow_inf_nan=False)
    train: tuple[Part, ...] = ("projector", "llm")
    long_share: float = Field(default=0.5, ge=0, le=1, allow_inf_nan=False, title="Steps on a long stream")
    long_batch: int = Field(default=1, ge=1, le=256, title="Long streams per long step")
    long_clips: tuple[int, ...] = Field(default=(16, 32, 64), title="Long stream lengths in clips")
    worlds: int = Field(default=16, ge=1, le=100_000, title="Worlds in the long-stream pool")
    multihop_share: float = Field(default=0.3, ge=0, le=1, allow_inf_nan=False)
    temporal_share: float = Field(
        default=0.25, ge=0, le=1, allow_inf_nan=False, title="Long streams asked about events, not needles"
    )
    needle_share: float = Field(default=0.35, ge=0, le=1, allow_inf_nan=False)

    @field_validator("train")
    @classmethod
    def _no_tower(cls, v: tuple[Part, ...]) -> tuple[Part, ...]:
        if "tower" in v:
            raise ValueError("the long stage keeps the tower frozen (its long-stream tokens are cached)")
        return v

    @field_validator("long_clips")
    @classmethod
    def _lengths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(not 2 <= n <= 4096 for n in v):
            raise ValueError(f"long_clips must be lengths between 2 and 4096 clips, got {list(v)}")
        return tuple(sorted(set(v)))


class HiresStage(VideoStage):
    """Stage 4: the tower at high resolution, on scenes rich in small objects."""

    steps: int = Field(default=150, ge=0, le=10_000_000)
    batch: int = Field(default=2, ge=1, le=4096)
    lr: float = Field(default=2e-4, gt=0, le=1, allow_inf_nan=False)
    eval_every: int = Field(default=50, ge=0, le=1_000_000)
    eval_items: int = Field(default=16, ge=0, le=4096)
    clips: tuple[int, int] = (1, 1)
    train: tuple[Part, ...] = ("tower",)
    image_size: int = Field(default=448, title="Frame size the tower is tuned to (224 or 448)")
    small_rate: float = Field(default=0.6, ge=0, le=1, allow_inf_nan=False, title="Objects drawn small")
    hires_share: float = Field(
        default=0.6, ge=0, le=1, allow_inf_nan=False, title="Questions about small objects, when any"
    )
    needle_share: float = Field(default=0.1, ge=0, le=1, allow_inf_nan=False)

    @field_validator("image_size")
    @classmethod
    def _released(cls, v: int) -> int:
        if v not in (224, 448):
            raise ValueError(f"image_size must be 224 or 448 (the tower sizes a checkpoint names), got {v}")
        return v


class TrainSettings(_Section):
    """The `train` section: the recipe's stages and what they share."""

    seed: int = Field(default=0, ge=0, le=2**31 - 1, title="Seed of weights and data")
    model: str = Field(default="mini", title="Model preset to train (its shape)")
    device: Device = Field(default="cpu", title="Device", description=DEVICE_RULE)
    workers: int | None = Field(
        default=None, ge=0, le=64, title="Data worker processes", description="None: one per CPU core"
    )
    low_res: int = Field(default=224, ge=32, le=1024, title="Frame size of stages 0 to 3")
    h264: bool = Field(
        default=False,
        title="Draw H.264 artefacts",
        description="needs PyAV; off, styles that would use H.264 use JPEG instead",
    )
    tower: TowerStage = Field(default_factory=TowerStage)
    text: TextStage = Field(default_factory=TextStage)
    align: AlignStage = Field(default_factory=AlignStage)
    short: ShortStage = Field(default_factory=ShortStage)
    long: LongStage = Field(default_factory=LongStage)
    hires: HiresStage = Field(default_factory=HiresStage)

    @field_validator("model")
    @classmethod
    def _preset(cls, v: str) -> str:
        from flashlive.model.config import get_preset

        get_preset(v)  # UnknownPresetError (a ValueError) names the presets
        return v

    @model_validator(mode="after")
    def _sizes(self) -> TrainSettings:
        if self.low_res % 16:
            raise ValueError(f"low_res must be a multiple of the 16-pixel patch, got {self.low_res}")
        return self

    def stage(self, name: str) -> StageSettings:
        if name not in STAGE_NAMES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
        settings = getattr(self, name)
        assert isinstance(settings, StageSettings)
        return settings
