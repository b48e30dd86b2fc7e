"""The one command that trains a point, for every launcher, and the `print` launcher.

`flowctl train --config {run}/sweep.yaml --resume auto` (local and Slurm launchers, which write
the point's config first) or `flowctl train --resume auto key=value...` (`print`, which writes
nothing): starts the point, or continues it from last.pt, or says `already completed` (exit 0);
a second live trainer of the same run exits 2 on the run lock. So the command is safe to run
twice, anywhere, in any order.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.flow_matching.config import TrainingConfig
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


def point_command(point: Point, flags: TrainFlags) -> str:
    """`flowctl train --resume auto --plain FLAGS key=value...`: the point's whole config on the
    line (the `print` launcher), so nothing needs writing first; training from it gives the
    point's config exactly (the same config hash, so `sweep status` knows the run)."""
    return shlex.join(["flowctl", "train", "--resume", "auto", "--plain", *flags.args(),
                       *assignment_words(point.config.to_dict())])


def assignment_words(config: dict[str, Any]) -> list[str]:
    """`key=value` for every key whose value differs from TrainingConfig's default, in the
    form config_load.assignments_to_overrides reads back."""
    defaults = TrainingConfig().to_dict()
    return [f"{key}={_word(value)}" for key, value in config.items() if value != defaults.get(key)]


def _word(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))  # JSON is YAML
    return str(value) if isinstance(value, str) else repr(value)
