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
        ("straightness", "straightness"), ("n", "samples"), ("draws", "draws"))
VERDICT_ROWS = (("w2", "W2"), ("mmd", "MMD²"))  # --compare: each run against the first


def eval_command(
    targets: list[str] = typer.Argument(..., help="A run name, run folder (its best.pt) or checkpoint file; several with --compare."),
    n: int = typer.Option(1000, "--n", help="Samples generated and held-out rows compared."),
    solver: str = typer.Option("euler", "--solver", help="euler | midpoint | rk4 | dopri5 (adaptive)."),
    steps: int = typer.Option(100, "--steps", help="Fixed solver steps (ignored by dopri5)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first draw's x_0 and held-out subset (draw i: seed + i)."),
    draws: int = typer.Option(5, "--draws", help="Independent draws of x_0 and of the held-out subset; W2 and MMD² are reported as mean ± std over them."),
    data: Path | None = typer.Option(None, "--data", help="Held-out vectors (.pt/.npy/.csv/.jsonl).  [default: the run's test split, else val]"),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object (a list with --compare)."),
    compare: bool = typer.Option(False, "--compare", help="Evaluate every RUN given, one column each: eval A --compare B C."),
    ckpt_dir: CkptDir = None,
    last: Last = False,
    device: Device = "auto",
) -> None:
    """Evaluate a run's best.pt: W2 and MMD² of n samples against n held-out rows (data units), the floor a perfect model would score, NFE, path energy, NPE and straightness.

    Each metric is the mean over --draws independent draws (x_0 and held-out rows), with the std of W2, MMD² and their floors; eval.json keeps every draw. With --compare, each run after the first is "better" or "worse" than the first only when the gap between the means exceeds the larger of the two stds, else "within spread".

    Writes eval.json in each run folder and adds eval/* to the run's wandb summary (offline unless $WANDB_MODE says otherwise; skipped for runs without wandb) and to its MLflow run when it used MLflow.

    Example: flowctl eval mlp-otcfm-moons-none --compare mlp-icfm-moons-none --solver rk4 --steps 20
    """
    with user_errors():
        from study.errors import UsageError
        from study.flow_matching.eval_draws import check_draws
        from study.flow_matching.evaluate import check_generation_args

        check_generation_args(n=n, solver=solver, steps=steps)
        check_draws(draws)
        if len(targets) > 1 and not compare:
            raise UsageError(f"got {len(targets)} runs ({', '.join(targets)}); to evaluate several "
                             "side by side add --compare")
        records = [evaluate_run(target, n=n, solver=solver, steps=steps, seed=seed, data=data,
                                ckpt_dir=ckpt_dir, device=device, last=last, draws=draws)
                   for target in targets]
    if compare:
        records = [records[0], *(with_verdicts(record, records[0]) for record in records[1:])]
    if json_output:
        typer.echo(json.dumps(records if compare else records[0], indent=2))
        return
    _render(records)


def with_verdicts(record: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """`record` plus "compared_with": {"run": the reference's label, "w2": verdict,
    "mmd": verdict}, each verdict `spread_verdict`'s (better | worse | within spread)."""
    from study.flow_matching.eval_draws import spread_verdict

    verdicts = {key: spread_verdict(reference, record, key) for key, _ in VERDICT_ROWS}
    return {**record, "compared_with": {"run": _label(reference), **verdicts}}


def evaluate_run(target: str, *, n: int, solver: str, steps: int, seed: int, data: Path | None,
                 ckpt_dir: str | None, device: str, last: bool = False,
                 draws: int = 1) -> dict[str, Any]:
    """Evaluate one run over `draws` draws, write its eval.json, log eval/* (means and stds)
    to its wandb (and MLflow) run; returns the record."""
    from study.cli.train import setup_logging
    from study.flow_matching import evaluate as ev
    from study.flow_matching.eval_draws import evaluate_draws
    from study.runs.mlflow_tracker import log_eval_to_mlflow
    from study.runtime.device import resolve_device

    torch_device = resolve_device(device)
    loaded = ev.load_flow_model(resolve_checkpoint(target, ckpt_dir, last=last), torch_device)
    rows, description = ev.heldout_data(loaded.config, data)
    summary = evaluate_draws(loaded, rows, draws=draws, n=n, solver=solver, steps=steps,
                             seed=seed, device=torch_device)
    record = ev.eval_record(loaded, summary, data=description, seed=seed)
    ev.write_eval_json(loaded.run_dir, record)
    setup_logging()  # a wandb failure is one "flowctl: wandb ... failed" line on stderr
    ev.log_eval_to_wandb(loaded.run_dir, loaded.wandb_run_id, loaded.wandb_project,
                         summary, config=loaded.config)
    log_eval_to_mlflow(loaded.run_dir, summary, checkpoint=str(loaded.path))
    return record


def _render(records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    caption = ("floor: the same metric between two disjoint n-row subsets of the held-out data, "
               "i.e. what a perfect model scores at this n. NPE = |PE - W2(x_0, data)²| / "
               "W2(x_0, data)² in the model's normalized space (0: optimal transport). "
               "a ± s: mean and std over the draws; 'vs': better or worse only when the means "
               "differ by more than the larger std.")
    table = Table(title="evaluation", title_justify="left", caption=caption,
                  caption_justify="left", min_width=80)
    table.add_column("metric", style="bold")
    for record in records:
        table.add_column(_label(record), justify="right", overflow="fold")
    for key, label in (*ROWS, *((key, key) for key in _user_keys(records))):
        table.add_row(label, *(_cell(record.get(key), record.get(f"{key}_std")) for record in records))
    if len(records) > 1:
        for key, label in VERDICT_ROWS:
            table.add_row(f"{label} vs {_label(records[0])}", "",
                          *(record["compared_with"][key] for record in records[1:]))
    console = Console()
    console.print(table)
    for record in records:
        seeds = record.get("seeds") or [record["seed"]]
        shown = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
        console.print(f"{_label(record)}: {record['solver']} x {record['steps']} steps, {shown}; "
                      f"data: {record['data']}; wrote "
                      f"{Path(record['checkpoint']).parent / 'eval.json'}", highlight=False,
                      markup=False)


def _user_keys(records: list[dict[str, Any]]) -> list[str]:
    """The eval_fn's metric names, in the order the first record with them has them."""
    from study.flow_matching.eval_draws import MEAN_KEYS, SPREAD_KEYS

    known = {*SPREAD_KEYS, *MEAN_KEYS, "seed"}
    names: list[str] = []
    for record in records:
        for draw in record.get("per_draw") or []:
            names += [key for key in draw if key not in known and key not in names]
    return names


def _label(record: dict[str, Any]) -> str:
    """The run's name, plus the file when it is not the run's best.pt."""
    name = Path(record["checkpoint"]).name
    return record["run"] if name == "best.pt" else f"{record['run']}/{name}"


def _cell(value: Any, std: float | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if std is None else f"{value:.4g} ± {std:.2g}"
    return str(value)
