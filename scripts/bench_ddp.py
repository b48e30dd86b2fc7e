"""Data parallel on the CPU: steps/s of 1 vs 2 processes, and what the stop flag costs.

1. `flowctl train --nproc N` (gloo, one intra-op thread per process) on a 1024-D Gaussian
   mixture split with a width-1024 mlp, global batch 256, N = 1 and 2, alternating for
   --repeats rounds; steps/s from the trainer's own wall time (start-up excluded).
   Scaling efficiency = (steps/s on 2) / (2 x steps/s on 1): global batches are the same, so
   2 processes each compute half of every batch.
2. The stop-flag agreement alone, under torchrun with 2 processes: one all-reduce (MAX) of
   an int32 flag plus the host read, timed over --flag-iterations; the loop pays it every
   `log_every` steps (10 by default), so its cost per step is that divided by log_every.

Usage: python scripts/bench_ddp.py [--rows 4096] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def flag_worker(iterations: int) -> None:
    """Run under torchrun: time the stop agreement's all-reduce."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    flag = torch.zeros((), dtype=torch.int32)
    for _ in range(50):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(iterations):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bool(flag.item())
    seconds = time.perf_counter() - started
    if dist.get_rank() == 0:
        print(f"FLAG_US {seconds / iterations * 1e6:.1f}", flush=True)
    dist.destroy_process_group()


def make_split(folder: Path, rows: int) -> Path:
    from study.data.toy import gaussian_mixture

    x = gaussian_mixture(rows + 1024, 1024, 8, torch.Generator().manual_seed(0))
    split = folder / "gmm1024"
    split.mkdir()
    torch.save(x[:rows], split / "train.pt")
    torch.save(x[rows:], split / "val.pt")
    return split


def train_rate(split: Path, nproc: int, epochs: int, root: Path) -> float:
    name = f"ddp-{nproc}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "study.cli.app", "train", "--dataset", str(split),
               "--run-name", name, "--epochs", str(epochs), "--width", "1024", "--patience", "0",
               "--batch-size", "256", "--wandb-mode", "disabled", "--plain",
               "--ckpt-dir", str(root)]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    wall = float(re.search(r"wall time\s+([\d.]+)s", result.stdout).group(1))
    steps = int(re.search(r"global step\s+(\d+)", result.stdout).group(1))
    return steps / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096, help="training rows (16 steps/epoch)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flag-iterations", type=int, default=2000)
    parser.add_argument("--flag-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flag_worker is not None:
        flag_worker(args.flag_worker)
        return
    print(f"$ python {shlex.join(sys.argv)}")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as folder:
        split = make_split(Path(folder), args.rows)
        for _ in range(args.repeats):
            for nproc in (1, 2):
                rates[nproc].append(train_rate(split, nproc, args.epochs, Path(folder) / "runs"))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    efficiency = statistics.median(b / (2 * a) for a, b in zip(rates[1], rates[2], strict=True))
    flag = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         __file__, "--flag-worker", str(args.flag_iterations)],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        check=True)
    flag_us = float(re.search(r"FLAG_US ([\d.]+)", flag.stdout).group(1))
    step_ms = 1000 / two
    print(f"| processes | steps/s (median of {args.repeats}) | note |")
    print("|---|---:|---|")
    print(f"| 1 | {one:.2f} | |")
    print(f"| 2 | {two:.2f} | scaling efficiency {efficiency:.0%} (ideal 100%) |")
    print(f"\nstop-flag all-reduce + read: {flag_us:.0f} us each; every 10 steps at "
          f"{step_ms:.0f} ms/step on 2 processes: {flag_us / 10 / (step_ms * 1000):.3%} per step "
          f"(every step: {flag_us / (step_ms * 1000):.2%})")


if __name__ == "__main__":
    main()
