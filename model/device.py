"""The one device rule: which device names are valid, and what `auto` means (cuda when there is one).

`check_device` is torch-free, so validating a config file does not load torch; `resolve_device`
turns a valid name into the device the model runs on.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from flashlive.model.errors import DeviceError

DEVICE_NAME = re.compile(r"^(cpu|auto|cuda(:\d{1,2})?)$")
DEVICE_RULE = "cpu, cuda, cuda:N or auto (cuda when there is one, else cpu)"


def check_device(device: str) -> str:
    """`device` when it is a device name (DeviceError, a ValueError, otherwise)."""
    if not isinstance(device, str) or not DEVICE_NAME.match(device):
        raise DeviceError(f"unknown device {device!r}; use {DEVICE_RULE}")
    return device


def resolve_device(device: str) -> str:
    """The device to run on: `auto` is cuda when torch sees a GPU, else cpu; cuda without one fails."""
    import torch

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but CUDA is not available")
    return device


# a config field holding a device name, checked with the same rule
Device = Annotated[str, AfterValidator(check_device)]
