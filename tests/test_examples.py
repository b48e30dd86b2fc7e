"""Every training config in examples/ trains as written (2 epochs instead of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.helpers import REPO_ROOT, cli, load

CONFIGS = sorted(path for path in (REPO_ROOT / "examples").glob("*.yaml")
                 if "grid" not in (yaml.safe_load(path.read_text()) or {}))


def test_there_is_an_example_per_training_loop_feature():
    keys = set()
    for path in CONFIGS:
        keys |= set(yaml.safe_load(path.read_text()))
    assert {"scheduler", "grad_accum", "precision", "eval_every", "select_by",
            "keep_snapshots", "normalize", "ema_warmup"} <= keys


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_config_trains(path: Path, isolated_run_root):
    result = cli("train", "--config", path, "--epochs", "2", "--run-name", path.stem,
                 "--wandb-mode", "disabled", "--plain")
    assert result.exit_code == 0, result.stderr
    saved = load(isolated_run_root / path.stem / "last.pt")["config"]
    for key, value in yaml.safe_load(path.read_text()).items():
        if key != "epochs":
            assert saved[key] == value or {**saved[key], **value} == saved[key], key
