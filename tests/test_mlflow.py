"""MLflow, for real: runs logged to a local SQLite store (no server) and read back with
MLflow's own client, compared with metrics.csv and run.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from study.runs.metrics_log import METRIC_COLUMNS, WALL_CLOCK_COLUMNS, read_metrics
from study.runs.mlflow_store import flatten_params
from tests.support.helpers import (
    REPO_ROOT,
    cli,
    error_line,
    load,
    metrics_rows,
    run_flags,
    run_json,
    vectors_file,
    wait_for,
)
from tests.support.trackers import history, mlflow_run

MLFLOW = ["--tracker", "mlflow"]
# Every metrics.csv column a tracker gets (the step is the row's coordinate, elapsed_s local).
HISTORY_COLUMNS = tuple(c for c in METRIC_COLUMNS if c not in ("step", "elapsed_s"))


@pytest.fixture(autouse=True)
def quiet_mlflow(monkeypatch):
    """No telemetry thread, no shared tracking URI from the environment."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def assert_history_matches_metrics_csv(run_dir) -> None:
    """Every metrics.csv cell is in MLflow at the same step with the same value, each
    key's steps strictly increase in the order they were stored, and nothing else is there."""
    client, run = mlflow_run(run_dir)
    rows = read_metrics(run_dir / "metrics.csv")
    for column in HISTORY_COLUMNS:
        key = "metrics/stage_id" if column == "stage_id" else column
        expected = [(int(row["step"]), float(row[column])) for row in rows if row[column] != ""]
        stored = history(client, run, key)
        steps = [step for step, _ in stored]
        assert steps == sorted(set(steps)), f"{key}: steps must strictly increase, got {steps}"
        if column in WALL_CLOCK_COLUMNS:  # a killed segment's row may hold its own timing
            assert steps == [step for step, _ in expected], f"{key}: steps differ from metrics.csv"
        else:
            assert stored == expected, f"{key}: MLflow history differs from metrics.csv"


def test_mlflow_run_holds_the_params_and_metrics_of_metrics_csv(tmp_path, isolated_run_root):
    result = cli("train", "--run-name", "ml", "--group", "grid", "--log-every", "4",
                 "--eval-every", "2", "--eval-samples", "64",
                 *run_flags(vectors_file(tmp_path), epochs=3), *MLFLOW)
    assert result.exit_code == 0, result.stderr
    run_dir = isolated_run_root / "ml"
    status = run_json(run_dir)
    assert status["trackers"] == {"mlflow": "ok"} and status["mlflow_tracking_uri"] is None
    assert not (run_dir / "wandb").exists(), "only the chosen tracker writes"
    assert_history_matches_metrics_csv(run_dir)

    client, run = mlflow_run(run_dir)
    assert [step for step, _ in history(client, run, "eval/w2")] == [18]  # every 2nd epoch
    assert run.info.run_name == "ml" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "flow-matching-study"
    assert run.data.params == flatten_params(status["config"])
    assert run.data.params["lr"] == str(status["config"]["lr"]) and run.data.params["stages"] == "[]"
    tags = run.data.tags
    assert tags["group"] == "grid" and tags["status"] == "finished" and tags["exit_code"] == "0"
    assert tags["checkpoint_path"] == str(run_dir / "best.pt")
    best = load(run_dir / "best.pt")["best_loss"]
    assert run.data.metrics["best_val_loss"] == best and run.data.metrics["final_epoch"] == 2


def test_resume_continues_the_same_mlflow_run_and_records_changed_params(tmp_path, isolated_run_root):
    args = run_flags(vectors_file(tmp_path), "--log-every", "3", epochs=2)
    assert cli("train", "--run-name", "grow", *args, *MLFLOW).exit_code == 0
    first_id = run_json(isolated_run_root / "grow")["mlflow_run_id"]
    # No --tracker: a resume keeps the trackers run.json lists.
    result = cli("resume", "grow", "--epochs", "3", "--wandb-mode", "disabled")
    assert result.exit_code == 0, result.stderr
    run_dir = isolated_run_root / "grow"
    assert run_json(run_dir)["mlflow_run_id"] == first_id
    assert_history_matches_metrics_csv(run_dir)
    client, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert run.data.params["epochs"] == "2", "MLflow params are immutable"
    assert run.data.tags["override.epochs"] == "3"
    assert [step for step, _ in history(client, run, "val/loss")] == [9, 18, 27]


def test_mlflow_chosen_on_resume_replays_the_whole_history(tmp_path, isolated_run_root):
    """A run trained without MLflow gets a new MLflow run on resume whose history is
    metrics.csv's from step 1: the rows before the resume are replayed."""
    args = run_flags(vectors_file(tmp_path), epochs=2)
    assert cli("train", "--run-name", "late", *args, "--tracker", "none").exit_code == 0
    assert not (isolated_run_root / "late" / "mlruns").exists()
    result = cli("resume", "late", "--epochs", "3", *MLFLOW)
    assert result.exit_code == 0, result.stderr
    run_dir = isolated_run_root / "late"
    assert run_json(run_dir)["trackers"] == {"mlflow": "ok"}
    assert_history_matches_metrics_csv(run_dir)
    client, run = mlflow_run(run_dir)
    assert [step for step, _ in history(client, run, "val/loss")] == [9, 18, 27]


@pytest.mark.slow
def test_sigkilled_run_resumes_into_the_same_mlflow_run_with_increasing_steps(
        tmp_path, isolated_run_root, flowctl):
    # A row per step: the kill is then likely to catch rows not yet written to MLflow,
    # which the resume must replay from metrics.csv.
    args = run_flags(vectors_file(tmp_path), "--log-every", "1", epochs=30)
    process = flowctl("train", "--run-name", "killed", *args, *MLFLOW,
                    env={"MLFLOW_DISABLE_TELEMETRY": "true"})
    run_dir = isolated_run_root / "killed"
    wait_for((run_dir / "last.pt").exists, process=process, what="the first last.pt")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    first_id = run_json(run_dir)["mlflow_run_id"]
    _, run = mlflow_run(run_dir)
    assert run.info.status == "RUNNING", "a killed process cannot end its MLflow run"

    result = cli("resume", "killed")
    assert result.exit_code == 0, result.stderr
    assert run_json(run_dir)["mlflow_run_id"] == first_id
    assert_history_matches_metrics_csv(run_dir)
    client, run = mlflow_run(run_dir)
    assert run.info.status == "FINISHED"
    assert history(client, run, "train/loss")[-1][0] == 30 * 9
    assert len(client.search_runs([run.info.experiment_id])) == 1, "one MLflow run, not two"


@pytest.mark.slow
def test_sigterm_marks_the_mlflow_run_killed_and_preempted(tmp_path, isolated_run_root, flowctl):
    process = flowctl("train", "--run-name", "pre", *run_flags(vectors_file(tmp_path), epochs=40),
                    *MLFLOW, env={"MLFLOW_DISABLE_TELEMETRY": "true"})
    run_dir = isolated_run_root / "pre"
    wait_for((run_dir / "last.pt").exists, process=process, what="the first last.pt")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 143
    _, run = mlflow_run(run_dir)
    assert run.info.status == "KILLED"
    assert run.data.tags["status"] == "preempted" and run.data.tags["preempted"] == "true"
    assert "failed" not in run.data.tags


def test_failed_run_is_tagged_failed_with_the_error_as_its_note(tmp_path, isolated_run_root):
    """A real fault: last.pt cannot be written (its path is a folder)."""
    (isolated_run_root / "cant-save" / "last.pt").mkdir(parents=True)
    result = cli("train", "--run-name", "cant-save", *run_flags(vectors_file(tmp_path), epochs=1),
                 *MLFLOW)
    assert result.exit_code == 1
    _, run = mlflow_run(isolated_run_root / "cant-save")
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["status"] == "failed" and tags["failed"] == "true" and tags["exit_code"] == "1"
    assert "last.pt" in tags["mlflow.note.content"]


def test_eval_adds_eval_metrics_to_the_runs_mlflow_run(tmp_path, isolated_run_root):
    assert cli("train", "--run-name", "ev", *run_flags(vectors_file(tmp_path), epochs=2),
               *MLFLOW).exit_code == 0
    result = cli("eval", "ev", "--n", "64", "--steps", "4", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    client, run = mlflow_run(isolated_run_root / "ev")
    assert run.data.metrics["eval/w2"] == record["w2"] and run.data.metrics["eval/nfe"] == 4
    assert [step for step, _ in history(client, run, "eval/w2")] == [18]  # the run's last step
    assert run.data.tags["eval.checkpoint"].endswith("ev/best.pt")
    assert run.info.status == "FINISHED", "eval logs to the run without reopening it"


def test_tracking_uri_from_the_environment_wins_and_is_recorded(tmp_path, isolated_run_root,
                                                                monkeypatch):
    shared = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared)
    data = vectors_file(tmp_path)
    for name in ("one", "two"):
        result = cli("train", "--run-name", name, *run_flags(data, epochs=1), *MLFLOW,
                     "--wandb-project", "grid-study")
        assert result.exit_code == 0, result.stderr
        assert run_json(isolated_run_root / name)["mlflow_tracking_uri"] == shared
        assert not (isolated_run_root / name / "mlruns").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=shared)
    experiment = client.get_experiment_by_name("grid-study")
    names = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id]))
    assert names == ["one", "two"], "both runs in the project's experiment of the shared store"


def test_an_mlflow_store_that_cannot_open_never_stops_training(tmp_path, isolated_run_root,
                                                               monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker / 'mlflow.db'}")
    result = cli("train", "--run-name", "nostore", *run_flags(vectors_file(tmp_path), epochs=2),
                 *MLFLOW)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "mlflow" in line]
    assert len(warnings) == 1 and "continuing with local logging only" in warnings[0], warnings
    status = run_json(isolated_run_root / "nostore")
    assert status["status"] == "finished" and status["trackers"] == {"mlflow": "unavailable"}
    assert len(metrics_rows(isolated_run_root / "nostore")) == 3  # steps 9, 10, 18


def test_tracker_mlflow_without_the_package_is_one_line_exit_2(tmp_path, monkeypatch):
    # Stand-in for an environment without mlflow: a None entry in sys.modules makes both
    # `import mlflow` and importlib's lookup fail, as for a package that is not installed.
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = cli("train", "--run-name", "x", *run_flags(vectors_file(tmp_path)), *MLFLOW)
    error_line(result, "needs mlflow", "pip install mlflow-skinny sqlalchemy alembic")


@pytest.mark.slow  # real processes, 5-10 s: the default suite runs it, test-fast does not
def test_mlflow_is_imported_only_when_chosen(tmp_path):
    """One real interpreter: train and eval with the default trackers and with none never
    import mlflow; then with --tracker mlflow they do (the control)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.support.helpers import cli, run_flags, vectors_file\n"
        f"data = vectors_file(Path({str(tmp_path)!r}))\n"
        "for extra in ([], ['--tracker', 'none'], ['--tracker', 'mlflow']):\n"
        "    flags = run_flags(data, '--overwrite', *extra, epochs=1)\n"
        "    assert cli('train', '--run-name', 'r', *flags).exit_code == 0\n"
        "    assert cli('eval', 'r', '--n', '32', '--steps', '2').exit_code == 0\n"
        "    print('mlflow' in sys.modules)\n"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))},
           "FLOWCTL_CKPT_DIR": str(tmp_path / "ckpt"), "WANDB_SILENT": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False", "True"]


def test_flatten_params_nests_with_dots_and_lists_as_json():
    params = flatten_params({"lr": 0.001, "teacher": None, "stages": [{"name": "a", "epochs": 2}],
                             "opt": {"betas": [0.9, 0.99], "fused": True}, "long": "x" * 7000})
    assert params["lr"] == "0.001" and params["teacher"] == "null"
    assert json.loads(params["stages"]) == [{"name": "a", "epochs": 2}]
    assert params["opt.betas"] == "[0.9, 0.99]" and params["opt.fused"] == "true"
    assert len(params["long"]) == 6000 and params["long"].endswith("…")
