"""This process's place among torchrun's: read from the environment, no torch.

One process is rank 0 of a world of 1. Under torchrun RANK, WORLD_SIZE and LOCAL_RANK are
set; `is_main_process` is what everything that writes files or logs asks (through
RunRecorder), so the loop reads the same with 1 or 8 ranks. The process group itself is
distributed.py's.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    """True on the process that owns checkpoints, run.json, metrics.csv and wandb."""
    return rank() == 0


def restarted_by_torchrun() -> bool:
    """Whether torchrun restarted this worker group after a failure (--max-restarts)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
