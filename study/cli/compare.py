"""`flowctl compare --group G`: the results table of a grid, mean and spread over seeds.

Reads run.json and eval.json only (no torch); matplotlib only with --plot.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from study.cli.common import CkptDir, fail, user_errors
from study.runs.display import printable
from study.sweep.results import METRICS, Comparison, format_mean_std

PLOT_SUFFIXES = (".png", ".pdf", ".svg")  # what matplotlib's savefig writes by extension


def compare(
    group: str = typer.Option(..., "--group", "-g", help="The runs' group (a sweep's `group:`, default the grid file's stem)."),
    by: str | None = typer.Option(None, "--by", help="Config keys that make a row, comma-separated.  [default: the keys that vary, except seed]"),
    metric: str = typer.Option("val_loss", "--metric", help=f"{' | '.join(METRICS)} (eval_*: from `flowctl eval`; eval_NAME: an --eval-fn metric)."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON rows (mean, std, min, max, n, per-run values)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (mean ± std), for a paper or a README."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write a picture (.png, .pdf or .svg; replaced if it exists): a bar per row (mean ± std), a dot per run."),
    ckpt_dir: CkptDir = None,
) -> None:
    """Compare the finished runs of a group: one row per setting, mean ± std over seeds.

    Example: flowctl compare --group study-small --by flow,dataset --metric val_loss --plot compare.png
    """
    from study.runs.paths import checkpoint_root
    from study.sweep.results import compare_group, markdown_table

    if json_output and markdown:
        raise fail("choose one of --json and --markdown")
    keys = [key.strip() for key in by.split(",") if key.strip()] if by is not None else None
    with user_errors():
        if plot is not None:  # before any work: a picture never replaces a run's own file
            from study.runs.outputs import check_output

            check_output(plot, suffixes=PLOT_SUFFIXES, force=True, flag="--plot")
        comparison = compare_group(checkpoint_root(ckpt_dir), group, metric=metric, by=keys)
    if json_output:
        typer.echo(json.dumps({"group": group, "metric": metric, "by": comparison.by,
                               "rows": [row.to_json() for row in comparison.rows],
                               "skipped": comparison.skipped}, indent=2))
    elif markdown:
        typer.echo(markdown_table(comparison))
    else:
        _print_table(comparison)
    if plot is not None:
        from study.sweep.results_plot import plot_comparison

        path = plot_comparison(comparison, plot)
        typer.echo(f"wrote {path}", err=json_output)


def _print_table(comparison: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{comparison.group}: {comparison.metric}", title_justify="left")
    for key in comparison.by:
        table.add_column(key)
    for column in ("n", "mean ± std", "min", "max"):
        table.add_column(column, justify="right")
    for row in comparison.rows:  # settings come from run.json: Text (no markup), no escapes
        table.add_row(*(Text(printable(str(row.setting[key]))) for key in comparison.by),
                      str(len(row.runs)), format_mean_std(row), f"{min(row.values):.4g}",
                      f"{max(row.values):.4g}")
    Console().print(table)
    if comparison.skipped:
        reasons = ", ".join(f"{name} ({why})" for name, why in comparison.skipped.items())
        typer.echo(printable(f"not in the table: {reasons}"))
