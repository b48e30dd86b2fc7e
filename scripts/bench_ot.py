"""OT-CFM against I-CFM steps/s: how much of the exact OT solve the pairing workers hide.

For each 2-D toy and batch size, in one process, interleaved round by round: `icfm`, `otcfm`
pairing on the critical path (--pairing-workers 0), and `otcfm` with 1..W workers solving the
next batches' plans on threads while the step trains. Each contender trains the same number
of optimizer steps from the same seed (FlowTrainer.train(), validation and checkpoints
included; the checkpoint budget keeps writes to the end). Reported: median steps/s and the
median over rounds of the ratio to icfm in the same round. Also the exact-OT solve time alone.

Usage: python scripts/bench_ot.py [--datasets 8gaussians,moons] [--batches 256,1024]
                                  [--steps 400] [--repeats 3] [--workers 0,1,2] [--threads 1]
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
from rich.console import Console
from rich.table import Table

from study.data.dataset import resolve_dataset
from study.data.training_data import TrainingData
from study.flow_matching.config import TrainingConfig
from study.flow_matching.models import build_model
from study.flow_matching.ot_plans import exact_ot_permutation
from study.flow_matching.trainer import FlowTrainer
from study.runs.recorder import RunRecorder


def train_rate(dataset: str, batch: int, steps: int, flow: str, workers: int, root: Path) -> float:
    splits = resolve_dataset(dataset, seed=0, val_fraction=0.1)
    epochs = max(1, steps // (len(splits.train) // batch))
    config = TrainingConfig(flow=flow, dataset=dataset, batch_size=batch, epochs=epochs,
                            patience=0, checkpoint_interval=3600.0,
                            run_name=f"{flow}-{workers}-{time.monotonic_ns()}").validate()
    data = TrainingData.prepare(splits.train, splits.val, stats=splits.normalization_stats())
    torch.manual_seed(0)
    model = build_model("mlp", 2, width=64, depth=3, activation="selu")
    recorder = RunRecorder(root / config.name, config.name, wandb_project="bench",
                           wandb_mode="disabled")
    trainer = FlowTrainer(model, config, data, recorder, "cpu",
                                     pairing_workers=workers, warn=lambda message: None)
    started = time.perf_counter()
    result = trainer.train()
    return result["global_step"] / (time.perf_counter() - started)


def solve_ms(batch: int, repeats: int = 10) -> float:
    generator = torch.Generator().manual_seed(0)
    x_0, x_1 = torch.randn(batch, 2, generator=generator), torch.randn(batch, 2, generator=generator)
    exact_ot_permutation(x_0, x_1)
    started = time.perf_counter()
    for _ in range(repeats):
        exact_ot_permutation(x_0, x_1)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="8gaussians,moons")
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2", help="otcfm pairing workers to compare")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"$ python {shlex.join(sys.argv)}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    table = Table("dataset", "batch", "contender", "steps/s", "x icfm", "spread")
    with tempfile.TemporaryDirectory(prefix="bench-ot-") as folder:
        for dataset in args.datasets.split(","):
            for batch in map(int, args.batches.split(",")):
                contenders = [("icfm", 0)] + [("otcfm", int(w)) for w in args.workers.split(",")]
                rates = {c: [] for c in contenders}
                train_rate(dataset, batch, 40, "otcfm", 1, Path(folder))  # warm-up
                for _ in range(args.repeats):
                    for flow, workers in contenders:
                        rates[(flow, workers)].append(
                            train_rate(dataset, batch, args.steps, flow, workers, Path(folder)))
                base = rates[("icfm", 0)]
                for (flow, workers), values in rates.items():
                    label = flow if flow == "icfm" else f"otcfm, {workers} worker(s)"
                    ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
                    table.add_row(dataset, str(batch), label, f"{statistics.median(values):,.0f}",
                                  f"{ratio:.2f}",
                                  f"{(max(values) - min(values)) / statistics.median(values):.0%}")
                table.add_row(dataset, str(batch), "one exact OT solve", f"{solve_ms(batch):.1f} ms",
                              "", "")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
