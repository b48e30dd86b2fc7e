"""Data larger than memory: peak resident memory of loading a multi-GB split and gathering batches.

Builds a float32 split folder of about --gb GB (train.npy, plus val/test) with
`scripts/make_splits.py --format npy` in a temp folder, then in a fresh subprocess each:
- `mapped`: resolve_dataset(folder) (memory-mapped; sha256, finiteness and stats in chunks),
  then --batches random batches of --batch rows with gather_rows (pread above 1 GiB);
- `mapped, gathers via the mapping`: the same with gather_rows forced to index the mapping
  (what the page cache's fault-around does to resident memory);
- `in memory`: the same data read whole with np.load (no mmap) into a tensor, same stats
  and gathers (the path data that fits takes);
- `flowctl train`: a real one-epoch training run on the split folder (`--batch-size` rows per
  step, a width-64 mlp, the default checkpoint budget), in the same kind of subprocess.
Each reports its peak RSS (VmHWM) and its growth over the interpreter with torch imported,
the time to load and to gather, and a digest of the stats and batches: equal digests mean
bit-identical results.

Usage: python scripts/bench_data.py [--gb 3] [--dim 1024] [--batches 200] [--batch 1024]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import hashlib, json, sys, time
import numpy as np
import torch
from study.data import matrix
from study.data.dataset import column_stats, gather_rows, resolve_dataset

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

folder, mode, batches, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.ones(1)
baseline = status("VmHWM")
started = time.perf_counter()
if mode == "in-memory":
    train = torch.from_numpy(np.load(folder + "/train.npy"))
    mean, std = column_stats(train)
else:
    if mode == "via-mapping":
        matrix.GATHER_FROM_MAPPING_MAX_BYTES = 1 << 62
    splits = resolve_dataset(folder, seed=0, val_fraction=0.1)
    train, mean, std = splits.train, splits.mean, splits.std
loaded = time.perf_counter()
digest = hashlib.sha256(mean.numpy().tobytes() + std.numpy().tobytes())
generator = torch.Generator().manual_seed(0)
gather_s = 0.0
for _ in range(batches):
    rows = torch.randint(len(train), (batch,), generator=generator)
    begin = time.perf_counter()
    x = gather_rows(train, rows)
    gather_s += time.perf_counter() - begin
    digest.update(x.numpy().tobytes())
print(json.dumps({"peak": status("VmHWM"), "baseline": baseline, "load_s": loaded - started,
                  "gather_ms": 1000 * gather_s / batches, "digest": digest.hexdigest()[:16],
                  "rows": len(train)}))
"""


TRAIN_PROBE = """
import json, sys, time
import torch
from study.cli.app import app

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

folder, ckpt_dir, batch = sys.argv[1], sys.argv[2], sys.argv[3]
torch.ones(1)
baseline = status("VmHWM")
started = time.perf_counter()
try:
    app(["train", "--dataset", folder, "--epochs", "1", "--batch-size", batch, "--width", "64",
         "--run-name", "big", "--ckpt-dir", ckpt_dir, "--wandb-mode", "disabled", "--plain"],
        prog_name="flowctl")
except SystemExit as done:
    assert not done.code, done.code
print(json.dumps({"peak": status("VmHWM"), "baseline": baseline,
                  "load_s": time.perf_counter() - started, "gather_ms": float("nan"),
                  "digest": "-", "rows": 0}))
"""


def build_split(folder: Path, gb: float, dim: int) -> Path:
    """A gmm split of about `gb` GB of training rows, written by make_splits --format npy."""
    spec = importlib.util.spec_from_file_location("make_splits", REPO_ROOT / "scripts" / "make_splits.py")
    make_splits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_splits)
    rows = int(gb * 1e9) // (4 * dim)
    code = make_splits.main(["--generator", "gmm", "--dim", str(dim), "--sizes", str(rows),
                             "--format", "npy", "--out", str(folder)])
    assert code == 0, "make_splits failed"
    return folder / str(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=3.0, help="size of train.npy in GB (default 3)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flowctl-bench-data-") as scratch:
        started = time.perf_counter()
        folder = build_split(Path(scratch), args.gb, args.dim)
        built_s = time.perf_counter() - started
        size = (folder / "train.npy").stat().st_size
        results = {}
        for mode in ("mapped", "via-mapping", "in-memory"):
            child = subprocess.run([sys.executable, "-c", PROBE, str(folder), mode,
                                    str(args.batches), str(args.batch)], cwd=REPO_ROOT,
                                   capture_output=True, text=True, check=True)
            results[mode] = json.loads(child.stdout)
            print(f"  {mode} done", file=sys.stderr)
        child = subprocess.run([sys.executable, "-c", TRAIN_PROBE, str(folder),
                                str(Path(scratch) / "runs"), str(args.batch)], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True)
        results["train"] = json.loads(child.stdout.strip().splitlines()[-1])

    import torch

    print(f"\n{platform.node()}: Python {platform.python_version()}, torch {torch.__version__}; "
          f"train.npy {size / 1e9:.2f} GB ({results['mapped']['rows']} x {args.dim} float32, "
          f"made by make_splits --format npy in {built_s:.0f} s); {args.batches} batches of "
          f"{args.batch} random rows\n")
    labels = {"mapped": "mapped (gather_rows: pread)", "via-mapping": "mapped, gathers via the mapping",
              "in-memory": "in memory (np.load)", "train": "flowctl train, 1 epoch (load + train s)"}
    print("| data path | peak RSS | growth over torch | growth / file | load s | gather ms/batch | digest |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for mode, label in labels.items():
        result = results[mode]
        growth = result["peak"] - result["baseline"]
        print(f"| {label} | {result['peak'] / 1e9:.2f} GB | {growth / 1e9:.3f} GB | "
              f"{growth / size:.1%} | {result['load_s']:.1f} | {result['gather_ms']:.2f} | "
              f"{result['digest']} |")


if __name__ == "__main__":
    main()
