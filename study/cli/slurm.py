"""`flowctl slurm submit CONFIG`: one run as a Slurm job that requeues itself on preemption.

The script (`{run}/slurm.sbatch`) runs `flowctl train --config CONFIG --resume auto
--requeue-signal SIGUSR2`; on the signal the run saves last.pt and calls `scontrol requeue`
for its own job, and the requeued job continues the same run folder, checkpoint and wandb
run. No torch: the job imports it, not the submitter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from study.cli.common import CkptDir, WandbMode, user_errors

slurm_app = typer.Typer(
    no_args_is_help=True,
    help="Run flowctl on Slurm: batch scripts that save and requeue themselves when preempted.\n\n"
         "Example: flowctl slurm submit runs/big.yaml --gpus-per-node 1 --time 4:00:00")


@slurm_app.command("submit")
def submit(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML file of TrainingConfig keys."),
    nodes: int = typer.Option(1, "--nodes", help="Nodes; more than one trains with torchrun across them."),
    gpus_per_node: int = typer.Option(0, "--gpus-per-node", help="GPUs per node (0: a CPU job); more than one trains with torchrun."),
    partition: str | None = typer.Option(None, "--partition", help="Slurm partition.  [default: the cluster's]"),
    time: str | None = typer.Option(None, "--time", help="Time limit, e.g. 4:00:00.  [default: the partition's]"),
    signal: str = typer.Option("USR2@120", "--signal", help="Requeue signal @ seconds before the time limit."),
    max_requeues: int = typer.Option(5, "--max-requeues", help="How often the job may requeue itself (SLURM_RESTART_COUNT)."),
    job_name: str | None = typer.Option(None, "--job-name", help="[default: the run name]"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the sbatch script; write and submit nothing."),
    json_output: bool = typer.Option(False, "--json", help="Print the job id, run and paths as JSON."),
    ckpt_dir: CkptDir = None,
    wandb_mode: WandbMode = None,
    wandb_project: str | None = typer.Option(None, "--wandb-project"),
) -> None:
    """Write an sbatch script for CONFIG's run (in its run folder) and submit it.

    Example: flowctl slurm submit runs/big.yaml --gpus-per-node 1 --time 4:00:00 --dry-run
    """
    from study.flow_matching.config_load import load_config
    from study.runs.paths import checkpoint_root
    from study.slurm.script import SlurmOptions, render_run_script, signal_name
    from study.slurm.submit import submit as sbatch_submit
    from study.slurm.submit import write_script

    with user_errors():
        training = load_config(config)
        root = checkpoint_root(ckpt_dir).absolute()
        folder = root / training.name
        script_path = folder / "slurm.sbatch"
        options = SlurmOptions(job_name=job_name or training.name,
                               output=str(folder / "slurm-%j.out"), nodes=nodes,
                               gpus_per_node=gpus_per_node, partition=partition, time=time,
                               signal=signal, max_requeues=max_requeues).validate()
        args = ["--config", str(config.absolute()), "--resume", "auto",
                "--requeue-signal", f"SIG{signal_name(signal)}", "--plain", "--ckpt-dir", str(root)]
        for flag, value in (("--wandb-mode", wandb_mode), ("--wandb-project", wandb_project)):
            if value is not None:
                args += [flag, value]
        text = render_run_script(options, args=args, bin_dir=Path(sys.executable).parent,
                                 workdir=Path.cwd(), script_path=script_path)
        if dry_run:
            typer.echo(text, nl=False)
            return
        write_script(script_path, text)
        job_id = sbatch_submit(script_path)
    log = folder / f"slurm-{job_id}.out"
    if json_output:
        typer.echo(json.dumps({"job_id": job_id, "run": training.name, "run_dir": str(folder),
                               "script": str(script_path), "log": str(log)}, indent=2))
    else:
        typer.echo(f"submitted job {job_id}: run {training.name} (script {script_path}, "
                   f"log {log}); follow with `flowctl list-runs`")
