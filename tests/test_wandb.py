"""wandb, for real: offline runs written by wandb itself, read back from its record log."""

from __future__ import annotations

import json

import torch

from study.flow_matching.trainer import FlowTrainer
from tests.support.helpers import (
    TINY,
    LinearVelocity,
    cli,
    run_json,
    vectors_file,
    wandb_files,
    wandb_history,
    wandb_records,
)


def records_of(path, kind):
    return [r for r in wandb_records(path) if r.WhichOneof("record_type") == kind]


def run_tags(path) -> set[str]:
    tags: set[str] = set()
    for record in records_of(path, "run"):
        tags.update(record.run.tags)
    return tags


def summary_of(path) -> dict:
    summary = {}
    for record in records_of(path, "summary"):
        for item in record.summary.update:
            summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def test_offline_run_logs_the_study_contract(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    tiny = [a for a in TINY if a not in ("--wandb-mode", "disabled")]
    result = cli("train", "--dataset", data, "--epochs", "3", "--run-name", "wb", "--group", "grid",
                 "--log-every", "4", "--wandb-mode", "offline", *tiny)
    assert result.exit_code == 0, result.stderr
    run = isolated_run_root / "wb"
    files = wandb_files(run)
    assert len(files) == 1, "the run's wandb files live in its run folder"
    (run_record,) = [r.run for r in records_of(files[0], "run")][:1]
    assert run_record.run_id == run_json(run)["wandb_run_id"]
    assert run_record.display_name == "wb" and run_record.run_group == "grid"
    config_keys = {u.key for r in records_of(files[0], "run") for u in r.run.config.update}
    assert {"arch", "flow", "dataset", "lr", "epochs"} <= config_keys

    history = wandb_history(files[0])
    steps = [step for step, _ in history]
    assert steps == sorted(set(steps)), f"steps must strictly increase, got {steps}"
    train_rows = [(s, row) for s, row in history if "train/loss" in row]
    assert [s for s, _ in train_rows] == [4, 8, 12, 16, 20, 24]
    for _, row in train_rows:
        assert {"train/loss", "train/grad_norm", "train/lr", "epoch", "metrics/stage_id"} <= set(row)
    val_rows = [(s, row) for s, row in history if "val/loss" in row]
    assert [s for s, _ in val_rows] == [9, 18, 27]  # 576 training rows / 64 = 9 steps per epoch
    assert all("val/best_loss" in row for _, row in val_rows)

    summary = summary_of(files[0])
    assert summary["final_epoch"] == 2
    assert summary["checkpoint_path"] == str(run / "best.pt")
    assert abs(summary["best_val_loss"] - min(r["val/loss"] for _, r in val_rows)) < 1e-12
    assert records_of(files[0], "exit")[-1].exit.exit_code == 0
    assert "failed" not in run_tags(files[0])
    metrics = {m.metric.name: m.metric.summary.min for m in records_of(files[0], "metric")}
    assert metrics.get("val/loss") and metrics.get("train/loss"), "define_metric(summary='min')"


def test_failed_run_is_tagged_failed_with_exit_code_1(tmp_path, isolated_run_root):
    def device_assert_at_step_6(call, out):
        if call == 6:
            raise RuntimeError("CUDA error: device-side assert (simulated by the test model)")
        return out

    from study.flow_matching.config import TrainingConfig

    config = TrainingConfig(arch="test", epochs=2, batch_size=64, run_name="broken")
    x = torch.randn(640, 2, generator=torch.Generator().manual_seed(0))
    trainer = FlowTrainer(LinearVelocity(device_assert_at_step_6), config, x[:512], x[512:], "cpu",
                          wandb_mode="offline")
    try:
        trainer.train()
    except RuntimeError as error:
        assert "device-side assert" in str(error)
    else:
        raise AssertionError("the model's error must propagate")
    (path,) = wandb_files(isolated_run_root / "broken")
    assert "failed" in run_tags(path)
    notes = [r.run.notes for r in records_of(path, "run") if r.run.notes]
    assert notes and "device-side assert" in notes[-1]
    assert records_of(path, "exit")[-1].exit.exit_code == 1
    status = run_json(isolated_run_root / "broken")
    assert status["status"] == "failed" and status["error"]["type"] == "RuntimeError"


def test_cli_failure_exits_1_and_tags_the_wandb_run(tmp_path, isolated_run_root):
    """A real fault the CLI can hit: last.pt cannot be written (its path is a folder)."""
    data = vectors_file(tmp_path)
    (isolated_run_root / "cant-save" / "last.pt").mkdir(parents=True)
    tiny = [a for a in TINY if a not in ("--wandb-mode", "disabled")]
    result = cli("train", "--dataset", data, "--epochs", "1", "--run-name", "cant-save",
                 "--wandb-mode", "offline", *tiny)
    assert result.exit_code == 1
    (path,) = wandb_files(isolated_run_root / "cant-save")
    assert "failed" in run_tags(path)
    assert records_of(path, "exit")[-1].exit.exit_code == 1


def test_a_resume_goes_on_in_the_runs_own_wandb_mode_unless_told_otherwise(
        tmp_path, isolated_run_root, monkeypatch):
    """A run trained with wandb disabled is not logged offline by a plain `flowctl resume`,
    and one that went offline stays offline; --wandb-mode or $WANDB_MODE still choose. (The
    same rule keeps an online run online; no network here to show it.)"""
    flags = ["--dataset", vectors_file(tmp_path), "--patience", "0", *TINY]  # disabled
    assert cli("train", "--run-name", "quiet", "--epochs", "1", *flags).exit_code == 0
    run = isolated_run_root / "quiet"
    assert cli("resume", "quiet", "--epochs", "2").exit_code == 0
    assert run_json(run)["wandb_mode"] == "disabled" and not wandb_files(run)

    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment wins over the run's own
    assert cli("resume", "quiet", "--epochs", "3").exit_code == 0
    assert run_json(run)["wandb_mode"] == "offline" and len(wandb_files(run)) == 1
    monkeypatch.delenv("WANDB_MODE")
    assert cli("resume", "quiet", "--epochs", "4").exit_code == 0  # now offline: it stays so
    assert run_json(run)["wandb_mode"] == "offline" and len(wandb_files(run)) == 2
    assert cli("resume", "quiet", "--epochs", "5", "--wandb-mode", "disabled").exit_code == 0
    assert run_json(run)["wandb_mode"] == "disabled" and len(wandb_files(run)) == 2
