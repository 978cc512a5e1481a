"""Numeric precision of training: fp32, or mixed precision with bf16 / fp16 autocast.

fp16 needs a gradient scaler (its range underflows small gradients); bf16 has fp32's range
and does not. Weights and optimizer state stay fp32 in every mode.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from dlpipe.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """How `fit` runs forward passes and scales losses for one precision setting."""

    name: str = "fp32"
    device_type: str = "cpu"
    scaler: Any = None
    """A `torch.amp.GradScaler` for fp16, else None."""

    def autocast(self) -> AbstractContextManager[Any]:
        if self.name == "fp32":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.name])


def precision_for(name: str, device: torch.device) -> Precision:
    """The `Precision` of `train.precision` on `device`.

    Raises:
        ConfigError: fp16 or bf16 where the device cannot run it.
    """
    if name == "fp32":
        return Precision()
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError([("train.precision", "this GPU has no bf16 support; use fp16 or fp32")])
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name, device.type, scaler)
