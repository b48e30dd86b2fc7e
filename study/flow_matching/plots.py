"""PNG figures of a run: loss curves, 2-D samples with trajectories, per-dimension marginals.

Every function writes one file with the Agg backend (no window, works over ssh and in CI),
creates the parent folder, and returns the path it wrote.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib
import numpy as np
from torch import Tensor

from study.errors import UsageError
from study.runs.metrics_log import read_metrics_checked

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (must come after matplotlib.use)

_DATA_COLOR = "0.6"
_SAMPLE_COLOR = "tab:blue"


def _to_numpy(points: Tensor) -> np.ndarray:
    return points.detach().cpu().float().numpy()


def _save(fig: plt.Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def _read_metrics(metrics_csv: Path) -> dict[str, list[tuple[float, float]]]:
    """Columns of metrics.csv as (step, value) pairs, skipping rows where the cell is empty
    and damaged lines (study.runs.metrics_log.read_metrics_checked; one warning says how many)."""
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file():
        raise UsageError(f"no metrics file at {metrics_csv}")
    try:
        header, rows, damaged = read_metrics_checked(metrics_csv)
    except OSError as err:
        raise UsageError(f"cannot read {metrics_csv}: {err.strerror or err}") from None
    if "step" not in header:
        raise UsageError(f"expected a 'step' column in {metrics_csv}, got {header[:12]}")
    if damaged:
        print(f"warning: {metrics_csv}: {damaged} damaged line(s) left out", file=sys.stderr)
    columns: dict[str, list[tuple[float, float]]] = {name: [] for name in header}
    for row in rows:
        step = float(row["step"])
        for name, cell in row.items():
            if cell:
                columns[name].append((step, float(cell)))
    return columns


def plot_loss_curves(metrics_csv: Path, out: Path, *, log_scale: bool = False) -> Path:
    """Plot train/loss and val/loss against step from a run's metrics.csv; save a PNG at out.

    Empty cells mean "not logged at this row". A dashed vertical line marks each step at
    which `stage_id` changes (the start of a new stage).
    """
    columns = _read_metrics(metrics_csv)
    curves = [(name, columns.get(name, [])) for name in ("train/loss", "val/loss")]
    if not any(points for _, points in curves):
        raise UsageError(f"no train/loss or val/loss values in {metrics_csv}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, points), style in zip(
        curves, ({"lw": 1.0, "alpha": 0.8}, {"marker": "o", "ms": 3}), strict=True
    ):
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=name, **style)
    stage_points = columns.get("stage_id", [])
    for (_, previous), (step, stage) in zip(stage_points, stage_points[1:], strict=False):
        if stage != previous:
            ax.axvline(step, color="0.4", linestyle="--", linewidth=1.0)
    if stage_points and len({stage for _, stage in stage_points}) > 1:
        ax.plot([], [], color="0.4", linestyle="--", linewidth=1.0, label="stage change")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(Path(metrics_csv).parent.name or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_samples_2d(
    samples: Tensor,
    data: Tensor,
    out: Path,
    *,
    trajectories: Tensor | None = None,
    max_trajectories: int = 32,
) -> Path:
    """Scatter data: Tensor[M, 2] (grey) and samples: Tensor[N, 2], save a PNG at out.

    trajectories: Tensor[K, B, 2] (e.g. `OdeResult.trajectory`); the first
    `max_trajectories` of the B paths are drawn as lines from a marked start x_0.
    """
    if samples.ndim != 2 or samples.shape[1] != 2 or data.ndim != 2 or data.shape[1] != 2:
        raise UsageError(
            f"expected samples [N, 2] and data [M, 2], got {tuple(samples.shape)} and {tuple(data.shape)}"
        )
    fig, ax = plt.subplots(figsize=(5, 5))
    data_np, samples_np = _to_numpy(data), _to_numpy(samples)
    ax.scatter(data_np[:, 0], data_np[:, 1], s=3, color=_DATA_COLOR, alpha=0.5, label="data")
    ax.scatter(
        samples_np[:, 0], samples_np[:, 1], s=3, color=_SAMPLE_COLOR, alpha=0.7, label="samples"
    )
    if trajectories is not None:
        if trajectories.ndim != 3 or trajectories.shape[2] != 2:
            raise UsageError(f"expected trajectories [K, B, 2], got {tuple(trajectories.shape)}")
        paths = _to_numpy(trajectories[:, :max_trajectories])
        for b in range(paths.shape[1]):
            ax.plot(paths[:, b, 0], paths[:, b, 1], color="tab:orange", lw=0.8, alpha=0.8)
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=10, color="black", marker="x", label="x_0")
        ax.plot([], [], color="tab:orange", lw=0.8, label="trajectories")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.legend(loc="best", markerscale=3, fontsize="small")
    return _save(fig, out)


def plot_marginals(samples: Tensor, data: Tensor, out: Path, *, max_dims: int = 4) -> Path:
    """Histograms of samples: Tensor[N, D] vs data: Tensor[M, D] for the first max_dims dims.

    One subplot per dimension (up to 4 per row); both sets share bins and are density-normalised.
    """
    if samples.ndim != 2 or data.ndim != 2 or samples.shape[1] != data.shape[1]:
        raise UsageError(
            f"expected samples [N, D] and data [M, D], got {tuple(samples.shape)} and {tuple(data.shape)}"
        )
    if max_dims <= 0:
        raise UsageError(f"expected max_dims > 0, got {max_dims}")
    dims = min(samples.shape[1], max_dims)
    ncols = min(dims, 4)
    nrows = math.ceil(dims / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3 * ncols, 2.5 * nrows), squeeze=False, layout="constrained"
    )
    data_np, samples_np = _to_numpy(data), _to_numpy(samples)
    num_bins = int(np.clip(np.sqrt(min(len(data_np), len(samples_np))), 10, 50))
    for d, ax in enumerate(axes.flat):
        if d >= dims:
            ax.set_visible(False)
            continue
        values = np.concatenate([data_np[:, d], samples_np[:, d]])
        finite = values[np.isfinite(values)]
        bins = np.histogram_bin_edges(finite, bins=num_bins) if finite.size else num_bins
        ax.hist(data_np[:, d], bins=bins, density=True, color=_DATA_COLOR, alpha=0.6, label="data")
        ax.hist(
            samples_np[:, d],
            bins=bins,
            density=True,
            histtype="step",
            color=_SAMPLE_COLOR,
            lw=1.5,
            label="samples",
        )
        ax.set_xlabel(f"x[{d}]")
    axes.flat[0].legend(fontsize="small")
    return _save(fig, out)
