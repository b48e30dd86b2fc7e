"""Device placement and process rank.

`resolve_device` picks the CPU or CUDA (`cuda:LOCAL_RANK` under torchrun, one GPU per
rank); `is_main_process` reads RANK: everything that writes files or logs asks it (through
RunRecorder), so the loop reads the same with 1 or 8 ranks. The process group itself is
distributed.py's.
"""

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


# Below this many parameters a CPU step is a chain of small ops, and a second intra-op thread
# costs more in hand-offs than it computes (measured: 2 threads made the 2-D default run 3-4x
# slower on 2 cores; the 1024-D width-1024 model gained 1.5x from 2 threads).
SMALL_MODEL_PARAMETERS = 1_000_000


def set_cpu_threads(device: torch.device, parameters: int, asked: int | None) -> int:
    """Intra-op threads for a CPU run: `asked` (--threads), else $OMP_NUM_THREADS if set,
    else 1 for a small model and torch's default for a large one. Returns the number."""
    if device.type != "cpu":
        return torch.get_num_threads()
    if asked is not None:
        if asked < 1:
            raise UsageError(f"--threads must be >= 1, got {asked}")
        torch.set_num_threads(asked)
    elif not os.environ.get("OMP_NUM_THREADS") and parameters < SMALL_MODEL_PARAMETERS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def is_main_process() -> bool:
    """True on the process that owns checkpoints, run.json, metrics.csv and wandb."""
    return int(os.environ.get("RANK", "0")) == 0
