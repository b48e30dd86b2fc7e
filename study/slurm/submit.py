"""Hand a script to `sbatch` and read back the job id. No torch."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from study.errors import RunFailed, UsageError
from study.runs.checkpoint import write_atomic

SBATCH_TIMEOUT_S = 120


def write_script(path: Path, text: str) -> Path:
    """Write an sbatch script (atomically, executable) and return its path."""
    def executable(handle) -> None:
        handle.write(text.encode())
        os.fchmod(handle.fileno(), 0o755)

    write_atomic(path, executable)
    return path


def submit(script: Path) -> str:
    """`sbatch --parsable SCRIPT` -> the job id (`1234`, or `1234` for an array job).

    UsageError when sbatch is missing (the fix: submit the script from a login node);
    RunFailed with sbatch's own message when it refuses the job.
    """
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UsageError(f"sbatch not found on PATH; the script is {script}: submit it where "
                         "Slurm is installed with `sbatch " + str(script) + "`")
    try:
        result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True,
                                text=True, timeout=SBATCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"sbatch did not answer within {SBATCH_TIMEOUT_S}s; is slurmctld up? "
                        "(try `sinfo`)") from None
    if result.returncode != 0:
        message = " ".join((result.stderr or result.stdout).split()) or f"exit {result.returncode}"
        raise RunFailed(f"sbatch refused {script}: {message}")
    # --parsable prints "jobid" or "jobid;cluster"
    job_id = result.stdout.strip().splitlines()[-1].split(";")[0] if result.stdout.strip() else ""
    if not job_id:
        raise RunFailed(f"sbatch accepted {script} but printed no job id")
    return job_id


# squeue states of a job that may still run (or is running): never submit its work again.
LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
               "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}


def live_jobs() -> set[str]:
    """The ids (`1234`, array tasks as `1234_5`) of this user's jobs Slurm still has queued,
    running or requeued (`squeue -r`). Empty where there is no squeue; UsageError when Slurm
    does not answer (the caller cannot tell what would be submitted twice)."""
    import getpass

    squeue = shutil.which("squeue")
    if squeue is None:
        return set()
    try:
        result = subprocess.run([squeue, "-h", "-r", "-u", getpass.getuser(), "-o", "%i %T"],
                                capture_output=True, text=True, timeout=SBATCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        result = None
    if result is None or result.returncode != 0:
        why = "did not answer" if result is None else " ".join(result.stderr.split())
        raise UsageError(f"squeue {why}: cannot tell which points are still queued, so nothing "
                         "was submitted; try again when `squeue` works")
    return {job for job, state in (line.split()[:2] for line in result.stdout.splitlines()
                                   if len(line.split()) >= 2) if state in LIVE_STATES}
