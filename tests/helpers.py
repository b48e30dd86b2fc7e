"""Test helpers: tiny datasets, the CLI in-process and as a real subprocess, wandb records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from study.cli.app import app
from study.runs.wandb_records import history as wandb_history  # noqa: F401
from study.runs.wandb_records import read_records as wandb_records  # noqa: F401
from study.runs.wandb_records import run_files as wandb_files  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
# Small and fast: 640 rows at batch 64 -> 9 training steps per epoch after the val split.
TINY = ["--batch-size", "64", "--width", "16", "--depth", "2", "--warmup-steps", "5",
        "--wandb-mode", "disabled", "--plain"]


def run_flags(data, *extra: str, epochs: int = 30) -> list[str]:
    """`flowctl train` flags for a tiny run on `data` that never stops early."""
    return ["--dataset", str(data), "--epochs", str(epochs), "--patience", "0", *TINY, *extra]


def error_line(output, *fragments: str, exit_code: int | None = 2) -> str:
    """The one `error: ` line of a failed command, holding every fragment.

    `output`: a CliRunner result, a finished Popen's stderr text, or any string. Asserts no
    traceback, exactly one error line, and every other stderr line a flowctl note or
    warning; with a result, also its exit code (None: any).
    """
    stderr = output if isinstance(output, str) else output.stderr
    if exit_code is not None and not isinstance(output, str):
        assert output.exit_code == exit_code, output.stdout + output.stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    others = [line for line in stderr.splitlines() if line and not line.startswith("error: ")]
    assert all(line.startswith(("flowctl: ", "warning: ", "note: ")) for line in others), stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def vectors_file(folder: Path, rows: int = 640, dim: int = 2, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    path = folder / f"vectors-{rows}x{dim}.pt"
    torch.save(torch.randn(rows, dim, generator=generator) * 2 + 1, path)
    return path


def cli(*args: str):
    """Run flowctl in-process; returns the CliRunner result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start `flowctl ...` as a real child process (its own interpreter and signals)."""
    # A fresh process, as from a shell: not attached to this test worker's wandb service
    # (wandb shares its service with children through $WANDB_SERVICE).
    child_env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.Popen(
        [sys.executable, "-m", "study.cli.app", *map(str, args)], cwd=REPO_ROOT,
        env={**child_env, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def wait_for(condition, *, timeout: float = 60.0, process: subprocess.Popen | None = None,
             what: str = "condition") -> None:
    """Poll `condition()` until true; fail early if `process` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"process exited ({process.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    """Bitwise equality of model, EMA and optimizer state between two checkpoints."""
    assert a["global_step"] == b["global_step"], f"expected step {a['global_step']}, got {b['global_step']}"
    for key in ("model_state_dict", "ema_shadow"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}[{name}] differs"
    opt_a, opt_b = a["optimizer_state_dict"], b["optimizer_state_dict"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for index, state in opt_a["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, opt_b["state"][index][name]), f"optimizer state {index}.{name} differs"


def metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.csv rows without wall-clock columns."""
    import csv

    from study.runs.metrics_log import WALL_CLOCK_COLUMNS

    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK_COLUMNS}
                for row in csv.DictReader(handle)]


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


class LinearVelocity(nn.Module):
    """A study-style custom velocity network v(x, t) = W [x, t] + b for 2-D data.

    `fault(call, out)` runs on every training-mode forward (call counts from 1) and may
    return a replacement output or raise, to inject a failure at a known step.
    """

    def __init__(self, fault=None):
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.fault = fault
        self.calls = 0

    def forward(self, x, t):
        out = self.net(torch.cat([x, t[:, None]], dim=1))
        if self.training and self.fault is not None:
            self.calls += 1
            out = self.fault(self.calls, out)
        return out


class CreatesMarker:
    """Unpickling this runs open(marker, "w"): a stand-in for arbitrary code in a pickle.

    Tests save it (torch.save or pickle.dumps) and assert that no loader ever creates `marker`.
    """

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
