"""The requeue path: after a graceful stop on the requeue signal, rank 0 calls `scontrol
requeue` for its own job (or array task), capped by SLURM_RESTART_COUNT. The Slurm
environment variables are set by hand and `scontrol` is a stand-in on PATH that records its
arguments (the real scheduler: test_slurm_e2e.py, where the job is a fresh interpreter; the
trainer here is a real process forked from the zygote, tests/support/zygote.py)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from study.signals import TrainingStopped
from study.slurm.requeue import exit_code_after_stop
from tests.support.helpers import (
    TINY,
    assert_same_state,
    cli,
    load,
    run_json,
    vectors_file,
    wait_for,
)

OPTIONS = SimpleNamespace(requeue_signal="SIGUSR2", ckpt_dir="/runs")


def scontrol_stand_in(tmp_path: Path, exit_code: int = 0) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    tool = folder / "scontrol"
    tool.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.args'}\n"
                    f"[ {exit_code} -eq 0 ] || echo 'scontrol: error: Invalid job id' >&2\n"
                    f"exit {exit_code}\n")
    tool.chmod(0o755)
    return folder


def recorded(tmp_path: Path) -> list[str]:
    path = tmp_path / "scontrol.args"
    return path.read_text().splitlines() if path.exists() else []


def after_stop(env: dict, signum: int = signal.SIGUSR2, options=OPTIONS) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = exit_code_after_stop(TrainingStopped(signum), "run-a", options, env=env,
                                echo=lines.append)
    return code, lines


@pytest.mark.parametrize("env, job", [
    ({"SLURM_JOB_ID": "77"}, "77"),
    ({"SLURM_JOB_ID": "81", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3",
      "SLURM_RESTART_COUNT": "2"}, "70_3"),
])
def test_requeues_its_own_job_or_array_task(tmp_path, monkeypatch, env, job):
    monkeypatch.setenv("PATH", f"{scontrol_stand_in(tmp_path)}:/usr/bin:/bin")
    code, lines = after_stop(env)
    assert code == 128 + signal.SIGUSR2
    assert recorded(tmp_path) == [f"requeue {job}"]
    restart = int(env.get("SLURM_RESTART_COUNT", 0)) + 1
    assert lines == [f"requeueing job {job} (restart {restart} of at most 5); it continues run-a "
                     "from last.pt"]


@pytest.mark.parametrize("env, signum, rank", [
    ({}, signal.SIGUSR2, "0"),  # not under Slurm
    ({"SLURM_JOB_ID": "77"}, signal.SIGTERM, "0"),  # scancel / time limit: not a requeue
    ({"SLURM_JOB_ID": "77"}, signal.SIGUSR2, "1"),  # only rank 0 requeues
])
def test_no_requeue_outside_slurm_on_other_signals_or_other_ranks(tmp_path, monkeypatch, env,
                                                                 signum, rank):
    monkeypatch.setenv("PATH", f"{scontrol_stand_in(tmp_path)}:/usr/bin:/bin")
    monkeypatch.setenv("RANK", rank)
    code, lines = after_stop(env, signum)
    assert code == 128 + signum and lines == [] and recorded(tmp_path) == []


def test_past_the_cap_it_exits_143_and_prints_the_command_that_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{scontrol_stand_in(tmp_path)}:/usr/bin:/bin")
    code, lines = after_stop({"SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "3",
                              "FLOWCTL_MAX_REQUEUES": "3", "SLURM_ARRAY_TASK_ID": "4",
                              "SLURM_ARRAY_JOB_ID": "8", "FLOWCTL_SBATCH_SCRIPT": "/s/a b.sbatch"})
    assert code == 143 and recorded(tmp_path) == []
    assert lines == ["not requeueing job 8_4: it was requeued 3 times (limit 3, "
                     "FLOWCTL_MAX_REQUEUES); continue with: sbatch --array=4 '/s/a b.sbatch'"]


def test_without_scontrol_it_exits_143_and_prints_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    code, lines = after_stop({"SLURM_JOB_ID": "77"})
    assert code == 143
    assert lines == ["scontrol not found: job 77 cannot requeue itself; continue with: "
                     "flowctl resume run-a --ckpt-dir /runs"]


def test_a_failing_scontrol_exits_143_with_its_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{scontrol_stand_in(tmp_path, exit_code=1)}:/usr/bin:/bin")
    code, lines = after_stop({"SLURM_JOB_ID": "77"})
    assert code == 143 and recorded(tmp_path) == ["requeue 77"]
    assert lines[0].startswith("requeueing job 77 (restart 1 of at most 5)")
    assert "scontrol requeue 77 failed: scontrol: error: Invalid job id" in lines[1]


@pytest.mark.slow
def test_a_real_trainer_saves_requeues_and_the_requeued_job_continues_exactly(tmp_path,
                                                                            isolated_run_root,
                                                                            flowctl):
    data = vectors_file(tmp_path)
    args = ["--dataset", data, "--epochs", "40", "--patience", "0", *TINY]
    reference = cli("train", "--run-name", "a", *args)
    assert reference.exit_code == 0, reference.stderr
    path = f"{scontrol_stand_in(tmp_path)}:/usr/bin:/bin"
    slurm = {"PATH": path, "SLURM_JOB_ID": "5150", "FLOWCTL_MAX_REQUEUES": "2"}
    command = ["train", "--run-name", "b", *args, "--resume", "auto", "--requeue-signal", "SIGUSR2"]
    job = flowctl(*command, env=slurm)
    wait_for((isolated_run_root / "b" / "last.pt").exists, process=job, what="the first last.pt")
    job.send_signal(signal.SIGUSR2)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGUSR2, err
    assert recorded(tmp_path) == ["requeue 5150"]
    assert err.strip().endswith("requeueing job 5150 (restart 1 of at most 2); it continues b from last.pt")
    assert run_json(isolated_run_root / "b")["status"] == "preempted"
    stopped_at = load(isolated_run_root / "b" / "last.pt")["global_step"]

    requeued = flowctl(*command, env={**slurm, "SLURM_RESTART_COUNT": "1"})  # what Slurm reruns
    out, err = requeued.communicate(timeout=120)
    assert requeued.returncode == 0, err
    assert f"training b: step {stopped_at}/" in out
    assert recorded(tmp_path) == ["requeue 5150"]  # finished: no second requeue
    assert_same_state(load(isolated_run_root / "a" / "last.pt"), load(isolated_run_root / "b" / "last.pt"))
    assert run_json(isolated_run_root / "b")["status"] == "finished"
