"""`flowctl ui`'s JSON API and pages against a real HTTP server on a free loopback port.

Fast tests serve hand-written run folders from a server thread; the slow one serves a real
training run, from a real `flowctl ui` process, while the run writes to the same root.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from study.ui.api import eta_seconds
from tests.support import helpers
from tests.support.fake_runs import write_metrics, write_run
from tests.support.helpers import get_json, http_get, serve_root, spawn, start_ui, stop, wait_for


@pytest.fixture
def served(isolated_run_root: Path):
    """A server over the test's checkpoint root; yields its base URL."""
    with serve_root(isolated_run_root) as url:
        yield url


def test_runs_table_rows_newest_first_with_progress(served: str, isolated_run_root: Path):
    write_run(isolated_run_root, "old", age_s=600, group="sweep")
    write_run(isolated_run_root, "live", age_s=1, status="running", epoch=7, total_epochs=15,
              train_loss=4.94, elapsed_s=60.0, host="another-host", group="sweep")
    write_run(isolated_run_root, "other", age_s=30, status="failed", group="solo",
              error={"type": "RunFailed", "message": "non-finite loss"})
    data = get_json(f"{served}/api/runs")
    assert [row["run_name"] for row in data["runs"]] == ["live", "other", "old"]
    live = data["runs"][0]
    assert live["status"] == "running" and live["running"] is True
    assert live["progress"] == pytest.approx(7 / 15)
    assert live["train_loss"] == 4.94
    # run.json's epoch counts completed epochs: 7 done in 60 s, 8 left, less the 1 s since
    assert live["eta_s"] == pytest.approx(60.0 / 7 * 8 - 1, abs=3.0)
    assert 0 <= live["age_s"] < 60
    assert data["runs"][1]["error"]["message"] == "non-finite loss"
    assert set(data["statuses"]) >= {"running", "crashed", "unknown"}

    assert [r["run_name"] for r in get_json(f"{served}/api/runs?group=sweep")["runs"]] == ["live", "old"]
    assert [r["run_name"] for r in get_json(f"{served}/api/runs?status=failed,finished")["runs"]] == ["other", "old"]
    assert "unknown status 'nope'" in get_json(f"{served}/api/runs?status=nope", status=400)["error"]


def test_table_follows_every_change_between_polls(served: str, isolated_run_root: Path):
    """/api/runs remembers settled folders between polls; nothing it shows may go stale."""
    from study.runs.status import write_json_atomic

    def statuses() -> dict:
        return {row["folder"]: (row["status"], row["reason"]) for row in get_json(f"{served}/api/runs")["runs"]}

    record = write_run(isolated_run_root, "done")
    empty = isolated_run_root / "empty"
    empty.mkdir()
    os.utime(empty, (1e9, 1e9))  # an old folder: whatever is added next changes its mtime
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        write_run(isolated_run_root, "live", status="running", host=socket.gethostname(),
                  pid=sleeper.pid)
        assert statuses() == {"done": ("finished", None), "empty": ("unknown", "run.json missing"),
                              "live": ("running", None)}
        write_json_atomic(isolated_run_root / "done" / "run.json", {**record, "status": "failed"})
        (empty / "best.pt").write_bytes(b"weights")
        sleeper.kill()
        sleeper.wait()
        assert statuses() == {
            "done": ("failed", None), "empty": ("unknown", "run.json missing (checkpoints present)"),
            "live": ("crashed", f"pid {sleeper.pid} is no longer running on {socket.gethostname()}")}
    finally:
        sleeper.kill()
        sleeper.wait()
    shutil.rmtree(isolated_run_root / "done")
    assert set(statuses()) == {"empty", "live"}


def test_status_has_the_directive_shape(served: str, isolated_run_root: Path):
    write_run(isolated_run_root, "live", status="running", epoch=7, total_epochs=15,
              train_loss=4.94, host="another-host", global_step=700)
    status = get_json(f"{served}/api/runs/live/status")
    assert status == {"running": True, "current_epoch": 7, "total_epochs": 15, "loss": 4.94,
                      "status": "running", "global_step": 700}
    write_run(isolated_run_root, "dead", status="running", host=socket.gethostname(), pid=2**22 + 12345)
    dead = get_json(f"{served}/api/runs/dead/status")
    assert dead["running"] is False and dead["status"] == "crashed"


@pytest.mark.parametrize("content", [b'{"status": "runn', b"", b"[1, 2]", b"\xff\xfe garbage"])
def test_corrupt_run_json_is_unknown_with_reason_never_500(served: str, isolated_run_root: Path,
                                                          content: bytes):
    run_dir = isolated_run_root / "broken"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_bytes(content)
    row = get_json(f"{served}/api/runs")["runs"][0]
    assert row["status"] == "unknown" and row["reason"].startswith("run.json")
    detail = get_json(f"{served}/api/runs/broken?checkpoint=0")
    assert detail["run"]["status"] == "unknown" and detail["run"]["reason"] == row["reason"]
    assert detail["run_json"] is None
    assert get_json(f"{served}/api/runs/broken/status")["status"] == "unknown"
    assert get_json(f"{served}/api/runs/broken/metrics")["rows"] == []
    assert http_get(f"{served}/runs/broken")[0] == 200


def test_non_finite_values_come_out_as_strict_json(served: str, isolated_run_root: Path):
    run_dir = isolated_run_root / "nan"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text('{"status": "failed", "train_loss": NaN, "best_val_loss": '
                                      'Infinity, "config": {"lr": NaN}, "error": {"x": -Infinity}}')
    (run_dir / "eval.json").write_text('{"w2": NaN}')
    write_metrics(run_dir, ["10,0,0,nan,inf,0.001,,,0.1"])
    assert get_json(f"{served}/api/runs")["runs"][0]["train_loss"] is None  # get_json is strict
    detail = get_json(f"{served}/api/runs/nan?checkpoint=0")
    assert detail["run_json"]["config"] == {"lr": None} and detail["eval"] == {"w2": None}
    assert get_json(f"{served}/api/runs/nan/metrics")["rows"] == [
        {"step": 10, "epoch": 0, "stage_id": 0, "train/loss": None, "train/grad_norm": None,
         "train/lr": 0.001, "elapsed_s": 0.1}]


def test_metrics_since_returns_only_newer_rows(served: str, isolated_run_root: Path):
    run_dir = isolated_run_root / "run"
    write_run(isolated_run_root, "run")
    write_metrics(run_dir, ["9,0,0,,,,2.0,2.0,0.1", "10,1,0,2.3,1.8,0.0001,,,0.2",
                            "18,1,1,,,,1.9,1.9,0.3"])
    everything = get_json(f"{served}/api/runs/run/metrics")
    assert [row["step"] for row in everything["rows"]] == [9, 10, 18]
    assert everything["last_step"] == 18 and everything["columns"][0] == "step"
    assert everything["rows"][1] == {"step": 10, "epoch": 1, "stage_id": 0, "train/loss": 2.3,
                                     "train/grad_norm": 1.8, "train/lr": 0.0001, "elapsed_s": 0.2}
    assert [row["step"] for row in get_json(f"{served}/api/runs/run/metrics?since=9")["rows"]] == [10, 18]
    assert get_json(f"{served}/api/runs/run/metrics?since=18")["rows"] == []
    with open(run_dir / "metrics.csv", "a") as handle:  # the trainer appends; half a row last
        handle.write("20,2,1,2.1,1.7,0.0002,,,0.4\n27,2,1,,,,1.8")
    assert [row["step"] for row in get_json(f"{served}/api/runs/run/metrics?since=18")["rows"]] == [20]
    with open(run_dir / "metrics.csv", "a") as handle:
        handle.write(",1.8,0.5\n")
    assert [row["step"] for row in get_json(f"{served}/api/runs/run/metrics?since=18")["rows"]] == [20, 27]
    write_metrics(run_dir, ["9,0,0,,,,2.5,2.5,0.1"])  # --overwrite started the file over
    restarted = get_json(f"{served}/api/runs/run/metrics?since=-1")
    assert restarted["last_step"] == 9 and restarted["rows"][0]["val/loss"] == 2.5
    assert "since must be an integer" in get_json(f"{served}/api/runs/run/metrics?since=x", 400)["error"]


def test_run_detail_has_eval_pictures_config_and_resume_command(served: str, isolated_run_root: Path):
    write_run(isolated_run_root, "done", config={"arch": "mlp", "lr": 0.001})
    run_dir = isolated_run_root / "done"
    (run_dir / "eval.json").write_text(json.dumps({"w2": 0.12, "mmd": 0.003, "nfe": 100}))
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    (run_dir / "samples.png").write_bytes(png)
    detail = get_json(f"{served}/api/runs/done")
    assert detail["run_json"]["config"] == {"arch": "mlp", "lr": 0.001}
    assert detail["eval"]["w2"] == 0.12
    assert detail["resume_command"] == f"flowctl resume done --ckpt-dir {isolated_run_root.resolve()}"
    assert detail["checkpoint"] is None  # no best.pt or last.pt
    assert [picture["name"] for picture in detail["pictures"]] == ["samples.png"]
    status, headers, body = http_get(served + detail["pictures"][0]["url"])
    assert status == 200 and headers["Content-Type"] == "image/png" and body == png


def test_a_corrupt_checkpoint_is_an_error_line_in_the_summary(served: str, isolated_run_root: Path):
    write_run(isolated_run_root, "bad")
    (isolated_run_root / "bad" / "best.pt").write_bytes(b"not a checkpoint at all")
    summary = get_json(f"{served}/api/runs/bad")["checkpoint"]
    assert summary["file"] == "best.pt" and "best.pt" in summary["error"]


def test_eta_counts_completed_epochs_only(isolated_run_root: Path):
    from study.runs.status import read_run

    # run.json's `epoch` is the number of completed epochs (the trainer writes it so).
    write_run(isolated_run_root, "first", status="running", epoch=0, total_epochs=10,
              elapsed_s=5.0, host="another-host")
    write_run(isolated_run_root, "second", status="running", epoch=1, total_epochs=10,
              elapsed_s=12.0, host="another-host")
    write_run(isolated_run_root, "later", status="running", epoch=4, total_epochs=10,
              elapsed_s=40.0, host="another-host")
    assert eta_seconds(read_run(isolated_run_root / "first"), 0.0) is None  # no epoch done yet
    assert eta_seconds(read_run(isolated_run_root / "second"), 0.0) == pytest.approx(108.0)
    assert eta_seconds(read_run(isolated_run_root / "later"), 0.0) == pytest.approx(60.0)
    assert eta_seconds(read_run(isolated_run_root / "later"), 100.0) == 0.0


@pytest.mark.slow
def test_live_run_served_by_a_real_flowctl_ui(tmp_path: Path, isolated_run_root: Path):
    """A real `flowctl ui` process serves a real training run while it writes to the root."""
    server, url = start_ui()
    trainer = None
    try:
        assert get_json(f"{url}/api/runs")["runs"] == []  # the root does not exist yet
        data = helpers.vectors_file(tmp_path, rows=6400)  # 90 steps per epoch
        trainer = spawn("train", "--dataset", data, "--epochs", "100", "--patience", "1000",
                        "--run-name", "live", *helpers.TINY)
        status_url, metrics_url = f"{url}/api/runs/live/status", f"{url}/api/runs/live/metrics"

        def status() -> dict:
            code, _, body = http_get(status_url)
            return json.loads(body) if code == 200 else {}

        wait_for(lambda: status().get("running") is True, process=trainer, timeout=120,
                 interval=0.05, what="the run to show as running")
        assert status()["current_epoch"] is not None, "progress from run.json's first write"
        first = get_json(metrics_url)
        wait_for(lambda: get_json(metrics_url)["last_step"] > max(first["last_step"], 0),
                 process=trainer, timeout=120, interval=0.05, what="metrics to grow")
        wait_for(lambda: len({row["step"] for row in get_json(metrics_url)["rows"]}) >= 3,
                 process=trainer, timeout=120, interval=0.05, what="three logged steps")
        grown = get_json(metrics_url)
        cut = sorted({row["step"] for row in grown["rows"]})[1]  # rows on both sides of it
        newer = get_json(f"{metrics_url}?since={cut}")["rows"]
        assert newer and all(row["step"] > cut for row in newer)
        assert newer[:len([r for r in grown["rows"] if r["step"] > cut])] == \
            [r for r in grown["rows"] if r["step"] > cut]

        def table_row() -> dict:
            return next(r for r in get_json(f"{url}/api/runs")["runs"] if r["folder"] == "live")

        # run.json holds progress from its first write (epoch 0), then every rewrite (2 s).
        assert table_row()["progress"] is not None
        wait_for(lambda: (table_row()["progress"] or 0) > 0, process=trainer, timeout=120,
                 interval=0.05, what="progress in the table")
        row = table_row()
        assert row["status"] == "running" and 0 < row["progress"] < 1

        wait_for(lambda: status().get("running") is False, timeout=300, interval=0.1,
                 what="the run to end")
        assert trainer.wait(timeout=60) == 0
        final = status()
        assert final["status"] == "finished"
        assert final["running"] is False and final["current_epoch"] == final["total_epochs"] == 100
        rows = get_json(metrics_url)["rows"]
        with open(isolated_run_root / "live" / "metrics.csv") as handle:
            assert [row["step"] for row in rows] == [int(line.split(",")[0]) for line in list(handle)[1:]]
        assert get_json(f"{metrics_url}?since={rows[-1]['step']}")["rows"] == []
        detail = get_json(f"{url}/api/runs/live")
        assert detail["run"]["progress"] == 1.0 and detail["run"]["eta_s"] is None
        assert final["global_step"] == rows[-1]["step"]
        best = detail["run_json"]["checkpoints"]["best"]
        assert detail["checkpoint"]["file"] == "best.pt"
        assert detail["checkpoint"]["global_step"] == best["global_step"] > 0
    finally:
        if trainer is not None:
            stop(trainer)
        assert stop(server) == 0
