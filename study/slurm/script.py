"""sbatch scripts for flowctl runs: one run (`flowctl slurm submit`) or a sweep's job array.

Every script runs `flowctl train --config CONFIG --resume auto --requeue-signal SIGUSR2`, so
a requeued job finds the same run folder, last.pt and wandb run and continues. The layout:

- one node, at most one GPU: `exec flowctl train ...`. exec makes flowctl the batch shell,
  so `--signal=B:USR2@120` (and `scancel --signal=USR2 --batch JOB`) reaches it directly.
- several GPUs or nodes: `srun` starts one torchrun per node, rendezvous (c10d) on the
  first host of the allocation; `--signal=USR2@120` (no B:) reaches every process of that
  step. torchrun itself ignores USR2 (`trap "" USR2` before exec: its default action would
  kill the workers mid-save); the workers install their own handler.
On the signal rank 0 saves and calls `scontrol requeue` (study.slurm.requeue) while
SLURM_RESTART_COUNT < FLOWCTL_MAX_REQUEUES. No torch.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from study.errors import UsageError
from study.install import SAFE_PATH_ENV

MAX_REQUEUES_ENV = "FLOWCTL_MAX_REQUEUES"
SCRIPT_ENV = "FLOWCTL_SBATCH_SCRIPT"  # the script itself: the command that continues a run
RDZV_PORT = 29500
SIGNAL_SPEC = re.compile(r"^(?:SIG)?([A-Z0-9]+)(?:@(\d+))?$")
TIME_SPEC = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$|^\d+-\d+$")


PARTITION_SPEC = re.compile(r"^[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*$")


def check_script_value(flag: str, value: str) -> str:
    """A value written into an #SBATCH line or a comment of a script cannot be shell-quoted
    (sbatch reads those lines itself), so it must hold no control character: a newline would
    end the directive and start a shell line. UsageError otherwise."""
    odd = next((c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if odd is not None:
        raise UsageError(f"{flag} {value!r} holds the control character {odd!r}, which would "
                         "break the sbatch script; remove it")
    return value


@dataclass
class SlurmOptions:
    """What `#SBATCH` lines a flowctl job gets. `gpus_per_node` 0: a CPU job."""

    job_name: str
    output: str  # Slurm's own log (%j: job id, %A_%a: array job and task)
    nodes: int = 1
    gpus_per_node: int = 0
    partition: str | None = None
    time: str | None = None
    signal: str = "USR2@120"  # the requeue signal and how long before the time limit
    max_requeues: int = 5

    def validate(self) -> SlurmOptions:
        if self.nodes < 1:
            raise UsageError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise UsageError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        if self.max_requeues < 0:
            raise UsageError(f"--max-requeues must be >= 0, got {self.max_requeues}")
        if self.time is not None and not TIME_SPEC.match(self.time):
            raise UsageError(f"--time {self.time!r} is not a Slurm time; use e.g. 30, 4:00:00 "
                             "or 1-12:00:00")
        signal_name(self.signal)
        if self.partition is not None and not PARTITION_SPEC.match(self.partition):
            raise UsageError(f"--partition {self.partition!r} is not a Slurm partition list; use "
                             "letters, digits, '_', '-', '.' (several: comma-separated)")
        for flag, value in (("--job-name", self.job_name), ("the log path", self.output)):
            check_script_value(flag, value)
        return self

    @property
    def distributed(self) -> bool:
        return self.nodes > 1 or self.gpus_per_node > 1


def signal_name(spec: str) -> str:
    """`USR2@120` or `SIGUSR2` -> `USR2`; UsageError for anything else."""
    match = SIGNAL_SPEC.match(spec.upper())
    if not match or match.group(1) in ("KILL", "STOP"):
        raise UsageError(f"--signal {spec!r} is not a catchable signal spec; use e.g. USR2@120 "
                         "(the signal, and seconds before the time limit)")
    return match.group(1)


def header(options: SlurmOptions, *, array: str | None = None) -> list[str]:
    """The #SBATCH lines: resources, the requeue signal, append-mode output, --requeue."""
    spec = options.signal.upper().removeprefix("SIG")
    lines = [f"--job-name={options.job_name}"]
    if array is not None:
        lines.append(f"--array={array}")
    lines += [f"--nodes={options.nodes}", "--ntasks-per-node=1"]
    if options.gpus_per_node:
        lines.append(f"--gpus-per-node={options.gpus_per_node}")
    if options.partition:
        lines.append(f"--partition={options.partition}")
    if options.time:
        lines.append(f"--time={options.time}")
    lines += [f"--output={options.output}", "--open-mode=append", "--requeue",
              f"--signal={spec}" if options.distributed else f"--signal=B:{spec}"]
    return [f"#SBATCH {line}" for line in lines]


def _environment(options: SlurmOptions, bin_dir: Path, script_path: Path | None) -> list[str]:
    lines = [f"export {MAX_REQUEUES_ENV}={options.max_requeues}",
             f"export PATH={shlex.quote(str(bin_dir))}:\"$PATH\"  # flowctl and torchrun of this venv",
             f"export {SAFE_PATH_ENV}=1  # no folder of the job's own can shadow flowctl (study.install)"]
    if script_path is not None:
        lines.append(f"export {SCRIPT_ENV}={shlex.quote(str(script_path))}")
    return lines


def launch_line(options: SlurmOptions, joined: str) -> list[str]:
    """The command that trains: `exec flowctl train ARGS`, or srun + torchrun (`joined`:
    the arguments, quoted for the shell)."""
    if not options.distributed:
        return [f"exec flowctl train {joined}"]
    gpus, name = max(options.gpus_per_node, 1), signal_name(options.signal)
    return [
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"# torchrun ignores {name} (its default action would kill the workers mid-save); the",
        "# workers install their own handler, and rank 0 requeues the job.",
        f"srun --kill-on-bad-exit=1 bash -c 'trap \"\" {name}; exec \"$@\"' torchrun \\",
        f"  torchrun --nnodes \"$SLURM_NNODES\" --nproc-per-node {gpus} "
        f"--rdzv-id \"$SLURM_JOB_ID\" --rdzv-backend c10d --rdzv-endpoint \"$head:{RDZV_PORT}\" \\",
        f"  -m study.cli.app train {joined}",
    ]


def render_run_script(options: SlurmOptions, *, args: list[str], bin_dir: Path,
                      workdir: Path, script_path: Path | None) -> str:
    """One run's sbatch script; `args` are `flowctl train`'s arguments (no `train`)."""
    options.validate()
    lines = ["#!/bin/bash", *header(options),
             f"# flowctl: run {options.job_name}. On {signal_name(options.signal)} it saves last.pt "
             "and requeues this job (at most",
             f"# {options.max_requeues} times); the requeued job continues the same run "
             "(--resume auto).",
             "set -euo pipefail", f"cd {shlex.quote(str(workdir))}",
             *_environment(options, bin_dir, script_path),
             'echo "flowctl: job $SLURM_JOB_ID on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"',
             *launch_line(options, shlex.join(args))]
    return "\n".join(lines) + "\n"


def render_array_script(options: SlurmOptions, *, config_paths: list[Path], args: list[str],
                        parallelism: int | None, bin_dir: Path, workdir: Path,
                        script_path: Path | None) -> str:
    """A sweep's job array: task i trains config_paths[i]; its output goes to the point's
    train.log. `args` follow `--config CONFIG` (flags shared by every point)."""
    options.validate()
    if not config_paths:
        raise UsageError("no points to submit")
    array = f"0-{len(config_paths) - 1}" + (f"%{parallelism}" if parallelism else "")
    listing = [f"  {shlex.quote(str(path))}" for path in config_paths]
    task = ['config=${CONFIGS[$SLURM_ARRAY_TASK_ID]}',
            'exec >>"$(dirname "$config")/train.log" 2>&1',
            'echo "==== flowctl sweep: slurm job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on '
            '$(hostname), restart ${SLURM_RESTART_COUNT:-0} ===="']
    lines = ["#!/bin/bash", *header(options, array=array),
             f"# flowctl sweep {options.job_name}: one array task per point; each continues its "
             "run (--resume auto)",
             f"# and requeues itself on {signal_name(options.signal)} (at most "
             f"{options.max_requeues} times).",
             "set -euo pipefail", f"cd {shlex.quote(str(workdir))}",
             *_environment(options, bin_dir, script_path),
             "CONFIGS=(", *listing, ")", *task,
             *launch_line(options, '--config "$config" ' + shlex.join(args))]
    return "\n".join(lines) + "\n"
