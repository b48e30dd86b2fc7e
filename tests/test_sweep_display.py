"""How a sweep splits the machine, and what a person sees: the live table on a real
pseudo-terminal, plain lines off one, and `sweep status`'s table."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys

import pytest
import yaml

from study.runs.status import RunInfo
from study.sweep.display import eta_seconds, status_lines
from study.sweep.grid import load_grid
from study.sweep.resources import plan_slots, usable_cpus
from study.sweep.state import PointState
from tests.support.helpers import REPO_ROOT


def test_one_point_per_gpu_each_seeing_one_and_the_cores_split(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    slots = plan_slots(None)
    assert (slots.parallel, slots.gpus) == (2, ["3", "5"])
    assert slots.reason == "one point per GPU (2 visible)"
    assert slots.env_for(0)["CUDA_VISIBLE_DEVICES"] == "3" and slots.env_for(3)["CUDA_VISIBLE_DEVICES"] == "5"
    assert slots.env_for(1)["OMP_NUM_THREADS"] == str(max(1, usable_cpus() // 2))
    cpu_only = plan_slots(4, device="cpu")
    assert cpu_only.gpus == [] and "CUDA_VISIBLE_DEVICES" not in cpu_only.env_for(0)
    assert cpu_only.threads == max(1, usable_cpus() // 4)
    assert cpu_only.env_for(0)["FLOWCTL_CPU_SHARE"] == str(cpu_only.threads), (
        "a point must not count its neighbours' cores as spare")


def test_without_gpus_one_point_per_core_and_a_set_omp_num_threads_wins(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    slots = plan_slots(None)
    assert slots.gpus == [] and 1 <= slots.parallel <= usable_cpus()
    assert slots.reason.startswith("one point per CPU core")
    assert "OMP_NUM_THREADS" not in slots.env_for(0)


def point_state(tmp_path, state: str, **run) -> PointState:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"base": {"epochs": 10}, "grid": {"seed": [0]}}))
    point = load_grid(path).points[0]
    info = RunInfo(run_name=point.name, path=tmp_path, display_status=state, **run) if run else None
    return PointState(point=point, state=state, folder=tmp_path, run=info)


def test_eta_is_seconds_per_epoch_so_far_times_the_epochs_left(tmp_path):
    running = point_state(tmp_path, "running", epoch=4, total_epochs=10, elapsed_s=20.0)
    assert eta_seconds(running) == pytest.approx(30.0)
    assert eta_seconds(point_state(tmp_path, "finished", epoch=10, elapsed_s=50.0)) is None
    assert eta_seconds(point_state(tmp_path, "running", epoch=0, elapsed_s=1.0)) is None


def test_status_table_shows_errors_and_eval_metrics(tmp_path):
    failed = point_state(tmp_path, "failed")
    failed.error = "cannot read dataset /x.pt"
    done = point_state(tmp_path, "finished", epoch=10, total_epochs=10, best_val_loss=0.123456)
    done.eval = {"w2": 0.0421, "mmd": 0.0012}
    title, header, rule, *rows = status_lines([failed, done], "sweep g")
    assert title == "sweep g" and header.split("  ")[0].rstrip() == "point"
    assert set(rule) == {"-", " "}
    assert rows[0].endswith("cannot read dataset /x.pt") and " failed " in rows[0]
    for number in ("0.1235", "0.0421", "0.0012", "10/10"):
        assert number in rows[1]
    # aligned: every column starts at the same place in every row
    assert {row.index("failed") if "failed" in row else row.index("finished") for row in rows} \
        == {header.index("state")}


@pytest.mark.slow
def test_live_table_on_a_real_terminal(tmp_path, isolated_run_root):
    """A sweep under a pseudo-terminal draws the rich table (colours, no raw markup)."""
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"base": {"width": 16, "depth": 2, "epochs": 2},
                                    "grid": {"seed": [0]}}))
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "study.cli.app", "sweep", str(grid), "--wandb-mode", "disabled"],
        cwd=REPO_ROOT, stdin=follower, stdout=follower, stderr=follower,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"})
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            process.kill()
            raise AssertionError("no output from the sweep for 120 s")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the sweep exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=60) == 0
    output = b"".join(chunks).decode(errors="replace")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    assert "┃ point" in plain and "ETA" in plain and "1 point: 1 finished" in plain
    assert "\x1b[32mfinished" in output  # the state column is coloured
    assert "[green]" not in plain and "[/]" not in plain
