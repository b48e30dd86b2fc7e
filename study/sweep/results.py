"""The results table of a group of runs: one row per setting, mean and spread over seeds.

Reads run.json (best val loss) and eval.json (`flowctl eval`'s W2, MMD, ...) of the runs
whose group is G; only finished and early-stopped runs count. Rows are grouped by the
config keys in `by` (default: every key that varies across the group except the seed), so
seeds collapse into n, mean, std (sample, n-1), min and max. No torch.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.runs.display import printable
from study.runs.retention import is_rank_key, run_score
from study.runs.status import RunInfo, scan_runs
from study.sweep.grid import load_grid
from study.sweep.identity import NOT_IDENTITY, identity_diff
from study.sweep.point_files import read_record
from study.sweep.state import DONE_STATES

# `val_loss` is run.json's best_val_loss; `eval_X` is key X of eval.json.
EVAL_METRICS = ("w2", "mmd", "nfe", "path_energy", "npe", "straightness")
METRICS = ("val_loss", *(f"eval_{name}" for name in EVAL_METRICS))
# Keys that never make a row of their own.
NOT_SETTINGS = ("seed", "stages", *NOT_IDENTITY)


@dataclass
class RunResult:
    run_name: str
    config: dict[str, Any]
    value: float


@dataclass
class ResultRow:
    """One setting: its `by` values and the metric over its runs (seeds)."""

    setting: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [run.value for run in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def to_json(self) -> dict[str, Any]:
        return {**self.setting, "n": len(self.runs), "mean": self.mean, "std": self.std,
                "min": min(self.values), "max": max(self.values),
                "runs": {run.run_name: run.value for run in self.runs}}


@dataclass
class Comparison:
    group: str
    metric: str
    by: list[str]
    rows: list[ResultRow]
    skipped: dict[str, str]  # run name -> why it is not in the table


def varying_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose value differs between runs (seed and harmless keys excluded)."""
    keys = sorted({key for config in configs for key in config} - set(NOT_SETTINGS))
    return [key for key in keys if len({repr(config.get(key)) for config in configs}) > 1]


def compare_group(root: str | Path, group: str, *, metric: str = "val_loss",
                  by: list[str] | None = None) -> Comparison:
    """The results table of `group`; UsageError when the group has no finished runs."""
    if not is_rank_key(metric):
        raise UsageError(f"unknown --metric {metric!r}; choose one of: {', '.join(METRICS)}, "
                         "or eval_NAME for a user metric in eval.json")
    runs = [run for run in scan_runs(root) if run.group == group]
    if not runs:
        raise UsageError(f"no runs of group {group!r} under {root}; see `flowctl list-runs`")
    skipped: dict[str, str] = stale_sweep_points(runs)
    results: list[RunResult] = []
    for run in sorted(runs, key=lambda r: r.run_name):
        value = run_score(run, metric)
        if run.path.name in skipped:
            continue
        if run.display_status not in DONE_STATES:
            skipped[run.run_name] = run.display_status
        elif value is None:
            skipped[run.run_name] = ("no eval.json (run `flowctl eval RUN`)"
                                     if metric != "val_loss" else "no val loss")
        else:
            results.append(RunResult(run.run_name, run.config, value))
    if not results:
        raise UsageError(f"group {group!r} has no finished runs with {metric}"
                         + (f" ({len(skipped)} skipped: {next(iter(skipped.values()))})"
                            if skipped else ""))
    by = by if by is not None else varying_keys([result.config for result in results])
    known = {key for result in results for key in result.config}
    unknown = [key for key in by if key not in known]
    if unknown:
        raise UsageError(f"--by {unknown[0]!r} is not a config key of these runs; e.g. "
                         "--by flow,dataset")
    rows: dict[tuple, ResultRow] = {}
    for result in results:
        setting = {key: result.config.get(key) for key in by}
        key = tuple(repr(value) for value in setting.values())
        rows.setdefault(key, ResultRow(setting)).runs.append(result)
    ordered = sorted(rows.values(), key=lambda row: row.mean)
    return Comparison(group=group, metric=metric, by=by, rows=ordered, skipped=skipped)


def stale_sweep_points(runs: list[RunInfo]) -> dict[str, str]:
    """{run folder name: why} for the runs a sweep made whose grid (the file its sweep.json
    names) no longer asks for their config: they are not that grid's result (`sweep status`
    shows such a point as `conflict`). A grid that cannot be read tells nothing: kept."""
    grids: dict[str, dict[str, Any] | None] = {}
    stale = {}
    for run in runs:
        grid_path = read_record(run.path).get("grid")
        if not isinstance(grid_path, str):
            continue
        if grid_path not in grids:
            try:
                grids[grid_path] = {point.name: point for point in load_grid(grid_path).points}
            except UsageError:
                grids[grid_path] = None
        points = grids[grid_path]
        if points is None:
            continue
        point = points.get(run.path.name)
        if point is None:
            stale[run.path.name] = f"no longer a point of its grid {grid_path}"
        elif run.config and (differences := identity_diff(run.config, point.config.to_dict())):
            stale[run.path.name] = (f"its grid {grid_path} now asks for another config "
                                    f"({'; '.join(differences)})")
    return stale


def format_mean_std(row: ResultRow) -> str:
    """`0.1234 ± 0.0056` (`0.1234` for one run), the form a paper's table uses."""
    return f"{row.mean:.4g}" + (f" ± {row.std:.2g}" if row.std is not None else "")


def markdown_table(comparison: Comparison) -> str:
    header = [*comparison.by, "n", f"{comparison.metric} (mean ± std)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in comparison.rows:
        cells = [printable(str(row.setting[key])) for key in comparison.by]  # from run.json
        lines.append("| " + " | ".join([*cells, str(len(row.runs)), format_mean_std(row)]) + " |")
    return "\n".join(lines)
