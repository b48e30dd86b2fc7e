"""Where runs live on disk. No torch import: the CLI's fast commands use this.

Layout: {checkpoint root}/{run_name}/ holds best.pt, last.pt, run.json, metrics.csv, wandb/.
The root is `--ckpt-dir`, else $FLOWCTL_CKPT_DIR, else `study/checkpoints` (relative to the
working directory, as in the original study).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CKPT_ROOT = Path("study/checkpoints")
CKPT_ENV = "FLOWCTL_CKPT_DIR"
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
RUN_JSON = "run.json"
METRICS_CSV = "metrics.csv"
LOCK_NAME = "run.lock"


def checkpoint_root(override: str | os.PathLike | None = None) -> Path:
    """The folder that holds one sub-folder per run."""
    if override:
        return Path(override)
    env = os.environ.get(CKPT_ENV)
    return Path(env) if env else DEFAULT_CKPT_ROOT


def run_dir(run_name: str, root: str | os.PathLike | None = None) -> Path:
    return checkpoint_root(root) / run_name
