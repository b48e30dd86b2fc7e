"""`flowctl sweep GRID.yaml`: train every point of a grid exactly once; `flowctl sweep status`.

`sweep` is a command group whose default command is `run`, so `flowctl sweep GRID.yaml` and
`flowctl sweep status GRID.yaml` both read as written. Imports neither torch nor wandb: the
points train in child processes (or on Slurm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from study.cli.common import EXIT_FAILED, CkptDir, Plain, WandbMode, fail, user_errors
from study.sweep.state import PointState

LAUNCHERS = ("local", "print", "slurm")
GridFile = Annotated[Path, typer.Argument(metavar="GRID.yaml", help="The grid file.")]


class DefaultToRun(TyperGroup):
    """A group whose first argument, when it names no subcommand, goes to `run`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


sweep_app = typer.Typer(
    cls=DefaultToRun, no_args_is_help=True,
    help="Train a grid of runs (an ablation) exactly once each; `sweep status` shows it.\n\n"
         "Example: flowctl sweep examples/study_small.yaml --parallel 2")


@sweep_app.command("run")
def run(
    grid_file: GridFile,
    parallel: int | None = typer.Option(None, "--parallel", "-j", help="Points at once.  [default: one per GPU, else one per CPU core (memory permitting)]"),
    launcher: str = typer.Option("local", "--launcher", help="local (child processes) | print (one command per point) | slurm (one job array)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also re-run the points whose last attempt failed."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would run (slurm: the sbatch script) and change nothing."),
    ckpt_dir: CkptDir = None,
    wandb_mode: WandbMode = None,
    wandb_project: str | None = typer.Option(None, "--wandb-project"),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda, for every point."),
    plain: Plain = False,
    partition: str | None = typer.Option(None, "--partition", help="slurm: partition."),
    time: str | None = typer.Option(None, "--time", help="slurm: time limit per point, e.g. 4:00:00."),
    gpus: int = typer.Option(0, "--gpus", help="slurm: GPUs per point."),
    array_parallelism: int | None = typer.Option(None, "--array-parallelism", help="slurm: array tasks at once.  [default: --parallel, else no limit]"),
    signal: str = typer.Option("USR2@120", "--signal", help="slurm: requeue signal @ seconds before the time limit."),
    max_requeues: int = typer.Option(5, "--max-requeues", help="slurm: requeues per point."),
) -> None:
    """Train every point of GRID.yaml that is not done; run it again to continue.

    Finished points are skipped, preempted and crashed ones resumed, failed ones re-run only with --retry-failed. Exit 1 names the points that failed.

    Example: flowctl sweep run examples/study_small.yaml --parallel 2  (`run` may be left out)
    """
    from study.sweep.commands import TrainFlags

    if launcher not in LAUNCHERS:
        raise fail(f"unknown --launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    if parallel is not None and parallel < 1:
        raise fail(f"--parallel must be at least 1, got {parallel}")
    flags = TrainFlags(ckpt_dir=ckpt_dir, wandb_mode=wandb_mode, wandb_project=wandb_project,
                       device=device)
    with user_errors():
        grid, states = _load(grid_file, ckpt_dir)
        todo = [s for s in states if _action(s, retry_failed) in ("start", "resume", "retry")]
        if launcher == "print":
            _print_commands(todo, flags)
        elif launcher == "slurm":
            from study.slurm.script import SlurmOptions

            options = SlurmOptions(job_name=grid.group, output="", gpus_per_node=gpus,
                                   partition=partition, time=time, signal=signal,
                                   max_requeues=max_requeues).validate()
            _submit_slurm(grid, todo, flags, options, array_parallelism or parallel, dry_run)
        else:
            _run_local(grid, states, flags, parallel=parallel, retry_failed=retry_failed,
                       dry_run=dry_run, plain=plain)


def _load(grid_file: Path, ckpt_dir: str | None):
    """The grid and its points' states; a point whose run holds another config is refused."""
    from study.errors import UsageError
    from study.sweep.grid import load_grid
    from study.sweep.state import read_states

    grid = load_grid(grid_file)
    states = read_states(grid.points, ckpt_dir)
    for state in states:
        if state.conflict:
            raise UsageError(f"point {state.point.name}: its run folder {state.folder} holds "
                             f"another config ({state.conflict}); change the grid's `name:` or "
                             "move that run folder away")
    return grid, states


def _action(state: PointState, retry_failed: bool) -> str:
    if state.done:
        return "skip"
    if state.state == "running":
        return "wait"
    if state.state == "failed":
        return "retry" if retry_failed else "failed"
    return "start" if state.state == "pending" else "resume"


def _print_commands(todo: list[PointState], flags) -> None:
    """One `flowctl train ... key=value...` line per point left to do; writes nothing."""
    from study.sweep.commands import point_command

    if todo:  # one write: 10,000 lines in a few ms
        typer.echo("\n".join(point_command(state.point, flags) for state in todo))


def _submit_slurm(grid, todo: list[PointState], flags, options, parallelism, dry_run) -> None:
    from study.slurm.submit import live_jobs
    from study.sweep.point_files import read_record
    from study.sweep.slurm_array import array_script, submit_array

    submitted = {state.point.name: _submitted_job(read_record(state.folder)) for state in todo}
    queued = live_jobs() if any(submitted.values()) else set()
    for state in todo:
        if submitted[state.point.name] in queued:  # a re-run: never submit a point twice
            typer.echo(f"{state.point.name}: still queued or running as Slurm job "
                       f"{submitted[state.point.name]}; not submitted again")
    todo = [state for state in todo if submitted[state.point.name] not in queued]
    if not todo:
        typer.echo(f"nothing to submit: every point of {grid.group} is done, running or failed")
        return
    points = [state.point for state in todo]
    if dry_run:
        typer.echo(array_script(grid, points, flags, options, parallelism)[1], nl=False)
        return
    job_id, script = submit_array(grid, points, flags, options, parallelism)
    typer.echo(f"submitted job array {job_id}: {len(points)} points of {grid.group} "
               f"(script {script}); follow with `flowctl sweep status {grid.path}`")


def _submitted_job(record: dict) -> str | None:
    """The Slurm job (`1234_5`) sweep.json says a point was submitted as, if any."""
    submitted = record.get("submitted")
    job = submitted.get("job") if isinstance(submitted, dict) else None
    return job if isinstance(job, str) else None


def _run_local(grid, states, flags, *, parallel, retry_failed, dry_run, plain) -> None:
    from study.sweep.display import SweepDisplay
    from study.sweep.local import LocalLauncher
    from study.sweep.resources import plan_slots
    from study.sweep.state import read_states, summary_line

    slots = plan_slots(parallel, device=flags.device or "auto")
    typer.echo(f"sweep {grid.group}: {len(states)} points, {slots.parallel} at a time "
               f"({slots.reason}), {slots.threads} thread(s) each")
    if dry_run:
        for state in states:
            why = state.error or state.detail or state.state
            typer.echo(f"  {_action(state, retry_failed):7} {state.point.name}  ({why})")
        return
    display = SweepDisplay(plain=plain, title=f"sweep {grid.group}")
    stopped_by = LocalLauncher(grid, states, slots, flags, retry_failed=retry_failed,
                               display=display).run()
    final = read_states(grid.points, flags.ckpt_dir)
    typer.echo(summary_line(final))
    if stopped_by is not None:
        import signal as signals

        raise fail(f"sweep stopped by {signals.Signals(stopped_by).name}; run the same command "
                   "to continue the preempted points", 128 + stopped_by)
    failed = [s.point.name for s in final if s.state == "failed"]
    unfinished = [s.point.name for s in final if not s.done and s.state != "failed"]
    if failed:
        raise fail(f"{len(failed)} of {len(final)} points failed: {', '.join(failed)}; see "
                   f"`flowctl sweep status {grid.path}`, fix, then re-run with --retry-failed",
                   EXIT_FAILED)
    if unfinished:
        raise fail(f"{len(unfinished)} points did not finish: {', '.join(unfinished)}; run the "
                   "same command to continue them", EXIT_FAILED)


@sweep_app.command("status")
def status(
    grid_file: GridFile,
    ckpt_dir: CkptDir = None,
    json_output: bool = typer.Option(False, "--json", help="Print JSON (points and counts), for scripts."),
) -> None:
    """Each point's state, best val loss, eval metrics and error, and a summary line.

    Example: flowctl sweep status examples/study_small.yaml --json
    """
    from study.sweep.display import status_lines
    from study.sweep.grid import load_grid
    from study.sweep.state import read_states, summary_line

    with user_errors():
        grid = load_grid(grid_file)
        states = read_states(grid.points, ckpt_dir)
    if json_output:
        counts: dict[str, int] = {}
        for state in states:
            counts[state.state] = counts.get(state.state, 0) + 1
        typer.echo(json.dumps({"grid": str(grid_file), "group": grid.group,
                               "summary": summary_line(states), "counts": counts,
                               "points": [state.to_json() for state in states]}, indent=2))
        return
    typer.echo("\n".join([*status_lines(states, f"sweep {grid.group}"), summary_line(states)]))
