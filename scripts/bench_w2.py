"""What exact W2 (`metrics.wasserstein2`: POT emd2, squared Euclidean cost) and MMD cost per n.

Each size runs in its own child process so that its peak resident memory is its own: the
float64 cost matrix alone is n * n * 8 bytes (800 MB at n = 10,000), and POT's network
simplex holds the plan (another n * n * 8) while it solves. The points are two draws of the
published 2-D benchmark's 8 Gaussians (`tong-8gaussians`, radius 5, std 1), the hardest of
its targets for the simplex (many near-equal costs). Reported per n: wall seconds of the
solve, peak RSS of the child, the W2 and whether emd2 converged within numItermax.
`--metrics w2,mmd,mmd-whole` adds `metrics.mmd_rbf` (median length scales, computed in row
blocks) and, as its baseline, the same MMD from the whole n x n kernel matrices at once.

Usage: python scripts/bench_w2.py [--sizes 1000,2000,5000,10000] [--metrics w2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def mmd_whole_matrix(x, y) -> float:
    """The biased MMD^2 of `metrics.mmd_rbf` from the whole kernel matrices (the baseline)."""
    import torch

    from study.flow_matching.metrics import median_bandwidths

    x, y = x.double(), y.double()
    scales = median_bandwidths(y)

    def mean_kernel(a, b):
        return sum(torch.exp(-torch.cdist(a, b).pow(2) / (2 * s**2)) for s in scales).mean().item()

    return mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)


def measure(n: int, metric: str) -> dict:
    """Compute `metric` on one pair of n-point sets here; return its row of the table."""
    import torch

    from study.data.toy import TOY_DATASETS
    from study.flow_matching.metrics import mmd_rbf, wasserstein2

    x = TOY_DATASETS["tong-8gaussians"](n, torch.Generator().manual_seed(1))
    y = TOY_DATASETS["tong-8gaussians"](n, torch.Generator().manual_seed(2))
    function = {"w2": wasserstein2, "mmd": mmd_rbf, "mmd-whole": mmd_whole_matrix}[metric]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    try:
        w2, error = function(x, y), None
    except Exception as err:  # noqa: BLE001 - a failed solve is a row of the table, not a crash
        w2, error = None, str(err)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "seconds": seconds, "peak_mb": peak, "before_mb": baseline, "w2": w2,
            "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000")
    parser.add_argument("--metrics", default="w2", help="comma-separated: w2, mmd, mmd-whole")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1])))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(f"{'n':>6} {'metric':>9} {'n*n*8 MB':>9} {'seconds':>8} {'peak RSS MB':>12} "
          f"{'value':>10}  converged")
    for n in (int(s) for s in args.sizes.split(",")):
        for metric in args.metrics.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", str(n), metric], env=env,
                                 capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            value = f"{row['w2']:.6f}" if row["w2"] is not None else "-"
            converged = "yes" if row["error"] is None else f"no: {row['error']}"
            print(f"{n:>6} {metric:>9} {n * n * 8 / 1e6:>9.0f} {row['seconds']:>8.1f} "
                  f"{row['peak_mb']:>12.0f} {value:>10}  {converged}", flush=True)


if __name__ == "__main__":
    main()
