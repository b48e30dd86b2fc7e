"""Mixed precision: the forward pass under `torch.autocast`, everything else in fp32.

fp32 changes nothing. bf16 (CPU and CUDA) runs the model's matmuls in bfloat16; its range
is fp32's, so no loss scaling is needed. fp16 (CUDA only) needs a GradScaler, whose state
goes into the checkpoint. The loss is computed from the fp32-cast output, and the weights,
gradients, optimizer state and EMA stay fp32 in every mode.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from study.errors import UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, device: torch.device) -> None:
    """UsageError for a precision the device cannot run."""
    if name == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device (it scales the loss with a "
                         "GradScaler); use --precision bf16 on the CPU")


class Precision:
    def __init__(self, name: str, device: torch.device):
        check_precision(name, device)
        self.name, self.device = name, device
        self.dtype = DTYPES.get(name)
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context for the forward pass (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def clip_and_step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                      max_norm: float) -> torch.Tensor:
        """Clip the gradients' global norm (0: no clipping), step; returns the norm.

        With a GradScaler, a step whose gradients overflowed is skipped by the scaler and
        reports a norm of 0 (a skipped step is not a diverging run).
        """
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf,
                                                   foreach=True)
        if self.scaler is None:
            optimizer.step()
            return grad_norm
        self.scaler.step(optimizer)
        self.scaler.update()
        return torch.nan_to_num(grad_norm, nan=0.0, posinf=0.0)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
