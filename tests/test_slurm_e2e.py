"""End to end on a real one-node Slurm (slurmctld + slurmd + munged; `.ci/start_slurm.sh`):
`flowctl slurm submit` a small 2-D run, send the requeue signal with `scancel --signal`,
and check that the job requeues itself, runs again with SLURM_RESTART_COUNT=1 and ends in
the same state as a run that was never interrupted. Needs a running Slurm: skipped without
one, an error in CI (tests/support/real_services.py)."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import yaml

from tests.support.helpers import assert_same_state, cli, load, metrics_rows, run_json, vectors_file

pytestmark = [pytest.mark.slow, pytest.mark.real_service("slurm")]
JOB_TIMEOUT_S = 300


def job_fields(job: str) -> dict[str, str]:
    """`scontrol show job -o JOB` as a dict (JobState, Restarts, Reason, ...)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                         timeout=20).stdout
    return dict(token.split("=", 1) for token in out.split() if "=" in token)


def wait_until(condition, what: str, job: str, timeout: float = JOB_TIMEOUT_S) -> None:
    """Poll `condition()` (scheduler calls are not free: every 0.2 s) until true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; job: {job_fields(job)}")
        time.sleep(0.2)


def test_requeue_signal_requeues_the_job_which_finishes_like_an_uninterrupted_run(tmp_path):
    data = vectors_file(tmp_path)
    # 300 epochs of 9 steps (~5 s): the signal, sent once the first last.pt exists, lands
    # well before the end even on a loaded machine.
    settings = {"dataset": str(data), "epochs": 300, "patience": 0, "checkpoint_interval": 0,
                "batch_size": 64,
                "width": 16, "depth": 2, "warmup_steps": 5, "run_name": "slurm-e2e"}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    root = tmp_path / "ckpt"
    submitted = cli("slurm", "submit", config, "--ckpt-dir", root, "--wandb-mode", "disabled",
                    "--max-requeues", "2", "--json")
    assert submitted.exit_code == 0, submitted.stderr
    job = json.loads(submitted.stdout)["job_id"]
    run = root / "slurm-e2e"
    try:
        wait_until((run / "last.pt").exists, "the job's first last.pt", job)
        subprocess.run(["scancel", "--signal=USR2", "--batch", job], check=True, timeout=20)
        wait_until(lambda: job_fields(job).get("Restarts") == "1", "the requeue", job)
        # Slurm starts a requeued job once its last credential expired (AuthInfo cred_expire:
        # 120 s by default, 5 s in .ci/start_slurm.sh, which also runs backfill every second).
        wait_until(lambda: job_fields(job).get("JobState") == "COMPLETED", "the job's end", job)
    finally:
        if job_fields(job).get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED"):
            subprocess.run(["scancel", job], timeout=20)
    log = (run / f"slurm-{job}.out").read_text()
    assert f"flowctl: job {job} on" in log and "restart 0" in log and "restart 1" in log
    assert "slurm-e2e: stopped by SIGUSR2; last.pt is saved" in log
    # Said before `scontrol requeue` (which makes Slurm cancel this very process: a line
    # printed after it was once lost under load).
    assert f"requeueing job {job} (restart 1 of at most 2)" in log
    starts = [int(s) for s in re.findall(r"^training slurm-e2e: step (\d+)/", log, re.M)]
    assert len(starts) == 2 and starts[0] == 0 < starts[1]  # the requeued job continued
    assert run_json(run)["status"] == "finished"

    reference_root = tmp_path / "reference"
    uninterrupted = cli("train", "--config", config, "--ckpt-dir", reference_root,
                        "--wandb-mode", "disabled", "--plain")
    assert uninterrupted.exit_code == 0, uninterrupted.stderr
    reference = reference_root / "slurm-e2e"
    assert_same_state(load(reference / "last.pt"), load(run / "last.pt"))
    assert_same_state(load(reference / "best.pt"), load(run / "best.pt"))
    assert metrics_rows(reference) == metrics_rows(run)


def test_a_rerun_of_a_slurm_sweep_never_submits_a_point_twice(tmp_path):
    """While a point's array task is queued or running, re-running the sweep leaves it alone;
    once Slurm no longer has it (cancelled here), the next re-run submits it again."""
    data = vectors_file(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({  # long runs: they stay queued or running until cancelled
        "group": "twice", "base": {"dataset": str(data), "epochs": 100000, "batch_size": 64,
                                   "width": 16, "depth": 2, "checkpoint_interval": 0},
        "grid": {"seed": [0, 1]}}))
    root = tmp_path / "ckpt"
    args = ["sweep", grid, "--launcher", "slurm", "--ckpt-dir", root, "--wandb-mode", "disabled"]
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    job = re.search(r"submitted job array (\d+): 2 points", first.stdout).group(1)
    try:
        again = cli(*args)
        assert again.exit_code == 0, again.stderr
        assert "submitted job array" not in again.stdout
        for seed in (0, 1):
            assert (f"mlp-icfm-vectors-640x2-none-s{seed}: still queued or running as Slurm job "
                    f"{job}_{seed}; not submitted again") in again.stdout
    finally:
        subprocess.run(["scancel", job], timeout=20)
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-r", "-j", job], capture_output=True,
                                          text=True, timeout=20).stdout.strip(),
               "the cancelled array to leave the queue", job)
    third = cli(*args)
    assert third.exit_code == 0, third.stderr
    assert re.search(r"submitted job array (\d+): 2 points", third.stdout), third.stdout
    subprocess.run(["scancel", re.search(r"array (\d+)", third.stdout).group(1)], timeout=20)
