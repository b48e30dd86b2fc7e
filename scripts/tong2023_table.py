"""Tong et al.'s 2-D table next to flowctl's: W2 and NPE, mean ± std over seeds, with a verdict.

Reads the evaluations `scripts/reproduce_tong2023.sh` saves (`OUT/evals/RUN-nN.json`, one per
run and test size; run names `[PREFIX-]FLOW-SOURCE-to-DATASET-sSEED` as the example grids
name them) and prints one markdown table per test size: a row per flow and metric, a column
per task, each cell `mean ± std (k seeds)` and, where [SF]2M's Table 2 has the cell, the
published value and where flowctl's mean lies: `within` (inside published mean ± std),
`below` or `above` it.

    python scripts/tong2023_table.py tong2023-results/tong2023-2d [more result folders]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

TASKS = {  # (source, dataset) in the grids -> the paper's column
    ("gaussian", "tong-8gaussians"): "N -> 8gaussians",
    ("tong-pair-moons", "tong-pair-8gaussians"): "moons -> 8gaussians",
    ("gaussian", "tong-moons"): "N -> moons",
    ("gaussian", "tong-scurve"): "N -> scurve",
}
# [SF]2M (Tong, Malkin, Fatras et al., AISTATS 2024), Table 2: (mean, std) over 5 seeds on
# 10,000 test points; the two rows quoted in issue 25.
PUBLISHED = {
    ("otcfm", "w2"): [(0.303, 0.043), (0.601, 0.027), (0.130, 0.016), (0.144, 0.028)],
    ("otcfm", "npe"): [(0.031, None), (0.015, None), (0.083, None), (0.027, None)],
    ("icfm", "w2"): [(0.373, 0.103), (1.557, 0.407), (0.178, 0.014), (0.242, 0.141)],
    ("icfm", "npe"): [(0.202, None), (2.680, None), (0.891, None), (0.856, None)],
}
# The runner's OT-CFM draws its pairs from the plan: flowctl's `otcfm-sampled` is that variant.
PUBLISHED.update({("otcfm-sampled", metric): PUBLISHED[("otcfm", metric)] for metric in ("w2", "npe")})
# config.FLOW_NAMES, longest first, written out so that this script runs without flowctl
# installed (tests/test_tong2023.py checks that every flow name parses).
FLOWS = "otcfm-sampled|reflow|sbcfm|otcfm|icfm|fm|vp"
NAME = re.compile(rf"^(?:(?P<prefix>.+)-)?(?P<flow>{FLOWS})-(?P<source>.+)-to-"
                  r"(?P<dataset>.+)-s(?P<seed>\d+)-n(?P<n>\d+)\.json$")


def collect(folders: list[Path]) -> dict:
    """{(n, label, flow, task): [(seed, eval dict)]} from every folder's evals/."""
    cells: dict = defaultdict(list)
    for folder in folders:
        for path in sorted((folder / "evals").glob("*.json")):
            match = NAME.match(path.name)
            if not match or (match["source"], match["dataset"]) not in TASKS:
                continue
            label = match["prefix"] or "published protocol"
            task = TASKS[(match["source"], match["dataset"])]
            cells[(int(match["n"]), label, match["flow"], task)].append(
                (int(match["seed"]), json.loads(path.read_text())))
    return cells


def verdict(mean: float, published: tuple[float, float | None] | None) -> str:
    if published is None or published[1] is None:
        return ""
    low, high = published[0] - published[1], published[0] + published[1]
    return "within" if low <= mean <= high else "below" if mean < low else "above"


def cell_text(values: list[float], published) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values)
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    text = f"{mean:.3f}{spread} ({len(values)})"
    if published is not None:
        pub = f"{published[0]:.3f}" + (f" ± {published[1]:.3f}" if published[1] else "")
        mark = verdict(mean, published)
        text += f" vs {pub}" + (f" **{mark}**" if mark else "")
    return text


def tables(cells: dict) -> str:
    out = []
    for n in sorted({key[0] for key in cells}):
        out += [f"### n = {n:,} test points: mean ± std over seeds (seeds) vs published",
                "", "| grid | flow | metric | " + " | ".join(TASKS.values()) + " |",
                "|---|---|---|" + "---|" * len(TASKS)]
        rows = sorted({(key[1], key[2]) for key in cells if key[0] == n},
                      key=lambda row: (row[0] != "published protocol", row))
        for label, flow in rows:
            for metric in ("w2", "npe"):
                texts = []
                for index, task in enumerate(TASKS.values()):
                    values = [result[metric] for _, result in cells.get((n, label, flow, task), [])
                              if result.get(metric) is not None]
                    published = PUBLISHED.get((flow, metric)) if (
                        label == "published protocol" and n == 10_000) else None
                    texts.append(cell_text(values, published[index] if published else None))
                out.append(f"| {label} | {flow} | {metric.upper()} | " + " | ".join(texts) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="result folders (OUT of the script)")
    args = parser.parse_args()
    cells = collect(args.folders)
    if not cells:
        raise SystemExit(f"no evaluations under {', '.join(map(str, args.folders))}/evals")
    print(tables(cells))


if __name__ == "__main__":
    main()
