"""Numerical faults through the CLI: a loss that becomes inf/NaN fails the run (exit 1,
`non-finite loss at step N` in run.json) and never replaces a good checkpoint."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from tests.support.helpers import TINY, cli, error_line, load, run_json, vectors_file
from tests.support.kill_loop import checkpoint_problems

# lr 1e30 without clipping: the first AdamW update moves every weight by ~1e30, so the next
# forward pass overflows float32 (checked: the loss of step 2 is inf).
DIVERGE = ["--grad-clip", "0", "--warmup-steps", "1"]



def all_finite(path) -> bool:
    ckpt = load(path)
    return all(torch.isfinite(t).all() for key in ("model_state_dict", "ema_shadow")
               for t in ckpt[key].values())


def test_huge_learning_rate_fails_the_run_with_the_step(tmp_path, isolated_run_root):
    result = cli("train", "--run-name", "boom", "--dataset", vectors_file(tmp_path),
                 "--epochs", "3", *TINY, "--lr", "1e30", "--log-every", "1", *DIVERGE)
    assert result.exit_code == 1
    assert error_line(result.stderr) == "error: non-finite loss at step 2"
    status = run_json(isolated_run_root / "boom")
    assert status["status"] == "failed"
    assert status["error"] == {"type": "RunFailed", "message": "non-finite loss at step 2"}
    assert not list((isolated_run_root / "boom").glob("*.pt")), "nothing good to keep yet"


def diverging_stage_config(tmp_path):
    """Epoch 1 trains normally (last.pt and best.pt at step 9), then lr 1e30."""
    config = tmp_path / "diverge.yaml"
    config.write_text(yaml.safe_dump({"stages": [{"name": "ok", "epochs": 1},
                                                 {"name": "boom", "epochs": 2, "lr": 1e30}]}))
    return config


@pytest.mark.parametrize("save_every, log_every", [
    ("0", "1"),
    ("1", "10"),
])
def test_divergence_after_good_checkpoints_keeps_them(tmp_path, isolated_run_root, save_every,
                                                     log_every):
    run = isolated_run_root / "late"
    result = cli("train", "--run-name", "late", "--dataset", vectors_file(tmp_path),
                 "--config", diverging_stage_config(tmp_path), "--epochs", "3",
                 "--patience", "0", "--save-every", save_every, "--log-every", log_every,
                 *TINY, *DIVERGE)
    assert result.exit_code == 1
    line = error_line(result.stderr)
    assert re.fullmatch(r"error: non-finite (validation )?loss at step 1\d", line), line
    status = run_json(run)
    assert status["status"] == "failed" and "non-finite" in status["error"]["message"]
    assert checkpoint_problems(run) == []
    assert load(run / "best.pt")["global_step"] == 9 and all_finite(run / "best.pt")
    assert all_finite(run / "last.pt"), (
        f"last.pt (step {load(run / 'last.pt')['global_step']}) holds non-finite weights")


def test_data_near_the_float32_limit_does_not_train_silently(tmp_path, isolated_run_root):
    """Finite values of ~3e38 pass the data checks but overflow the normalisation stats."""
    data = tmp_path / "huge.pt"
    x = (torch.rand(640, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 3e38
    torch.save(x, data)
    result = cli("train", "--run-name", "huge", "--dataset", data, "--epochs", "2", *TINY)
    assert result.exit_code in (1, 2), "a run on overflowing stats must not finish"
    line = error_line(result.stderr)
    assert "non-finite" in line or str(data) in line
    assert not list((isolated_run_root / "huge").glob("*.pt"))
