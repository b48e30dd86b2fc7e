"""The one finished run a test session trains once, shared by the tests that only read a run.

`trained_run` (a session fixture, loaded by tests/conftest.py as a plugin) is the folder of
a finished 2-D run: 640 vectors of mean 1 and std 2 (`vectors_file`), the TINY flags, 4
epochs (36 steps) at lr 1e-2 with EMA decay 0.9, so that the EMA weights have moved away
from the initial ones. It holds best.pt, last.pt, metrics.csv and run.json.

It is read-only: a test that writes into its run (`sample` without --out, `plot`) takes a
copy (`copy_run`), and a test that resumes, prunes or damages a run trains its own.

Under pytest-xdist the workers of one session share one build (tests/support/once.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.helpers import TINY, cli, vectors_file
from tests.support.once import built_once

RUN_NAME = "tiny"
TRAIN_FLAGS = ["--epochs", "4", "--lr", "1e-2", "--ema-decay", "0.9", *TINY]


def build(folder: Path) -> Path:
    """Train the shared run under `folder` (its own data file, checkpoint root and caches);
    returns the run folder."""
    root = folder / "checkpoints"
    with pytest.MonkeyPatch.context() as env:  # nothing from the test process's environment
        env.setenv("FLOWCTL_CKPT_DIR", str(root))
        env.setenv("FLOWCTL_CACHE_DIR", str(folder / "flowctl-cache"))
        for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY"):
            env.delenv(name, raising=False)
        result = cli("train", "--dataset", vectors_file(folder), "--run-name", RUN_NAME,
                     "--ckpt-dir", root, *TRAIN_FLAGS)
    assert result.exit_code == 0, f"the shared trained run failed: {result.stderr}"
    return root / RUN_NAME


def copy_run(run: Path, root: Path) -> Path:
    """A copy of the run folder `run` as `root/<its name>`, for a test that writes into it."""
    return Path(shutil.copytree(run, root / run.name))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's finished tiny run (see the module docstring). Read it; never write to it."""
    return built_once(tmp_path_factory, "shared-trained-run", build) / "checkpoints" / RUN_NAME
