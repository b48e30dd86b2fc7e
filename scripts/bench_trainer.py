"""Optimizer steps per second: FlowTrainer against training loops written by hand.

FlowTrainer wraps the step in bookkeeping for exact resume (seeded generators, a log
window on the device, stage lookups) and a real run's I/O (validation each epoch, last.pt
and best.pt, metrics.csv, run.json). This measures what that costs, in one process:

  bare         the fastest hand-written loop doing FlowTrainer's exact step: one data tensor
               sliced by a seeded randperm per epoch, x_0/t/eps from seeded generators, the
               icfm path, MSE, clip_grad_norm_(foreach), fused AdamW, cosine warmup LambdaLR,
               EMA by torch._foreach_lerp_, loss summed on the device and read every 10 steps.
               Its final weights are checked to be bit-identical to FlowTrainer's. Ratio 1.00.
  naive        a typical loop: DataLoader(shuffle=True), default AdamW, an EMA looping over
               parameters in Python, loss.item() every step.
  flowtrainer  FlowTrainer.train() as a run does it; and "train steps only": the same run's
               wall time minus what it spent in validate() and checkpoint writes.
  lightning    the same step as a LightningModule, only if lightning is installed.

Workloads (CPU, batch 256, icfm, sigma 0.1): `2d` is moons with the 3x64 SELU mlp; `1024d`
an 8-component Gaussian mixture (8192 rows) with a 3x1024 SELU mlp. Every measurement uses a
fresh model from the same seed; building models and trainers is not timed. Each contender is
warmed up once, then the contenders take turns for --repeats rounds so that load from other
processes spreads over all of them; the table gives the median steps/s and its ratio to bare.

Usage: python scripts/bench_trainer.py [--quick] [--workloads 2d,1024d] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import clip_grad_norm_
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

from study.data.dataset import column_stats, resolve_dataset
from study.data.toy import gaussian_mixture
from study.flow_matching.config import TrainingConfig
from study.flow_matching.models import build_model
from study.flow_matching.state import derive_seed
from study.flow_matching.trainer import FlowTrainer
from study.flow_matching.utils import cosine_warmup_factor

SEED, BATCH, LOG_EVERY = 0, 256, 10
LR, WARMUP_STEPS, GRAD_CLIP, EMA_DECAY, SIGMA = 1e-3, 100, 1.0, 0.999, 0.1
WARMUP_BATCHES = 10  # the untimed warm-up: one epoch over this many batches of rows


@dataclass
class Workload:
    name: str
    train_x: torch.Tensor  # raw [N, D]; every contender normalises with its own stats
    val_x: torch.Tensor
    width: int
    epochs: int  # per measurement


@dataclass
class Result:
    steps: int
    seconds: float
    model: torch.nn.Module
    validate_s: float = 0.0  # FlowTrainer only
    save_s: float = 0.0


def make_workload(name: str, quick: bool) -> Workload:
    if name == "2d":  # 20,000 rows: 78 steps per epoch
        splits = resolve_dataset("moons", seed=SEED, val_fraction=0.1)
        return Workload(name, splits.train, splits.val, width=64, epochs=2 if quick else 40)
    if name == "1024d":  # 8192 rows: 32 steps per epoch
        x = gaussian_mixture(8192 + 1024, 1024, 8, torch.Generator().manual_seed(SEED))
        return Workload(name, x[:8192], x[8192:], width=1024, epochs=1 if quick else 3)
    raise SystemExit(f"unknown workload {name!r}; choose from 2d, 1024d")


def fresh_model(work: Workload) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return build_model("mlp", work.train_x.shape[1], width=work.width, depth=3, activation="selu")


def cosine_schedule(optimizer, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: cosine_warmup_factor(step, WARMUP_STEPS, total_steps))


def run_bare(work: Workload, train_x: torch.Tensor, epochs: int) -> Result:
    model = fresh_model(work)
    mean, std = column_stats(train_x)
    data = (train_x - mean) / std
    batches = len(data) // BATCH
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, fused=True)
    scheduler = cosine_schedule(optimizer, epochs * batches)
    ema, live = [p.detach().clone() for p in params], [p.detach() for p in params]
    # The trainer's seeds, so the run is the same one, draw for draw.
    data_gen = torch.Generator().manual_seed(derive_seed(SEED, "data"))
    t_gen = torch.Generator().manual_seed(derive_seed(SEED, "t"))
    noise_gen = torch.Generator().manual_seed(derive_seed(SEED, "noise"))
    loss_sum, norm_sum = torch.zeros(()), torch.zeros(())
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=data_gen)
        for batch in range(batches):
            x_1 = data[order[batch * BATCH:(batch + 1) * BATCH]]
            x_0 = torch.randn(x_1.shape, generator=noise_gen)
            t = torch.rand(BATCH, generator=t_gen)
            eps = torch.randn(x_1.shape, generator=noise_gen)
            x_t = t[:, None] * x_1 + (1 - t[:, None]) * x_0 + SIGMA * eps
            loss = F.mse_loss(model(x_t, t), x_1 - x_0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_grad_norm_(params, GRAD_CLIP, foreach=True)
            optimizer.step()
            scheduler.step()
            torch._foreach_lerp_(ema, live, 1.0 - EMA_DECAY)
            loss_sum += loss.detach()
            norm_sum += grad_norm
            if scheduler.last_epoch % LOG_EVERY == 0:
                _ = (loss_sum / LOG_EVERY).item(), (norm_sum / LOG_EVERY).item()
                loss_sum.zero_()
                norm_sum.zero_()
    return Result(epochs * batches, time.perf_counter() - started, model)


def run_naive(work: Workload, train_x: torch.Tensor, epochs: int) -> Result:
    model = fresh_model(work)
    mean, std = column_stats(train_x)
    loader = DataLoader(TensorDataset((train_x - mean) / std), batch_size=BATCH, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(SEED))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    scheduler = cosine_schedule(optimizer, epochs * len(loader))
    ema_model = copy.deepcopy(model)
    losses = []
    started = time.perf_counter()
    for _ in range(epochs):
        for (x_1,) in loader:
            x_0, t, eps = torch.randn_like(x_1), torch.rand(len(x_1)), torch.randn_like(x_1)
            x_t = t[:, None] * x_1 + (1 - t[:, None]) * x_0 + SIGMA * eps
            loss = F.mse_loss(model(x_t, t), x_1 - x_0)
            optimizer.zero_grad()
            loss.backward()
            clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                for p_ema, p in zip(ema_model.parameters(), model.parameters()):
                    p_ema.mul_(EMA_DECAY).add_(p, alpha=1 - EMA_DECAY)
            losses.append(loss.item())
    return Result(epochs * len(loader), time.perf_counter() - started, model)


class TimedTrainer(FlowTrainer):
    """FlowTrainer that adds up the seconds it spends in validate() and checkpoint writes."""

    validate_s = save_s = 0.0

    def validate(self, stage=None) -> float:
        started = time.perf_counter()
        try:
            return super().validate(stage)
        finally:
            self.validate_s += time.perf_counter() - started

    def _save(self, names: list[str]) -> None:
        started = time.perf_counter()
        try:
            super()._save(names)
        finally:
            self.save_s += time.perf_counter() - started


def run_flowtrainer(work: Workload, train_x: torch.Tensor, epochs: int, ckpt_root: Path) -> Result:
    run_flowtrainer.count = getattr(run_flowtrainer, "count", 0) + 1
    config = TrainingConfig(dataset=work.name, run_name=f"bench-{work.name}-{run_flowtrainer.count}",
                            epochs=epochs, batch_size=BATCH, lr=LR, warmup_steps=WARMUP_STEPS,
                            patience=0, seed=SEED, grad_clip=GRAD_CLIP, ema_decay=EMA_DECAY,
                            sigma=SIGMA, log_every=LOG_EVERY, width=work.width)
    trainer = TimedTrainer(fresh_model(work), config, train_x, work.val_x, "cpu",
                           wandb_mode="disabled", ckpt_root=ckpt_root)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    steps = epochs * (len(train_x) // BATCH)
    assert result["global_step"] == steps, f"expected {steps} steps, got {result['global_step']}"
    for path in trainer.run_dir.iterdir():  # 1024d checkpoints are ~70 MB each
        path.unlink()
    return Result(steps, seconds, trainer.model, trainer.validate_s, trainer.save_s)


def import_lightning():
    for name in ("lightning", "pytorch_lightning"):
        try:
            return __import__(name)
        except ImportError:
            pass
    return None


def run_lightning(lightning, work: Workload, train_x: torch.Tensor, epochs: int) -> Result:
    """The same step as a LightningModule (untested here: lightning was not installed)."""
    class FlowModule(lightning.LightningModule):
        def __init__(self, model, total_steps):
            super().__init__()
            self.model, self.total_steps = model, total_steps
            self.ema = [p.detach().clone() for p in model.parameters()]

        def training_step(self, batch, batch_idx):
            (x_1,) = batch
            x_0, t, eps = torch.randn_like(x_1), torch.rand(len(x_1)), torch.randn_like(x_1)
            x_t = t[:, None] * x_1 + (1 - t[:, None]) * x_0 + SIGMA * eps
            return F.mse_loss(self.model(x_t, t), x_1 - x_0)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            live = [p.detach() for p in self.model.parameters()]
            torch._foreach_lerp_(self.ema, live, 1.0 - EMA_DECAY)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.0, fused=True)
            return {"optimizer": optimizer, "lr_scheduler": {
                "scheduler": cosine_schedule(optimizer, self.total_steps), "interval": "step"}}

    mean, std = column_stats(train_x)
    loader = DataLoader(TensorDataset((train_x - mean) / std), batch_size=BATCH, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(SEED))
    module = FlowModule(fresh_model(work), epochs * len(loader))
    trainer = lightning.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=GRAD_CLIP,
        log_every_n_steps=LOG_EVERY, num_sanity_val_steps=0)
    started = time.perf_counter()
    trainer.fit(module, loader)
    return Result(epochs * len(loader), time.perf_counter() - started, module.model)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def bench_workload(work: Workload, contenders: dict, repeats: int) -> list[tuple]:
    """Warm up, then `repeats` interleaved rounds; rows of (contender, rates, note)."""
    warm_x = work.train_x[:WARMUP_BATCHES * BATCH]
    for run in contenders.values():
        run(work, warm_x, 1)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    rates["flowtrainer (train steps only)"] = []
    first: dict[str, Result] = {}
    overhead = {"validate": 0.0, "checkpoints": 0.0, "wall": 0.0}
    for _ in range(repeats):
        for name, run in contenders.items():
            result = run(work, work.train_x, work.epochs)
            first.setdefault(name, result)
            rates[name].append(result.steps / result.seconds)
            if name == "flowtrainer":
                busy = result.seconds - result.validate_s - result.save_s
                rates["flowtrainer (train steps only)"].append(result.steps / busy)
                overhead["validate"] += result.validate_s
                overhead["checkpoints"] += result.save_s
                overhead["wall"] += result.seconds
    same = all(torch.equal(a, b) for a, b in zip(first["bare"].model.state_dict().values(),
                                                 first["flowtrainer"].model.state_dict().values()))
    notes = {"bare": f"{first['bare'].steps} steps/run; weights "
                     + ("bit-identical to flowtrainer" if same else "DIFFER from flowtrainer"),
             "flowtrainer": f"validate {overhead['validate'] / overhead['wall']:.1%}, "
                            f"checkpoints {overhead['checkpoints'] / overhead['wall']:.1%} of wall"}
    return [(name, values, notes.get(name, "")) for name, values in rates.items()]


def print_table(rows: list[tuple]) -> None:
    header = ("workload", "contender", "steps/s", "x bare", "spread", "note")
    table = []
    for workload, name, values, base, note in rows:
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median if len(values) > 1 else 0.0
        table.append((workload, name, f"{median:,.1f}", f"{median / base:.2f}", f"{spread:.0%}", note))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
        for r in [header, *table]:
            print("  ".join(str(cell).ljust(width) for cell, width in zip(r, widths)).rstrip())
        return
    rich_table = Table(*header)
    for r in table:
        rich_table.add_row(*r)
    Console().print(rich_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="2d,1024d", help="comma-separated: 2d, 1024d")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="few steps, to check the script runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (torch's default)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # DataLoader/Lightning advice about workers
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

    print(f"$ python {shlex.join(sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, repeats {repeats}")
    lightning = import_lightning()
    if lightning is None:
        print("lightning not installed (skipped)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as ckpt_root:
        contenders = {
            "bare": run_bare,
            "naive": run_naive,
            "flowtrainer": lambda w, x, e: run_flowtrainer(w, x, e, Path(ckpt_root)),
        }
        if lightning is not None:
            contenders["lightning"] = lambda w, x, e: run_lightning(lightning, w, x, e)
        for name in args.workloads.split(","):
            work = make_workload(name.strip(), args.quick)
            print(f"running {work.name}: {work.epochs} epoch(s) x {len(work.train_x) // BATCH} steps",
                  flush=True)
            results = bench_workload(work, contenders, repeats)
            base = statistics.median(results[0][1])
            rows += [(work.name, contender, values, base, note) for contender, values, note in results]
    print_table(rows)


if __name__ == "__main__":
    main()
