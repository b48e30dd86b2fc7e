"""What the seed audit found wrong in numbers a researcher reads (issue 24, item 17)."""

from __future__ import annotations

import pytest
import torch

from study.flow_matching.config import TrainingConfig
from study.flow_matching.schedule import LRSchedule
from study.flow_matching.stages import plan_stages
from study.flow_matching.utils import get_checkpoint_path
from tests.support.helpers import cli, load, metrics_rows, run_flags, vectors_file


def test_run_name_is_the_runs_name_unless_given(isolated_run_root):
    config = TrainingConfig(arch="mlp", flow="icfm", dataset="5k")
    assert config.run_name == config.name == "mlp-icfm-5k-none"
    assert get_checkpoint_path(config.run_name) == str(isolated_run_root / "mlp-icfm-5k-none" / "best.pt")
    assert TrainingConfig(run_name="mine", dataset="5k").run_name == "mine"


def test_train_lr_is_the_rate_of_the_step_just_taken(tmp_path, isolated_run_root):
    """Row at step s: the LR optimizer step s-1 used (0-based), not the next step's."""
    data = vectors_file(tmp_path)  # 576 train rows: 9 steps of 64 per epoch
    result = cli("train", "--run-name", "lr", *run_flags(data, "--log-every", "1",
                 "--warmup-steps", "6", epochs=2))
    assert result.exit_code == 0, result.stderr
    config = TrainingConfig(**{k: v for k, v in load(isolated_run_root / "lr" / "best.pt")["config"].items()})
    schedule = LRSchedule(config, plan_stages(config), steps_per_epoch=9)
    rows = [row for row in metrics_rows(isolated_run_root / "lr") if row["train/lr"]]
    assert len(rows) == 18
    for row in rows:
        step = int(row["step"])
        assert float(row["train/lr"]) == schedule(step - 1), (step, row["train/lr"])
    assert schedule(0) != schedule(1)  # warm-up: a one-step shift would show


def test_a_resume_keeps_the_normalisation_it_trained_with(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    assert cli("train", "--run-name", "n", *run_flags(data, epochs=1)).exit_code == 0
    before = load(isolated_run_root / "n" / "last.pt")["normalization_stats"]
    torch.save(torch.load(data, weights_only=True) * 10 + 3, data)  # the data changed on disk
    resumed = cli("resume", "n", "--epochs", "2")
    assert resumed.exit_code == 0, resumed.stderr
    assert "checksum differs" in resumed.stderr  # said, once
    after = load(isolated_run_root / "n" / "last.pt")
    assert after["epoch"] == 1
    for key in ("mean", "std"):
        assert torch.equal(after["normalization_stats"][key], before[key])


def test_an_absurd_built_in_network_is_refused_before_anything_is_built(isolated_run_root):
    """From a flag, a YAML file or someone else's checkpoint: one line, nothing allocated."""
    from study.errors import UsageError

    with pytest.raises(UsageError, match="width 1000000000 and depth 3 make a network of about "
                                         "3.0e[+]18 parameters, more than 2e[+]09"):
        TrainingConfig(width=10**9).validate()
    TrainingConfig(width=4096, depth=8).validate()  # 134M parameters: a real network
    result = cli("train", "--width", "100000", "--depth", "1000", "--run-name", "big")
    assert result.exit_code == 2 and "lower --width or --depth" in result.stderr
    assert not (isolated_run_root / "big").exists()


def test_samples_of_nan_weights_are_neither_scored_nor_written(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    assert cli("train", "--run-name", "nan", *run_flags(data, epochs=1)).exit_code == 0
    best = isolated_run_root / "nan" / "best.pt"
    payload = load(best)
    for key in ("model_state_dict", "ema_shadow"):
        payload[key] = {name: torch.full_like(t, float("nan")) for name, t in payload[key].items()}
    torch.save(payload, best)
    for command in (["eval", "nan", "--n", "200"], ["sample", "nan", "--n", "10"]):
        result = cli(*command)
        assert result.exit_code == 2, (command, result.stderr)
        assert "hold NaN or Inf" in result.stderr and "Traceback" not in result.stderr
    assert not (isolated_run_root / "nan" / "eval.json").exists()
    assert not list((isolated_run_root / "nan").glob("samples.*"))
