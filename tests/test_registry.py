"""The run registry end to end: run.json states, list-runs/inspect-ckpt against real
checkpoints, wandb and TensorBoard curves that continue across a resume."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from tests.support.helpers import (
    TINY,
    cli,
    load,
    metrics_rows,
    run_json,
    vectors_file,
    wait_for,
    wandb_files,
    wandb_history,
    wandb_records,
)

OFFLINE = [a for a in TINY if a not in ("--wandb-mode", "disabled")] + ["--wandb-mode", "offline"]


def listed(*args: str) -> list[dict]:
    result = cli("list-runs", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_sigkill_shows_as_crashed_with_its_live_status_left_behind(tmp_path, isolated_run_root, flowctl):
    args = ["--dataset", vectors_file(tmp_path), "--epochs", "40", "--patience", "0", *TINY]
    process = flowctl("train", "--run-name", "doomed", *args)
    last = isolated_run_root / "doomed" / "last.pt"
    wait_for(last.exists, process=process, what="the first last.pt")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    status = run_json(isolated_run_root / "doomed")
    assert status["status"] == "running" and status["pid"] == process.pid
    (row,) = listed()
    assert row["status"] == "crashed" and str(process.pid) in row["reason"]
    assert listed("--status", "crashed") == [row] and listed("--status", "running") == []


@pytest.mark.slow
def test_wandb_run_continues_across_a_kill_with_the_same_id_and_increasing_steps(
        tmp_path, isolated_run_root, flowctl):
    args = ["--dataset", vectors_file(tmp_path), "--epochs", "30", "--patience", "0",
            "--log-every", "2", *OFFLINE]
    process = flowctl("train", "--run-name", "wb", *args)
    run = isolated_run_root / "wb"
    wait_for((run / "last.pt").exists, process=process, what="the first last.pt")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    resumed_from = load(run / "last.pt")["global_step"]
    assert cli("resume", "wb").exit_code == 0

    first, second = wandb_files(run)[:1], wandb_files(run)[1:]
    assert len(second) == 1, "one offline segment per process"
    ids = {r.run.run_id for f in (*first, *second) for r in wandb_records(f)
           if r.WhichOneof("record_type") == "run"}
    assert ids == {run_json(run)["wandb_run_id"]}, "both segments belong to one wandb run"
    steps_1 = [s for s, _ in wandb_history(first[0])]
    history_2 = wandb_history(second[0])
    steps_2 = [s for s, _ in history_2]
    combined = steps_1 + steps_2
    assert combined == sorted(set(combined)), "steps must strictly increase across segments"
    # The killed segment loses what wandb had not flushed; the resumed one replays those
    # rows from metrics.csv, so wandb ends with exactly the local history.
    assert combined == [int(row["step"]) for row in metrics_rows(run)]
    assert resumed_from > 0
    first_train_row = next(row for _, row in history_2 if "train/loss" in row)
    assert first_train_row["metrics/stage_id"] == 0
    assert steps_2[-1] == 30 * 9


@pytest.mark.slow
def test_sigterm_tags_the_wandb_run_preempted_not_failed(tmp_path, isolated_run_root, flowctl):
    args = ["--dataset", vectors_file(tmp_path), "--epochs", "40", "--patience", "0", *OFFLINE]
    process = flowctl("train", "--run-name", "pre", *args)
    run = isolated_run_root / "pre"
    wait_for((run / "last.pt").exists, process=process, what="the first last.pt")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 143
    (path,) = wandb_files(run)
    tags = {t for r in wandb_records(path) if r.WhichOneof("record_type") == "run" for t in r.run.tags}
    assert "preempted" in tags and "failed" not in tags
    assert run_json(run)["status"] == "preempted"
    assert listed()[0]["status"] == "preempted"


def test_list_runs_and_inspect_match_the_checkpoint_field_by_field(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    assert cli("train", "--dataset", data, "--epochs", "3", "--run-name", "one", "--group", "g1",
               *TINY).exit_code == 0
    assert cli("train", "--dataset", data, "--epochs", "2", "--run-name", "two", "--flow", "otcfm",
               *TINY).exit_code == 0
    rows = listed()
    assert [r["run_name"] for r in rows] == ["two", "one"], "newest first"
    best = load(isolated_run_root / "one" / "best.pt")
    last = load(isolated_run_root / "one" / "last.pt")
    (one,) = listed("--group", "g1")
    assert one["status"] == "finished" and one["epoch"] == 3 and one["total_epochs"] == 3
    assert one["global_step"] == last["global_step"] == 27
    assert one["best_val_loss"] == best["best_loss"]

    result = cli("inspect-ckpt", "one", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["epoch"] == best["epoch"] and summary["global_step"] == best["global_step"]
    assert summary["best_loss"] == best["best_loss"]
    assert summary["config"] == best["config"]
    assert summary["parameter_count"] == sum(t.numel() for t in best["model_state_dict"].values())
    assert [(t["name"], t["shape"]) for t in summary["tensors"]] == [
        (name, list(t.shape)) for name, t in best["model_state_dict"].items()]
    assert summary["optimizer"]["type"] == "AdamW"
    assert summary["optimizer"]["lr"] == best["optimizer_state_dict"]["param_groups"][0]["lr"]
    assert summary["optimizer"]["step"] == best["global_step"]
    assert summary["scheduler"]["last_epoch"] == best["scheduler_state_dict"]["last_epoch"]
    assert sorted(summary["rng_states"]) == sorted(best["rng_states"])
    assert summary["stage"]["stage_name"] == "main"
    assert summary["torch_version"] == torch.__version__
    last_summary = json.loads(cli("inspect-ckpt", "one", "--last", "--json").stdout)
    assert last_summary["path"].endswith("one/last.pt") and last_summary["epoch"] == 2


def test_wandb_that_cannot_start_never_stops_training(tmp_path, isolated_run_root):
    """Online mode with no API key: wandb refuses to start. One warning, local logs go on."""
    data = vectors_file(tmp_path)
    tiny = [a for a in TINY if a not in ("--wandb-mode", "disabled")]
    result = cli("train", "--dataset", data, "--epochs", "2", "--run-name", "nowb",
                 "--wandb-mode", "online", *tiny)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "wandb" in line]
    assert len(warnings) == 1 and "continuing with local logging only" in warnings[0]
    status = run_json(isolated_run_root / "nowb")
    assert status["wandb"] == "unavailable" and status["status"] == "finished"
    assert (isolated_run_root / "nowb" / "metrics.csv").read_text().count("\n") == 1 + 3  # header, steps 9, 10, 18


def test_tensorboard_scalars_continue_across_a_resume(tmp_path, isolated_run_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = vectors_file(tmp_path)
    assert cli("train", "--dataset", data, "--epochs", "2", "--run-name", "tb", "--tensorboard",
               "--log-every", "3", *TINY).exit_code == 0
    assert cli("resume", "tb", "--epochs", "4", "--wandb-mode", "disabled").exit_code == 0
    events = EventAccumulator(str(isolated_run_root / "tb" / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(3, 37, 3)), steps
    assert [e.step for e in events.Scalars("val/loss")] == [9, 18, 27, 36]
