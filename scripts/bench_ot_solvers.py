"""Exact assignment solvers against POT's `ot.emd` on real OT-CFM batches: is any faster?

OT-CFM pairs a batch by the exact OT plan between x_0 ~ N(0, I) and the batch's x_1 under the
squared Euclidean cost; with uniform weights and B = B that plan is a permutation, so any
exact linear assignment solver gives the same pairs (up to exact ties, which continuous data
does not have). For each 2-D toy and batch size, `--batches-per-size` real batches (x_1 rows
of the normalised train split, x_0 from a seeded generator) are solved by every solver that
is installed, one after the other on the same cost matrix. Reported: the median solve time,
its ratio to `ot.emd` on the same batches, and on how many batches the solver's matching was
POT's. Solvers that are not installed are listed as skipped; none of them is a dependency.

Usage: python scripts/bench_ot_solvers.py [--datasets 8gaussians,moons] [--batches 256,1024]
                                          [--batches-per-size 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import statistics
import sys
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from study.data.dataset import resolve_dataset
from study.flow_matching.ot_plans import exact_plan, squared_cost


def solvers() -> tuple[dict, list[str]]:
    """{name: cost [B, B] -> permutation [B]} for the installed solvers, and the skipped."""
    found = {"POT ot.emd": lambda cost: np.argmax(exact_plan(cost), axis=1)}
    skipped = []
    if importlib.util.find_spec("scipy"):
        from scipy.optimize import linear_sum_assignment
        found["scipy linear_sum_assignment"] = lambda cost: linear_sum_assignment(cost)[1]
    if importlib.util.find_spec("lap"):
        import lap
        found["lap.lapjv"] = lambda cost: lap.lapjv(cost, extend_cost=False)[1]
    else:
        skipped.append("lap")
    if importlib.util.find_spec("lapjv"):
        import lapjv
        found["lapjv.lapjv"] = lambda cost: lapjv.lapjv(cost)[0]
    else:
        skipped.append("lapjv")
    if importlib.util.find_spec("fastlap"):
        import fastlap
        for algorithm in ("lapjv", "auction"):  # auction is epsilon-optimal, not exact
            found[f"fastlap {algorithm}"] = (
                lambda cost, algorithm=algorithm: np.asarray(
                    fastlap.solve_lap(cost, algorithm=algorithm)[1]))
    else:
        skipped.append("fastlap")
    return found, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="8gaussians,moons")
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--batches-per-size", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"$ python {shlex.join(sys.argv)}")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    found, skipped = solvers()
    if skipped:
        print(f"not installed (skipped): {', '.join(skipped)}")
    table = Table("dataset", "batch", "solver", "median ms", "x ot.emd time", "same pairs")
    for dataset in args.datasets.split(","):
        train = resolve_dataset(dataset, seed=0, val_fraction=0.1).train
        train = (train - train.mean(0)) / train.std(0)
        generator = torch.Generator().manual_seed(0)
        for batch in map(int, args.batches.split(",")):
            times = {name: [] for name in found}
            same = dict.fromkeys(found, 0)
            for _ in range(args.batches_per_size):
                rows = torch.randperm(len(train), generator=generator)[:batch]
                cost = squared_cost(torch.randn(batch, 2, generator=generator), train[rows])
                reference = None
                for name, solve in found.items():
                    started = time.perf_counter()
                    pairs = np.asarray(solve(cost))
                    times[name].append(time.perf_counter() - started)
                    reference = pairs if reference is None else reference
                    same[name] += int(np.array_equal(pairs, reference))
            base = statistics.median(times["POT ot.emd"])
            for name, values in times.items():
                table.add_row(dataset, str(batch), name, f"{statistics.median(values) * 1e3:.1f}",
                              f"{statistics.median(values) / base:.2f}",
                              f"{same[name]}/{args.batches_per_size}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
