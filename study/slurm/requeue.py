"""What a run does after a graceful stop under Slurm: requeue its own job, or say how to continue.

`flowctl train` calls `exit_code_after_stop` when the trainer stopped on a signal (last.pt
is written, run.json says `preempted`, the run lock is released). If the signal was the
run's `--requeue-signal`, this is the main process, and the job runs under Slurm, it calls
`scontrol requeue JOB` (the array task `A_T` in a job array) as its very last act, while
SLURM_RESTART_COUNT < FLOWCTL_MAX_REQUEUES (default 5). The requeued job runs the same
script, whose `--resume auto` continues the same run folder, checkpoint and wandb run.
Without scontrol, past the cap, or when scontrol fails, it exits 143 and prints the exact
command that continues the run. No torch.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

from study.signals import TrainingStopped, parse_signal
from study.slurm.script import MAX_REQUEUES_ENV, SCRIPT_ENV

DEFAULT_MAX_REQUEUES = 5
EXIT_NOT_REQUEUED = 143  # as if terminated: the scheduler and the user see a stopped run
SCONTROL_TIMEOUT_S = 60


def slurm_job_id(env: Mapping[str, str]) -> str | None:
    """The id `scontrol requeue` takes for this job: `A_T` for an array task, else the job id."""
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return env.get("SLURM_JOB_ID") or None


def continue_command(run_name: str, ckpt_dir: str | None, env: Mapping[str, str]) -> str:
    """The one command that continues this run: resubmit its script (only this array task),
    else `flowctl resume RUN`."""
    script = env.get(SCRIPT_ENV)
    if script:
        task = env.get("SLURM_ARRAY_TASK_ID")
        return shlex.join(["sbatch", *([f"--array={task}"] if task else []), script])
    root = ["--ckpt-dir", os.path.abspath(ckpt_dir)] if ckpt_dir else []
    return shlex.join(["flowctl", "resume", run_name, *root])


def exit_code_after_stop(stopped: TrainingStopped, run_name: str, options: Any, *,
                         env: Mapping[str, str] | None = None,
                         echo: Callable[[str], None] | None = None) -> int:
    """Requeue the Slurm job if this stop calls for it; the exit code to leave with.
    `options`: the run's launch.RunOptions (its requeue_signal and ckpt_dir)."""
    from study.runtime.ranks import is_main_process

    requeue_signal, ckpt_dir = options.requeue_signal, options.ckpt_dir
    env = os.environ if env is None else env
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    job = slurm_job_id(env)
    if (job is None or not requeue_signal or stopped.signum not in parse_signal(requeue_signal)
            or not is_main_process()):
        return stopped.exit_code
    restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    limit = int(env.get(MAX_REQUEUES_ENV) or DEFAULT_MAX_REQUEUES)
    again = continue_command(run_name, ckpt_dir, env)
    if restarts >= limit:
        echo(f"not requeueing job {job}: it was requeued {restarts} times (limit {limit}, "
             f"{MAX_REQUEUES_ENV}); continue with: {again}")
        return EXIT_NOT_REQUEUED
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        echo(f"scontrol not found: job {job} cannot requeue itself; continue with: {again}")
        return EXIT_NOT_REQUEUED
    # Said before scontrol runs: once the requeue is accepted Slurm cancels this job's
    # processes, this one included, so a line printed after it may never be written.
    echo(f"requeueing job {job} (restart {restarts + 1} of at most {limit}); it continues "
         f"{run_name} from last.pt")
    try:
        result = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True,
                                timeout=SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        echo(f"scontrol requeue {job} failed ({error}); continue with: {again}")
        return EXIT_NOT_REQUEUED
    if result.returncode != 0:
        message = " ".join((result.stderr or result.stdout).split()) or f"exit {result.returncode}"
        echo(f"scontrol requeue {job} failed: {message}; continue with: {again}")
        return EXIT_NOT_REQUEUED
    return stopped.exit_code
