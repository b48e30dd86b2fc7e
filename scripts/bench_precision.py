"""Mixed precision on this machine: steps/s and sample quality of bf16 against fp32.

For each workload, in one process, fp32 and bf16 (torch.autocast on the forward pass) take
turns for --repeats rounds, each training a fresh model from the same seed for the same
steps (FlowTrainer.train(), checkpoints kept to the end). Reported: median steps/s, the
median ratio to fp32 in the same round, and the final validation loss; for the 2-D task also
W2 of 2,000 samples (rk4, 20 steps) against the test split, over 3 source draws.
fp16 needs CUDA (a GradScaler) and is left out on the CPU.

Usage: python scripts/bench_precision.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from study.data.dataset import resolve_dataset
from study.data.toy import gaussian_mixture
from study.data.training_data import TrainingData
from study.flow_matching.config import TrainingConfig
from study.flow_matching.evaluate import generate, load_flow_model
from study.flow_matching.metrics import wasserstein2
from study.flow_matching.models import build_model
from study.flow_matching.trainer import FlowTrainer
from study.runs.recorder import RunRecorder

WORKLOADS = {"2d moons, mlp 3x64": ("moons", 64, 8), "1024-D gmm, mlp 3x1024": ("gmm", 1024, 2)}


def splits_for(name: str):
    if name == "gmm":
        x = gaussian_mixture(4096 + 1024, 1024, 8, torch.Generator().manual_seed(0))
        return x[:4096], x[4096:], None
    splits = resolve_dataset(name, seed=0, val_fraction=0.1)
    return splits.train, splits.val, splits.test


def train(workload: str, precision: str, root: Path) -> tuple[float, float, Path]:
    dataset, width, epochs = WORKLOADS[workload]
    train_x, val_x, _ = splits_for(dataset)
    name = f"{precision}-{time.monotonic_ns()}"
    config = TrainingConfig(dataset=dataset, width=width, epochs=epochs, precision=precision,
                            patience=0, checkpoint_interval=3600.0, run_name=name).validate()
    data = TrainingData.prepare(train_x, val_x)
    torch.manual_seed(0)
    model = build_model("mlp", train_x.shape[1], width=width, depth=3, activation="selu")
    recorder = RunRecorder(root / name, name, wandb_project="bench", wandb_mode="disabled")
    trainer = FlowTrainer(model, config, data, recorder, "cpu", warn=lambda m: None)
    started = time.perf_counter()
    result = trainer.train()
    return result["global_step"] / (time.perf_counter() - started), result["best_val_loss"], \
        root / name / "best.pt"


def sample_w2(checkpoint: Path) -> float:
    _, _, test = splits_for("moons")
    loaded = load_flow_model(checkpoint)
    return statistics.mean(
        wasserstein2(generate(loaded, 2000, solver="rk4", steps=20, seed=seed)[0], test)
        for seed in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"$ python {shlex.join(sys.argv)}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| workload | precision | steps/s | x fp32 | best val loss | W2 (2-D, 3 draws) |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as folder:
        for workload in WORKLOADS:
            runs = {p: [] for p in ("fp32", "bf16")}
            for _ in range(args.repeats):
                for precision in runs:
                    runs[precision].append(train(workload, precision, Path(folder)))
            for precision, results in runs.items():
                rates = [rate for rate, _, _ in results]
                ratio = statistics.median(r / b for r, (b, _, _) in zip(rates, runs["fp32"], strict=True))
                w2 = f"{sample_w2(results[0][2]):.4f}" if workload.startswith("2d") else "-"
                print(f"| {workload} | {precision} | {statistics.median(rates):,.1f} | {ratio:.2f} | "
                      f"{results[0][1]:.4f} | {w2} |")


if __name__ == "__main__":
    main()
