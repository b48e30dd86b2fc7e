"""`flowctl list-runs` and study.runs: statuses, crash detection, filters, --json, speed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from study.cli.list_runs import list_runs
from study.runs.display import format_age, format_size
from study.runs.status import DISPLAY_STATUSES, JSON_KEYS, scan_runs
from tests.support.fake_runs import iso_ago, write_run
from tests.support.import_check import APP_MAIN, LIST_RUNS_MAIN, run_python

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # rich would squeeze the table to 80 columns under CliRunner


def make_app() -> typer.Typer:
    """Only this command: app.py also imports train/resume, written separately."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    app.command("list-runs")(list_runs)
    return app


def invoke(*args: str):
    return runner.invoke(make_app(), ["list-runs", *args], env=WIDE)


def json_rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_help_has_example():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "flowctl list-runs --status running" in result.output
    assert "--json" in result.output and "--watch" in result.output


def test_missing_root_is_friendly(isolated_run_root: Path):
    result = invoke()
    assert result.exit_code == 0
    assert f"no runs under {isolated_run_root}" in result.stdout
    assert "flowctl train" in result.stdout
    assert json_rows(invoke("--json")) == []


def test_empty_root_is_friendly(isolated_run_root: Path):
    isolated_run_root.mkdir()
    (isolated_run_root / "stray.txt").write_text("files are not runs")
    result = invoke()
    assert result.exit_code == 0 and "no runs under" in result.stdout
    assert json_rows(invoke("--json")) == []


def test_ckpt_dir_flag_wins_over_env(tmp_path: Path):
    other_root = tmp_path / "elsewhere"
    write_run(other_root, "flag-run")
    rows = json_rows(invoke("--json", "--ckpt-dir", str(other_root)))
    assert [row["run_name"] for row in rows] == ["flag-run"]


def test_statuses_sorted_newest_first(isolated_run_root: Path):
    write_run(isolated_run_root, "old-finished", age_s=3 * 86400)
    write_run(isolated_run_root, "new-running", age_s=5, status="running", host="elsewhere",
              epoch=3, global_step=240, best_val_loss=1.1, finished_at=None)
    write_run(isolated_run_root, "mid-failed", age_s=300, status="failed",
              error={"type": "RunFailed", "message": "non-finite loss at step 40"})
    write_run(isolated_run_root, "preempted", age_s=3 * 3600, status="preempted")
    write_run(isolated_run_root, "stopped", age_s=7200, status="early_stopped")

    rows = json_rows(invoke("--json"))
    assert [row["run_name"] for row in rows] == [
        "new-running", "mid-failed", "stopped", "preempted", "old-finished"]
    assert [row["status"] for row in rows] == [
        "running", "failed", "early_stopped", "preempted", "finished"]

    table = invoke()
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(f"{name} "))
             for name in ("new-running", "mid-failed", "stopped", "preempted", "old-finished")]
    assert order == sorted(order)
    running_line = lines[order[0]]
    assert "3/20" in running_line and "240" in running_line and "1.1" in running_line
    assert "5s ago" in running_line or "6s ago" in running_line
    assert "5m ago" in lines[order[1]] and "3h ago" in lines[order[3]] and "3d ago" in lines[order[4]]
    assert "RunFailed: non-finite loss at step 40" in table.stdout


def test_json_keys_and_values(isolated_run_root: Path):
    record = write_run(isolated_run_root, "mlp-icfm-moons-none", age_s=30, status="failed",
                       group="sweep", epoch=3, total_epochs=20, global_step=240, stage="warm",
                       train_loss=1.23, best_val_loss=1.1, finished_at=iso_ago(30),
                       elapsed_s=12.5, error={"type": "RunFailed", "message": "nan"})
    (isolated_run_root / "mlp-icfm-moons-none" / "best.pt").write_bytes(b"x" * 1000)
    (row,) = json_rows(invoke("--json"))
    assert list(row) == list(JSON_KEYS)
    for key in ("run_name", "group", "epoch", "total_epochs", "global_step", "stage", "train_loss",
                "best_val_loss", "updated_at", "started_at", "finished_at", "elapsed_s",
                "wandb_run_id", "error"):
        assert row[key] == record[key], key
    assert row["status"] == "failed"
    assert row["reason"] is None
    assert row["path"] == str(isolated_run_root / "mlp-icfm-moons-none")
    run_json_size = (isolated_run_root / "mlp-icfm-moons-none" / "run.json").stat().st_size
    assert row["size_bytes"] == 1000 + run_json_size


def test_non_finite_loss_is_null_in_json(isolated_run_root: Path):
    run_dir = isolated_run_root / "inf-run"
    write_run(isolated_run_root, "inf-run")
    text = (run_dir / "run.json").read_text().replace('"best_val_loss": 0.25', '"best_val_loss": Infinity')
    (run_dir / "run.json").write_text(text)
    result = invoke("--json")
    assert "Infinity" not in result.stdout
    assert json_rows(result)[0]["best_val_loss"] is None


def test_status_and_group_filters(isolated_run_root: Path):
    write_run(isolated_run_root, "a", status="finished", group="g1")
    write_run(isolated_run_root, "b", status="failed", group="g1")
    write_run(isolated_run_root, "c", status="finished", group="g2")
    names = lambda *args: sorted(row["run_name"] for row in json_rows(invoke("--json", *args)))  # noqa: E731
    assert names("--status", "finished") == ["a", "c"]
    assert names("--group", "g1") == ["a", "b"]
    assert names("--status", "finished", "--group", "g1") == ["a"]
    assert names("--status", "finished,failed") == ["a", "b", "c"]
    assert names("--status", "running") == []
    result = invoke("--status", "running")
    assert result.exit_code == 0 and "match --status running" in result.stdout


def test_bad_status_is_one_line_exit_2():
    result = invoke("--status", "done")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown status 'done'")
    assert all(status in lines[0] for status in DISPLAY_STATUSES)


def test_watch_with_json_is_rejected():
    result = invoke("--watch", "--json")
    assert result.exit_code == 2 and result.stderr.startswith("error:")


def test_root_that_is_a_file(tmp_path: Path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = invoke("--ckpt-dir", str(not_a_folder))
    assert result.exit_code == 2 and "is not a folder" in result.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "run.json missing (checkpoints present)"),
        ("{not json", "run.json is not valid JSON"),
        (b"\xff\xfe\x00garbage", "run.json is not valid JSON"),
        ("[1, 2]", "run.json holds a list, not an object"),
        ('{"status": "exploded"}', "run.json has an unrecognised status 'exploded'"),
    ],
)
def test_unreadable_run_json_is_unknown(isolated_run_root: Path, content, reason):
    write_run(isolated_run_root, "good", age_s=5)
    bad_dir = isolated_run_root / "bad"
    bad_dir.mkdir()
    (bad_dir / "best.pt").write_bytes(b"\0" * 10)
    if isinstance(content, str):
        (bad_dir / "run.json").write_text(content)
    elif isinstance(content, bytes):
        (bad_dir / "run.json").write_bytes(content)
    rows = {row["run_name"]: row for row in json_rows(invoke("--json"))}
    assert rows["bad"]["status"] == "unknown" and rows["bad"]["reason"] == reason
    assert rows["good"]["status"] == "finished"
    table = invoke()
    assert table.exit_code == 0 and f"bad unknown: {reason}" in table.stdout


def test_dead_pid_on_this_host_is_crashed(isolated_run_root: Path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    write_run(isolated_run_root, "dead", status="running", pid=finished.pid,
              host=socket.gethostname(), age_s=1)
    write_run(isolated_run_root, "alive", status="running", pid=os.getpid(),
              host=socket.gethostname(), age_s=3600)  # old update, but its process is alive
    rows = {row["run_name"]: row for row in json_rows(invoke("--json"))}
    assert rows["dead"]["status"] == "crashed"
    assert rows["dead"]["reason"] == f"pid {finished.pid} is no longer running on {socket.gethostname()}"
    assert rows["alive"]["status"] == "running" and rows["alive"]["reason"] is None
    names = [row["run_name"] for row in json_rows(invoke("--json", "--status", "crashed"))]
    assert names == ["dead"]


def test_stale_run_on_another_host_is_crashed(isolated_run_root: Path):
    write_run(isolated_run_root, "stale", status="running", host="node-b", age_s=20 * 60)
    write_run(isolated_run_root, "fresh", status="running", host="node-b", age_s=60)
    rows = {row["run_name"]: row for row in json_rows(invoke("--json"))}
    assert rows["stale"]["status"] == "crashed"
    assert rows["stale"]["reason"] == "no update from host node-b for 20m"
    assert rows["fresh"]["status"] == "running"
    # A finished run is never "crashed", however old.
    write_run(isolated_run_root, "ancient", status="finished", host="node-b", age_s=90 * 86400)
    assert {row["run_name"]: row for row in json_rows(invoke("--json"))}["ancient"]["status"] == "finished"


def test_watch_exits_zero_on_ctrl_c(isolated_run_root: Path, monkeypatch: pytest.MonkeyPatch):
    write_run(isolated_run_root, "watched", status="running", host="node-b", age_s=1)

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    result = invoke("--watch")
    assert result.exit_code == 0, result.output
    assert "watched" in result.stdout and "Ctrl-C" in result.stdout


def test_size_counts_nested_files(isolated_run_root: Path):
    write_run(isolated_run_root, "sized")
    nested = isolated_run_root / "sized" / "wandb" / "offline-run"
    nested.mkdir(parents=True)
    (nested / "events").write_bytes(b"e" * 1_234_567)
    (run,) = scan_runs(isolated_run_root)
    run_json_size = (isolated_run_root / "sized" / "run.json").stat().st_size
    assert run.size_bytes == 1_234_567 + run_json_size
    assert "1.2 MB" in invoke().stdout


SWEEP_NAMES = [f"resmlp-otcfm-checkerboard-noise-lr3e-4-seed-{index:03d}" for index in range(3)]


@pytest.mark.parametrize("columns", [60, 80])
def test_narrow_terminal_never_truncates_run_names(isolated_run_root: Path, columns: int):
    """Other columns are shortened or dropped first; every name stays whole, on one line."""
    for index, name in enumerate(SWEEP_NAMES):
        write_run(isolated_run_root, name, group="ablation-grid-2024", age_s=index)
    result = runner.invoke(make_app(), ["list-runs"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= columns for line in lines), lines
    rows = [line for line in lines if line.startswith("resmlp")]
    assert [row.split()[0] for row in rows] == SWEEP_NAMES
    assert all("finished" in row for row in rows), rows


def test_narrow_terminal_drops_the_least_useful_columns_first(isolated_run_root: Path):
    for index, name in enumerate(SWEEP_NAMES):
        write_run(isolated_run_root, name, age_s=index)
    # 47-character names: size, then step, updated and group make way, in that order.
    header = [line for line in invoke_at(100).stdout.splitlines() if line.startswith("run ")][0]
    assert header.split() == ["run", "group", "status", "epoch", "best", "val", "loss", "updated"]
    header = [line for line in invoke_at(80).stdout.splitlines() if line.startswith("run ")][0]
    assert header.split() == ["run", "status", "epoch", "best", "val", "loss"]
    wide_header = [line for line in invoke_at(200).stdout.splitlines() if line.startswith("run ")][0]
    assert wide_header.split() == ["run", "group", "status", "epoch", "step", "best", "val", "loss",
                                   "updated", "size"]


def invoke_at(columns: int):
    result = runner.invoke(make_app(), ["list-runs"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result


def test_a_name_wider_than_the_terminal_gets_its_own_line(isolated_run_root: Path):
    long_name = "resmlp-otcfm-checkerboard-noise-width512-depth8-lr3e-4-ema0.9999-seed-000"
    write_run(isolated_run_root, long_name, age_s=1)
    write_run(isolated_run_root, "short-run", age_s=2)
    lines = invoke_at(60).stdout.splitlines()
    assert long_name in lines, lines  # whole, alone on its line: the terminal may wrap it
    following = lines[lines.index(long_name) + 1]
    assert following.startswith(" ") and "finished" in following
    assert any(line.startswith("short-run") and "finished" in line for line in lines)
    assert all(len(line) <= 60 for line in lines if line != long_name), lines


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB"),
     (999_999, "1.0 MB"), (3_000_000_000, "3.0 GB"), (2 * 10**15, "2.0 PB")],
)
def test_format_size(size: int, text: str):
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-3, "0s"), (12, "12s"), (59.9, "59s"), (300, "5m"), (3 * 3600 + 5, "3h"), (2 * 86400, "2d")],
)
def test_format_age(seconds: float, text: str):
    assert format_age(seconds) == text


def test_scans_a_thousand_runs_quickly(isolated_run_root: Path):
    for index in range(1000):
        write_run(isolated_run_root, f"run-{index:04d}", age_s=index)
    started = time.perf_counter()
    runs = scan_runs(isolated_run_root)
    elapsed = time.perf_counter() - started
    assert len(runs) == 1000 and runs[0].run_name == "run-0000"
    assert elapsed < 1.0, f"expected < 1 s to scan 1,000 runs, got {elapsed:.2f}s"  # ~50 ms idle


@pytest.mark.parametrize("args", [["list-runs"], ["list-runs", "--json"], ["list-runs", "--help"]])
def test_list_runs_imports_neither_torch_nor_wandb(isolated_run_root: Path, args: list[str]):
    write_run(isolated_run_root, "one")
    (isolated_run_root / "broken").mkdir()
    done = run_python(LIST_RUNS_MAIN, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("ok")


@pytest.mark.parametrize("args", [["--help"], ["list-runs", "--json"]])
def test_flowctl_app_imports_neither_torch_nor_wandb(isolated_run_root: Path, args: list[str]):
    write_run(isolated_run_root, "one")
    done = run_python(APP_MAIN, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("ok")


def test_json_has_one_run_per_line(isolated_run_root: Path):
    for index in range(3):
        write_run(isolated_run_root, f"run-{index}", age_s=index)
    lines = invoke("--json").stdout.strip().splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 5
    assert [json.loads(line.rstrip(","))["run_name"] for line in lines[1:-1]] == ["run-0", "run-1", "run-2"]
    assert invoke("--json", "--status", "crashed").stdout.strip() == "[]"


def test_watch_frames_fold_a_name_wider_than_the_terminal(isolated_run_root: Path):
    """rich.live crops every line to the terminal: --watch frames fold instead of cutting."""
    import io

    from rich.console import Console

    from study.cli.list_runs import render_runs

    long_name = "resmlp-otcfm-checkerboard-noise-width512-depth8-lr3e-4-ema0.9999-seed-000"
    write_run(isolated_run_root, long_name, age_s=1, status="failed",
              error={"type": "RunFailed", "message": "non-finite loss at step 7"})
    console = Console(file=io.StringIO(), width=60, color_system=None)
    console.print(render_runs(scan_runs(isolated_run_root), isolated_run_root, width=60, fold=True))
    lines = console.file.getvalue().splitlines()
    assert all(len(line) <= 60 for line in lines), lines
    assert long_name in "".join(lines)  # every character, in order, across the folded lines
    assert any("non-finite loss at step 7" in line for line in lines)
