"""`flowctl eval`: score trained runs on held-out data (W2, MMD, NFE, path energy, NPE).

Each evaluated run gets `eval.json` in its folder, `eval/*` in the summary of its own
wandb run (same id) and, when it logged to MLflow, `eval/*` in its MLflow run. torch is imported inside the command: `flowctl --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from study.cli.common import CkptDir, Device, Last, resolve_checkpoint, user_errors

ROWS = (("w2", "W2"), ("w2_floor", "W2 floor"), ("mmd", "MMD²"), ("mmd_floor", "MMD² floor"),
        ("nfe", "NFE"), ("path_energy", "path energy"), ("npe", "NPE"),
        ("straightness", "straightness"), ("n", "samples"))


def eval_command(
    targets: list[str] = typer.Argument(..., help="A run name, run folder (its best.pt) or checkpoint file; several with --compare."),
    n: int = typer.Option(1000, "--n", help="Samples generated and held-out rows compared."),
    solver: str = typer.Option("euler", "--solver", help="euler | midpoint | rk4 | dopri5 (adaptive)."),
    steps: int = typer.Option(100, "--steps", help="Fixed solver steps (ignored by dopri5)."),
    seed: int = typer.Option(0, "--seed", help="Seed of x_0 and of the held-out subsets."),
    data: Path | None = typer.Option(None, "--data", help="Held-out vectors (.pt/.npy/.csv/.jsonl).  [default: the run's test split, else val]"),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object (a list with --compare)."),
    compare: bool = typer.Option(False, "--compare", help="Evaluate every RUN given, one column each: eval A --compare B C."),
    ckpt_dir: CkptDir = None,
    last: Last = False,
    device: Device = "auto",
) -> None:
    """Evaluate a run's best.pt: W2 and MMD² of n samples against n held-out rows (data units), the floor a perfect model would score, NFE, path energy, NPE and straightness.

    Writes eval.json in each run folder and adds eval/* to the run's wandb summary (offline unless $WANDB_MODE says otherwise; skipped for runs without wandb) and to its MLflow run when it used MLflow.

    Example: flowctl eval mlp-otcfm-moons-none --compare mlp-icfm-moons-none --solver rk4 --steps 20
    """
    with user_errors():
        from study.errors import UsageError
        from study.flow_matching.evaluate import check_generation_args

        check_generation_args(n=n, solver=solver, steps=steps)
        if len(targets) > 1 and not compare:
            raise UsageError(f"got {len(targets)} runs ({', '.join(targets)}); to evaluate several "
                             "side by side add --compare")
        records = [evaluate_run(target, n=n, solver=solver, steps=steps, seed=seed, data=data,
                                ckpt_dir=ckpt_dir, device=device, last=last) for target in targets]
    if json_output:
        typer.echo(json.dumps(records if compare else records[0], indent=2))
        return
    _render(records)


def evaluate_run(target: str, *, n: int, solver: str, steps: int, seed: int, data: Path | None,
                 ckpt_dir: str | None, device: str, last: bool = False) -> dict[str, Any]:
    """Evaluate one run, write its eval.json, log eval/* to its wandb (and MLflow) run;
    returns the record."""
    from study.cli.train import setup_logging
    from study.flow_matching import evaluate as ev
    from study.flow_matching.device import resolve_device
    from study.runs.mlflow_tracker import log_eval_to_mlflow

    torch_device = resolve_device(device)
    loaded = ev.load_flow_model(resolve_checkpoint(target, ckpt_dir, last=last), torch_device)
    rows, description = ev.heldout_data(loaded.config, data)
    result = ev.evaluate(loaded, rows, n=n, solver=solver, steps=steps, seed=seed,
                         device=torch_device)
    record = ev.eval_record(loaded, result, data=description, seed=seed)
    ev.write_eval_json(loaded.run_dir, record)
    setup_logging()  # a wandb failure is one "flowctl: wandb ... failed" line on stderr
    ev.log_eval_to_wandb(loaded.run_dir, loaded.wandb_run_id, loaded.wandb_project,
                         result.to_dict(), config=loaded.config)
    log_eval_to_mlflow(loaded.run_dir, result.to_dict(), checkpoint=str(loaded.path))
    return record


def _render(records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    caption = ("floor: the same metric between two disjoint n-row subsets of the held-out data, "
               "i.e. what a perfect model scores at this n. NPE = |PE - W2(x_0, data)²| / "
               "W2(x_0, data)² in the model's normalized space (0: optimal transport).")
    table = Table(title="evaluation", title_justify="left", caption=caption,
                  caption_justify="left", min_width=80)
    table.add_column("metric", style="bold")
    for record in records:
        table.add_column(_label(record), justify="right", overflow="fold")
    for key, label in ROWS:
        table.add_row(label, *(_cell(record.get(key)) for record in records))
    console = Console()
    console.print(table)
    for record in records:
        console.print(f"{_label(record)}: {record['solver']} x {record['steps']} steps, seed "
                      f"{record['seed']}; data: {record['data']}; wrote "
                      f"{Path(record['checkpoint']).parent / 'eval.json'}", highlight=False,
                      markup=False)


def _label(record: dict[str, Any]) -> str:
    """The run's name, plus the file when it is not the run's best.pt."""
    name = Path(record["checkpoint"]).name
    return record["run"] if name == "best.pt" else f"{record['run']}/{name}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
