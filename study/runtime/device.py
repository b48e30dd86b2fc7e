"""Device placement: `resolve_device` picks the CPU or CUDA (`cuda:LOCAL_RANK` under
torchrun, one GPU per rank)."""

from __future__ import annotations

import os

import torch

from study.errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU. `cuda` without a GPU is a UsageError."""
    if choice not in DEVICE_CHOICES and not choice.startswith("cuda:"):
        raise UsageError(f"unknown device {choice!r}; choose one of: {', '.join(DEVICE_CHOICES)}")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if choice == "cuda":
        choice = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(choice)
