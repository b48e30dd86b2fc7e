"""The one command that trains a point, for every launcher, and the `print` launcher.

`flowctl train --config {run}/sweep.yaml --resume auto`: starts the point, or continues it
from last.pt, or says `already completed` (exit 0); a second live trainer of the same run
exits 2 on the run lock. So the command is safe to run twice, anywhere, in any order.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from study.runs.paths import run_dir
from study.sweep.grid import Point
from study.sweep.point_files import POINT_CONFIG


@dataclass
class TrainFlags:
    """How every point runs (not part of any config)."""

    ckpt_dir: str | None = None
    wandb_mode: str | None = None
    wandb_project: str | None = None
    device: str | None = None
    requeue_signal: str | None = None

    def args(self) -> list[str]:
        flags = []
        for flag, value in (("--ckpt-dir", self.ckpt_dir), ("--wandb-mode", self.wandb_mode),
                            ("--wandb-project", self.wandb_project), ("--device", self.device),
                            ("--requeue-signal", self.requeue_signal)):
            if value is not None:
                flags += [flag, str(value)]
        return flags


def point_config_path(point: Point, ckpt_dir: str | None) -> Path:
    return run_dir(point.name, ckpt_dir).absolute() / POINT_CONFIG


def train_args(config_path: Path, flags: TrainFlags) -> list[str]:
    """`train ...` arguments (after the program name) for one point."""
    return ["train", "--config", str(config_path), "--resume", "auto", "--plain", *flags.args()]


def child_argv(config_path: Path, flags: TrainFlags) -> list[str]:
    """The local launcher's child: this interpreter, so no PATH lookup can pick another."""
    return [sys.executable, "-m", "study.cli.app", *train_args(config_path, flags)]


def shell_command(config_path: Path, flags: TrainFlags) -> str:
    """One line for a shell or any scheduler."""
    return shlex.join(["flowctl", *train_args(config_path, flags)])
