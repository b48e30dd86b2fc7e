"""The `slurm` launcher: one Slurm job array, one task per pending point. No torch.

The script lives in `{root}/.sweeps/{group}/` (a dot folder: `list-runs` skips it), named
by the points it trains, and each task appends to its point's `train.log`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

from study.runs.lock import utc_now
from study.runs.paths import check_run_name, checkpoint_root
from study.slurm.script import SlurmOptions, render_array_script, signal_name
from study.slurm.submit import submit, write_script
from study.sweep.commands import TrainFlags, point_config_path
from study.sweep.grid import Grid, Point
from study.sweep.point_files import update_record, write_point_config

SWEEPS_FOLDER = ".sweeps"


def sweep_folder(grid: Grid, ckpt_dir: str | None) -> Path:
    """{root}/.sweeps/{group}: the group must be one folder name (`../x` would leave the root)."""
    check_run_name(grid.group, what=f"the group of {grid.path}")
    return checkpoint_root(ckpt_dir).absolute() / SWEEPS_FOLDER / grid.group


def array_script(grid: Grid, points: list[Point], flags: TrainFlags, options: SlurmOptions,
                 parallelism: int | None) -> tuple[Path, str]:
    """(where the script goes, its text) for `points`."""
    folder = sweep_folder(grid, flags.ckpt_dir)
    configs = [point_config_path(point, flags.ckpt_dir) for point in points]
    digest = hashlib.sha256("\n".join(map(str, configs)).encode()).hexdigest()[:8]
    script_path = folder / f"array-{digest}.sbatch"
    options = dataclasses.replace(options, output=str(folder / "slurm-%A_%a.out"))
    # A task must find the same root wherever it starts, and stop on the requeue signal.
    task_flags = dataclasses.replace(
        flags, ckpt_dir=str(checkpoint_root(flags.ckpt_dir).absolute()),
        requeue_signal=f"SIG{signal_name(options.signal)}")
    text = render_array_script(options, config_paths=configs, args=["--resume", "auto", "--plain",
                               *task_flags.args()], parallelism=parallelism,
                               bin_dir=Path(sys.executable).parent, workdir=Path.cwd(),
                               script_path=script_path)
    return script_path, text


def submit_array(grid: Grid, points: list[Point], flags: TrainFlags, options: SlurmOptions,
                 parallelism: int | None) -> tuple[str, Path]:
    """Write the points' configs and the script, submit it; (array job id, script path)."""
    script_path, text = array_script(grid, points, flags, options, parallelism)
    for point in points:
        write_point_config(point_config_path(point, flags.ckpt_dir).parent, point)
    write_script(script_path, text)
    job_id = submit(script_path)
    for index, point in enumerate(points):
        update_record(point_config_path(point, flags.ckpt_dir).parent,
                      grid=str(grid.path.absolute()), group=grid.group,
                      config_hash=point.config_hash, launcher="slurm",
                      submitted={"job": f"{job_id}_{index}", "at": utc_now()})
    return job_id, script_path
