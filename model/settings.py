"""Settings of the model: the config file's `model` section (which model, on which device)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from flashlive.model.device import DEVICE_RULE, Device


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    name: str = Field(
        default="tiny", title="Model", description="Preset name, checkpoint directory or repo id"
    )
    device: Device = Field(default="cpu", title="Device", description=DEVICE_RULE)
