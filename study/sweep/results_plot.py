"""The PNG of a results table: a bar per setting (mean, std error bar), each run a dot.

Agg backend: no window, works over ssh and in CI. No torch.
"""

from __future__ import annotations

from pathlib import Path

from study.sweep.results import Comparison


def plot_comparison(comparison: Comparison, out: str | Path) -> Path:
    """Write the figure to `out` (its folder is created) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comparison.rows
    labels = ["\n".join(f"{key}={row.setting[key]}" for key in comparison.by) or "all"
              for row in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 1.5), 4.0))
    positions = range(len(rows))
    ax.bar(positions, [row.mean for row in rows], color="tab:blue", alpha=0.35,
           yerr=[row.std or 0.0 for row in rows], capsize=4, label="mean ± std")
    for index, row in enumerate(rows):
        ax.scatter([index] * len(row.values), row.values, color="tab:blue", s=18, zorder=3)
    ax.set_xticks(list(positions), labels, fontsize=8)
    ax.set_ylabel(comparison.metric)
    ax.set_title(f"{comparison.group}: {comparison.metric} (dots: runs)")
    ax.grid(axis="y", alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
