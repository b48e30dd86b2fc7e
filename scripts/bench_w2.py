"""What exact W2 (`metrics.wasserstein2`: POT emd2, squared Euclidean cost) costs per n.

Each size runs in its own child process so that its peak resident memory is its own: the
float64 cost matrix alone is n * n * 8 bytes (800 MB at n = 10,000), and POT's network
simplex holds the plan (another n * n * 8) while it solves. The points are two draws of the
published 2-D benchmark's 8 Gaussians (`tong-8gaussians`, radius 5, std 1), the hardest of
its targets for the simplex (many near-equal costs). Reported per n: wall seconds of the
solve, peak RSS of the child, the W2 and whether emd2 converged within numItermax.

Usage: python scripts/bench_w2.py [--sizes 1000,2000,5000,10000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(n: int) -> dict:
    """Solve one n x n exact W2 here; return its row of the table."""
    import torch

    from study.data.toy import TOY_DATASETS
    from study.flow_matching.metrics import wasserstein2

    x = TOY_DATASETS["tong-8gaussians"](n, torch.Generator().manual_seed(1))
    y = TOY_DATASETS["tong-8gaussians"](n, torch.Generator().manual_seed(2))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    try:
        w2, error = wasserstein2(x, y), None
    except Exception as err:  # noqa: BLE001 - a failed solve is a row of the table, not a crash
        w2, error = None, str(err)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "seconds": seconds, "peak_mb": peak, "before_mb": baseline, "w2": w2,
            "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(f"{'n':>6} {'cost matrix MB':>15} {'seconds':>8} {'peak RSS MB':>12} {'W2':>8}  converged")
    for n in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], env=env,
                             capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        w2 = f"{row['w2']:.4f}" if row["w2"] is not None else "-"
        converged = "yes" if row["error"] is None else f"no: {row['error']}"
        print(f"{n:>6} {n * n * 8 / 1e6:>15.0f} {row['seconds']:>8.1f} {row['peak_mb']:>12.0f} "
              f"{w2:>8}  {converged}", flush=True)


if __name__ == "__main__":
    main()
