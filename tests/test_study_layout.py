"""The original study's own verification commands, unchanged, from a folder laid out like
the study (`study/datasets/splits/1k/{train,val}.pt` next to `study/checkpoints/`).

Such a folder holds a `study/` without `__init__.py`; Python would pick it up as a
namespace package and shadow flowctl's `study` unless the install puts a regular package on
sys.path (docs/installing.md; every install mode is tested in tests/test_install_modes.py).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from study.flow_matching.utils import cosine_warmup_factor
from tests.support.helpers import load, wandb_files

STUDY = ["--flow", "icfm", "--dataset", "1k", "--group", "test", "--batch-size", "64",
         "--lr", "1e-3", "--wandb-project", "flow-matching-study"]
STEPS_PER_EPOCH = 1000 // 64


@pytest.fixture
def study_folder(tmp_path: Path) -> Path:
    splits = tmp_path / "study" / "datasets" / "splits" / "1k"
    splits.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    torch.save(torch.randn(1000, 8, generator=generator), splits / "train.pt")
    torch.save(torch.randn(200, 8, generator=generator), splits / "val.pt")
    return tmp_path


def run_in(folder: Path, *args: str, wandb_mode: str = "offline") -> subprocess.CompletedProcess:
    """`python <args>` with `folder` as the working directory, as the study runs it (with
    WANDB_MODE=offline)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWCTL_CKPT_DIR", "WANDB_SERVICE")}
    env["WANDB_MODE"] = wandb_mode
    return subprocess.run([sys.executable, *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_the_studys_verification_commands_pass_unchanged(study_folder: Path):
    train = ["-m", "study.flow_matching.train"]
    # wandb is checked on the third command (and across a resume in test_registry.py): the
    # first two leave out its few seconds of start-up.
    first = run_in(study_folder, *train, "--arch", "resume-test", *STUDY, "--epochs", "2",
                   wandb_mode="disabled")
    assert first.returncode == 0, first.stderr
    notices = [line for line in first.stderr.splitlines() if "names no built-in network" in line]
    assert len(notices) == 1 and "--network mlp|resmlp" in notices[0], first.stderr
    run = study_folder / "study" / "checkpoints" / "resume-test-icfm-1k-none"
    assert load(run / "best.pt")["epoch"] == 1

    second = run_in(study_folder, *train, "--arch", "resume-test", *STUDY, "--epochs", "4",
                    "--resume", "study/checkpoints/resume-test-icfm-1k-none/best.pt",
                    wandb_mode="disabled")
    assert second.returncode == 0, second.stderr
    assert "at epoch 3 of 4" in second.stderr, second.stderr
    final = load(run / "last.pt")
    assert final["epoch"] == 3 and final["global_step"] == 4 * STEPS_PER_EPOCH
    with open(run / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["train/lr"]]
    # No warm-up restart: every logged LR is the 4-epoch schedule's, of the step just taken.
    for row in rows:
        expected = 1e-3 * cosine_warmup_factor(int(row["step"]) - 1, 100, 4 * STEPS_PER_EPOCH)
        assert float(row["train/lr"]) == pytest.approx(expected), row
    assert [int(r["epoch"]) for r in rows][-1] == 3

    verify = run_in(study_folder, *train, "--arch", "verify", *STUDY, "--epochs", "3")
    assert verify.returncode == 0, verify.stderr
    run = study_folder / "study/checkpoints/verify-icfm-1k-none"
    assert load(run / "best.pt")["config"]["group"] == "test"
    assert len(wandb_files(run)) == 1  # WANDB_MODE=offline, as the study ran it
    assert "best val loss" in verify.stdout


def test_the_package_imports_from_a_study_folder(study_folder: Path):
    code = ("import study; from study.flow_matching.trainer import FlowTrainer; "
            "from study.flow_matching.utils import get_checkpoint_path; "
            "assert get_checkpoint_path('mlp-icfm-5k-none') == "
            "'study/checkpoints/mlp-icfm-5k-none/best.pt'; print(study.__version__)")
    result = run_in(study_folder, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __import__("study").__version__
