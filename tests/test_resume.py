"""Exact resume: a run stopped by a real signal and resumed ends bit-identical (CPU) to a
run that never stopped. Run B is a real `flowctl train` process (a fresh interpreter for
SIGTERM, forked from the zygote for the others: tests/support/zygote_fixtures.py); run A,
the reference, runs in-process with the same flags."""

from __future__ import annotations

import signal

import pytest
import yaml

from tests.support.helpers import (
    TINY,
    assert_same_state,
    cli,
    error_line,
    load,
    metrics_rows,
    run_flags,
    run_json,
    spawn,
    vectors_file,
    wait_for,
)


def reference(name: str, args: list[str]) -> None:
    result = cli("train", "--run-name", name, *args)
    assert result.exit_code == 0, result.stderr


def interrupt(start, run_dir, args: list[str], name: str, sig: int, *, when=None):
    """Start run `name` as a real process with `start` (`spawn`: a fresh interpreter; the
    `flowctl` fixture: forked from the zygote), send `sig` once `when()` holds (default: the
    first last.pt exists), wait for it to exit; returns (exit code, the checkpoint it left)."""
    process = start("train", "--run-name", name, *args)
    last = run_dir / "last.pt"
    wait_for(when or last.exists, process=process, what="the first last.pt")
    process.send_signal(sig)
    process.communicate(timeout=120)
    return process.returncode, load(last)


def resume_and_compare(root, name: str, reference_name: str = "a") -> None:
    result = cli("resume", name)
    assert result.exit_code == 0, result.stderr
    assert_same_state(load(root / reference_name / "last.pt"), load(root / name / "last.pt"))
    assert metrics_rows(root / name) == metrics_rows(root / reference_name)
    assert run_json(root / name)["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("flow", ["icfm", "otcfm"])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, isolated_run_root, flowctl, flow):
    args = run_flags(vectors_file(tmp_path), "--flow", flow)
    reference("a", args)
    code, stopped_at = interrupt(flowctl, isolated_run_root / "b", args, "b", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert stopped_at["global_step"] < load(isolated_run_root / "a" / "last.pt")["global_step"]
    assert run_json(isolated_run_root / "b")["status"] == "running"  # died without a word
    resume_and_compare(isolated_run_root, "b")


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_marks_preempted_and_resumes_exactly(tmp_path, isolated_run_root):
    args = run_flags(vectors_file(tmp_path))
    reference("a", args)
    code, stopped_at = interrupt(spawn, isolated_run_root / "b", args, "b", signal.SIGTERM)
    assert code == 143
    status = run_json(isolated_run_root / "b")
    assert status["status"] == "preempted" and status["global_step"] == stopped_at["global_step"]
    resume_and_compare(isolated_run_root, "b")


@pytest.mark.slow
def test_save_every_lands_mid_epoch_and_still_resumes_bitwise(tmp_path, isolated_run_root, flowctl):
    # 3200 rows -> 45 steps per epoch; last.pt every 7 steps, so most saves are mid-epoch.
    args = run_flags(vectors_file(tmp_path, rows=3200), "--save-every", "7")
    args[args.index("--epochs") + 1] = "8"
    reference("a", args)
    code, stopped_at = interrupt(flowctl, isolated_run_root / "b", args, "b", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert stopped_at["batch_in_epoch"] > 0, "expected a mid-epoch checkpoint"
    resume_and_compare(isolated_run_root, "b")


@pytest.mark.slow
def test_two_stage_schedule_resumed_inside_the_second_stage(tmp_path, isolated_run_root, flowctl):
    config = tmp_path / "stages.yaml"
    config.write_text(yaml.safe_dump({"stages": [
        {"name": "warm", "epochs": 2, "flow": "icfm"},
        {"name": "fine", "epochs": 10, "flow": "otcfm", "lr": 5e-4, "sigma": 0.05}]}))
    args = run_flags(vectors_file(tmp_path), "--config", str(config), "--log-every", "4")
    reference("a", args)
    last = isolated_run_root / "b" / "last.pt"
    code, stopped_at = interrupt(flowctl, isolated_run_root / "b", args, "b", signal.SIGTERM,
                                 when=lambda: last.exists() and load(last)["epoch"] >= 3)
    assert code == 143
    assert stopped_at["stage"]["stage_name"] == "fine" and stopped_at["stage"]["current_stage"] == 1
    assert stopped_at["stage"]["stage_step"] == stopped_at["global_step"] - 2 * 9
    resume_and_compare(isolated_run_root, "b")
    rows = metrics_rows(isolated_run_root / "b")
    assert [r["stage_id"] for r in rows if r["train/loss"]][:4] == ["0", "0", "0", "0"]
    assert {r["stage_id"] for r in rows} == {"0", "1"}


def test_already_completed_changes_nothing(tmp_path, isolated_run_root):
    args = run_flags(vectors_file(tmp_path))
    args[args.index("--epochs") + 1] = "2"
    reference("a", args)
    before = {p.name: p.read_bytes() for p in (isolated_run_root / "a").iterdir() if p.is_file()}
    result = cli("resume", "a")
    assert result.exit_code == 0
    assert "already completed (last epoch 2 of 2)" in result.stdout
    after = {p.name: p.read_bytes() for p in (isolated_run_root / "a").iterdir() if p.is_file()}
    assert before == after


def test_extension_continues_step_and_replans_the_cosine(tmp_path, isolated_run_root):
    from study.flow_matching.utils import cosine_warmup_factor

    args = run_flags(vectors_file(tmp_path))
    args[args.index("--epochs") + 1] = "4"
    reference("a", args)
    result = cli("resume", "a", "--epochs", "6")
    assert result.exit_code == 0
    assert "extending a from 4 to 6 epochs" in result.stderr
    rows = metrics_rows(isolated_run_root / "a")
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 6 * 9
    # lr logged at step s was used for step s's update: cfg.lr * factor(s - 1) for the
    # old horizon (36 steps) before the extension and the new one (54) after it.
    lr = load(isolated_run_root / "a" / "last.pt")["config"]["lr"]
    for row in rows:
        if row["train/lr"]:
            step = int(row["step"])
            horizon = 36 if step <= 36 else 54
            assert float(row["train/lr"]) == pytest.approx(lr * cosine_warmup_factor(step - 1, 5, horizon))
    assert int(rows[-1]["epoch"]) == 5 and load(isolated_run_root / "a" / "last.pt")["epoch"] == 5


def test_conflicting_arch_is_refused_and_harmless_override_wins_with_a_line(tmp_path, isolated_run_root):
    args = run_flags(vectors_file(tmp_path))
    args[args.index("--epochs") + 1] = "2"
    reference("a", args)
    last = isolated_run_root / "a" / "last.pt"
    refused = cli("train", "--resume", last, "--arch", "resmlp")
    assert refused.exit_code == 2
    assert refused.stderr.strip().startswith("error: --arch resmlp conflicts with the checkpoint (mlp)")
    extended = cli("train", "--resume", last, "--epochs", "3", "--patience", "7", *TINY)
    assert extended.exit_code == 0, extended.stderr
    assert "patience: 7 (flag) wins over 0 (checkpoint)" in extended.stderr


@pytest.mark.parametrize("target, fragment", [
    ("no-such-run", "no checkpoint or run named 'no-such-run'"),
    ("{tmp}/empty-folder", "holds no checkpoint"),
    ("{tmp}/notes.txt", "is a text file, not a torch checkpoint"),
])
def test_resume_bad_target_is_one_line_exit_2(tmp_path, target, fragment):
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    result = cli("resume", target.format(tmp=tmp_path))
    error_line(result, fragment)


def test_original_study_checkpoint_resumes_with_one_warning(tmp_path, isolated_run_root):
    """tests/fixtures/legacy_study_checkpoint.pt has only the original study's keys (epoch,
    model_state_dict, ema_shadow, optimizer_state_dict from a plain AdamW,
    scheduler_state_dict, best_loss, config, normalization_stats): a 2-epoch mlp 16x2 on
    moons, batch 256, whose config also holds a key flowctl does not know."""
    import shutil

    from tests.support.helpers import REPO_ROOT

    fixture = REPO_ROOT / "tests" / "fixtures" / "legacy_study_checkpoint.pt"
    assert set(load(fixture)) == {"epoch", "model_state_dict", "ema_shadow", "optimizer_state_dict",
                                  "scheduler_state_dict", "best_loss", "config",
                                  "normalization_stats"}
    run = isolated_run_root / "mlp-icfm-moons-none"
    run.mkdir(parents=True)
    shutil.copy(fixture, run / "best.pt")
    result = cli("resume", "mlp-icfm-moons-none", "--epochs", "3", "--wandb-mode", "disabled")
    assert result.exit_code == 0, result.stderr
    assert "ignoring config keys flowctl does not know: wandb_project" in result.stderr
    assert result.stderr.count("exactness") + result.stderr.count("not guaranteed") >= 1
    resumed = load(run / "last.pt")
    assert resumed["epoch"] == 2 and resumed["global_step"] == 3 * (20000 // 256)
    assert resumed["optimizer_state_dict"]["state"][0]["step"].item() == 3 * (20000 // 256)
