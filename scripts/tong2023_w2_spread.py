"""How W2 on Tong et al.'s 2-D benchmark spreads with the test-set size, and where it comes from.

For each checkpoint: 10,000 samples exactly as `flowctl eval --n 10000 --solver euler --steps 100`
draws them (seed 0), scored against the run's 10,000 test rows
- at n = 10,000 (all of them: `flowctl eval --n 10000`'s W2, to all digits),
- at n = 1,000 over `--blocks` disjoint draws (1,000 samples vs 1,000 test rows each, both
  disjoint across draws): mean, std, min, max and rms (the square root of the mean W2^2),
- with the samples that lie farther than `--far` from every test row left out (n = 10,000),
and how far samples lie from the nearest test row (each sample's transport cost is at least its
nearest distance squared, so the mean of that over the far samples is a lower bound on their
share of W2^2). Once per dataset, the same W2 rows for the estimator's floor: a fresh draw of
the true distribution vs the test rows; for tong-scurve also sklearn's make_s_curve transcribed
to numpy (sklearn/datasets/_samples_generator.py, columns x and z, x1.5, as the authors' runner
`distribution_datamodule.py` does), to check the dataset's scale.

With --quick, only the n = 1,000 draws of the model's samples, one line per checkpoint (for
many checkpoints of one run, e.g. its epoch-NNNN.pt snapshots).

Usage: python scripts/tong2023_w2_spread.py CHECKPOINT.pt [CHECKPOINT.pt ...] [--blocks 10]
       [--quick]
Exact W2 at n = 10,000 peaks at ~4.2 GB and ~35 s per solve on one thread.
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import torch
from torch import Tensor

from study.data.toy import TOY_DATASETS
from study.flow_matching.evaluate import generate, heldout_data, load_flow_model
from study.flow_matching.metrics import wasserstein2

BLOCK = 1_000


def sklearn_scurve(n: int, seed: int) -> Tensor:
    """The runner's N -> scurve target from sklearn's make_s_curve(noise=0.05) formula, in numpy:
    t ~ U(-3pi/2, 3pi/2); (sin t, 2u, sign(t)(cos t - 1)) + 0.05 N(0, I3); columns 0, 2; x1.5."""
    rng = np.random.default_rng(seed)
    t = 3 * np.pi * (rng.uniform(size=n) - 0.5)
    x = np.stack([np.sin(t), 2.0 * rng.uniform(size=n), np.sign(t) * (np.cos(t) - 1)], axis=1)
    x += 0.05 * rng.standard_normal(size=(n, 3))
    return torch.from_numpy(1.5 * x[:, [0, 2]]).float()


def nearest_distance(x: Tensor, rows: Tensor, chunk: int = 1_000) -> Tensor:
    """Distance from each x [N, D] to its nearest row of rows [M, D]: Tensor[N]."""
    return torch.cat([torch.cdist(x[i:i + chunk], rows).min(dim=1).values
                      for i in range(0, len(x), chunk)])


def spread(points: Tensor, rows: Tensor, blocks: int) -> list[float]:
    """W2 of `blocks` disjoint BLOCK-point pieces of points vs disjoint pieces of rows."""
    return [wasserstein2(points[i * BLOCK:(i + 1) * BLOCK], rows[i * BLOCK:(i + 1) * BLOCK])
            for i in range(blocks)]


def row(what: str, points: Tensor, rows: Tensor, blocks: int) -> float:
    """Print one line of the table: W2 at n = 1,000 over `blocks` draws and at all the points;
    returns the latter."""
    values = spread(points, rows, blocks)
    rms = math.sqrt(statistics.mean(v * v for v in values))
    w2_all = wasserstein2(points, rows)
    print(f"{what:<44} {statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}  "
          f"[{min(values):.3f}, {max(values):.3f}]  {rms:.3f}   {w2_all:.4f}", flush=True)
    return w2_all


def header(blocks: int) -> None:
    print(f"{'':<44} {'W2 @1,000 (' + str(blocks) + ' disjoint draws)':<30}{'rms':<8}W2 @all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--blocks", type=int, default=10, help="disjoint 1,000-point draws")
    parser.add_argument("--far", type=float, default=0.5, help="'far' from every test row")
    parser.add_argument("--quick", action="store_true", help="only W2 @1,000 of the samples")
    args = parser.parse_args()
    torch.set_num_threads(1)
    references_done: set[str] = set()
    for path in args.checkpoints:
        loaded = load_flow_model(path)
        rows, description = heldout_data(loaded.config)
        dataset = loaded.config.get("dataset")
        # Test rows in a fixed random order, so the 1,000-row pieces are random and disjoint.
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))].float()
        needed = args.blocks * BLOCK
        if len(rows) < needed:
            raise SystemExit(f"{description}: need {needed} test rows for --blocks {args.blocks}")
        samples, _ = generate(loaded, len(rows), solver="euler", steps=100, seed=0)
        step = torch.load(path, map_location="cpu", weights_only=True).get("global_step")
        if args.quick:
            values = spread(samples, rows, args.blocks)
            print(f"{path} (step {step}): W2 @1,000 {statistics.mean(values):.3f} ± "
                  f"{statistics.stdev(values):.3f} over {args.blocks} draws", flush=True)
            continue
        print(f"\n{path} (step {step}); {description}")
        header(args.blocks)
        w2_all = row("model samples vs test rows", samples, rows, args.blocks)
        if dataset not in references_done:
            references_done.add(dataset)
            truth = TOY_DATASETS[dataset](len(rows), torch.Generator().manual_seed(12345))
            row(f"fresh {dataset} draw vs test rows (floor)", truth, rows, args.blocks)
            if dataset == "tong-scurve":
                row("sklearn make_s_curve formula vs test rows", sklearn_scurve(len(rows), 0),
                    rows, args.blocks)
        distance = nearest_distance(samples, rows)
        far = distance > args.far
        w2_near = wasserstein2(samples[~far], rows)
        quantiles = torch.quantile(distance, torch.tensor([0.5, 0.99, 0.999, 1.0])).tolist()
        print(f"nearest test row: median {quantiles[0]:.3f}, 99% {quantiles[1]:.3f}, "
              f"99.9% {quantiles[2]:.3f}, max {quantiles[3]:.3f}; {int(far.sum())} samples "
              f"farther than {args.far}")
        print(f"W2^2 @all {w2_all ** 2:.4f}; far samples carry at least "
              f"{(distance[far] ** 2).sum().item() / len(samples):.4f} of it; "
              f"W2 without them {w2_near:.4f}", flush=True)


if __name__ == "__main__":
    main()
