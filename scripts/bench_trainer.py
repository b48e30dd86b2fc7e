"""Optimizer steps per second: FlowTrainer against training loops written by hand.

FlowTrainer wraps the step in bookkeeping for exact resume and a real run's I/O (validation
each epoch, last.pt/best.pt, metrics.csv, run.json). What does that cost? In one process:
  bare         the fastest hand-written loop doing FlowTrainer's exact step (one data tensor
               cut by a seeded randperm, seeded x_0/t/eps, icfm, MSE, foreach clipping, fused
               AdamW, cosine warmup, foreach EMA, loss read every 10 steps); its final weights
               are checked bit-identical to FlowTrainer's. The baseline: ratio 1.00.
  bare + val + ckpt  the same loop plus the rest of a real run's work: the EMA weights' val
               loss every epoch and a durable last.pt/best.pt at the end ("x bare+io").
  naive        a typical loop: DataLoader(shuffle=True), default AdamW, a Python-loop EMA,
               loss.item() every step.
  flowtrainer  FlowTrainer.train(), all of it; "steps only" subtracts validate() and checkpoints.
  lightning    the same step as a LightningModule, if lightning is installed.
Workloads (CPU, batch 256, icfm): `2d` is moons with a 3x64 SELU mlp, `1024d` a Gaussian
mixture (4096 rows: 16-step epochs, 4 of them; `1024d-long`: 20) with a 3x1024 one. `flowtrainer` runs with the default
checkpoint budget (--checkpoint-interval 30), `flowtrainer, ckpt every epoch` with 0,
`flowtrainer, val_every 4` validating every 4th epoch (and the last). Each measurement trains a fresh model from one seed
(building it is not timed); after a warm-up the contenders take turns for --repeats rounds, so
load from other processes spreads over all of them. Reported: median steps/s, and the median over rounds of the ratio to bare in the same round.

Usage: python scripts/bench_trainer.py [--quick] [--workloads 2d,1024d] [--repeats 3] [--threads N]

(~380 lines: each contender's loop is written out whole, so that what is timed can be read.)
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
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
from rich.console import Console
from rich.table import Table
from torch.nn.utils import clip_grad_norm_
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, TensorDataset

from study.data.dataset import column_stats, resolve_dataset
from study.data.toy import gaussian_mixture
from study.flow_matching.config import TrainingConfig
from study.flow_matching.models import build_model
from study.flow_matching.trainer import FlowTrainer
from study.flow_matching.utils import cosine_warmup_factor
from study.runs.checkpoint import serialize_into, write_atomic
from study.seeds import stream_seed

SEED, BATCH, LOG_EVERY = 0, 256, 10
LR, WARMUP_STEPS, GRAD_CLIP, EMA_DECAY, SIGMA = 1e-3, 100, 1.0, 0.999, 0.1
WARM_UP_BATCHES = 4  # the untimed warm-up: one epoch over this many batches of rows


@dataclass
class Workload:
    name: str
    train_x: torch.Tensor  # raw [N, D]; each contender normalises with the train stats
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
        return Workload(name, splits.train, splits.val, 64, 1 if quick else 40)
    if name in ("1024d", "1024d-long"):  # 4096 rows: 16 steps per epoch (--quick: 2048, 8)
        rows = 2048 if quick else 4096
        x = gaussian_mixture(rows + 1024, 1024, 8, torch.Generator().manual_seed(SEED))
        epochs = 1 if quick else 4 if name == "1024d" else 20
        return Workload(name, x[:rows], x[rows:], 1024, epochs)
    raise SystemExit(f"unknown workload {name!r}; choose from 2d, 1024d, 1024d-long")


def fresh_model(work: Workload) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return build_model("mlp", work.train_x.shape[1], width=work.width, depth=3, activation="selu")


def cosine_schedule(optimizer, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: cosine_warmup_factor(step, WARMUP_STEPS, total_steps))


def shuffled_loader(train_x: torch.Tensor) -> DataLoader:
    mean, std = column_stats(train_x)
    return DataLoader(TensorDataset((train_x - mean) / std), batch_size=BATCH, shuffle=True,
                      drop_last=True, generator=torch.Generator().manual_seed(SEED))


def icfm_loss(model: torch.nn.Module, x_1: torch.Tensor) -> torch.Tensor:
    """The icfm regression loss as most scripts write it (global RNG)."""
    x_0, t, eps = torch.randn_like(x_1), torch.rand(len(x_1)), torch.randn_like(x_1)
    x_t = t[:, None] * x_1 + (1 - t[:, None]) * x_0 + SIGMA * eps
    return F.mse_loss(model(x_t, t), x_1 - x_0)


def run_bare(work: Workload, train_x: torch.Tensor, epochs: int,
             ckpt_root: Path | None = None) -> Result:
    """The bare loop; with `ckpt_root` ("bare + val + ckpt") also the work a real run asks for
    and FlowTrainer does: after every epoch the val loss of the EMA weights on fixed draws,
    and at the end the state (weights, EMA, AdamW) written durably as last.pt and best.pt."""
    model = fresh_model(work)
    mean, std = column_stats(train_x)
    data = (train_x - mean) / std
    batches = len(data) // BATCH
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, fused=True)
    scheduler = cosine_schedule(optimizer, epochs * batches)
    ema, live = [p.detach().clone() for p in params], [p.detach() for p in params]
    # FlowTrainer's seeds, so that this is the same run, draw for draw.
    data_gen, t_gen, noise_gen = (torch.Generator().manual_seed(stream_seed(SEED, purpose))
                                  for purpose in ("data", "t", "noise"))
    val = fixed_val_draws((work.val_x - mean) / std) if ckpt_root else None
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
            if scheduler.last_epoch % LOG_EVERY == 0:  # the only host syncs
                _ = (loss_sum / LOG_EVERY).item(), (norm_sum / LOG_EVERY).item()
                loss_sum.zero_()
                norm_sum.zero_()
        if val is not None:
            _ = val_loss(model, live, ema, val)
    if ckpt_root is not None:
        state = {"model": model.state_dict(), "ema": ema, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict()}
        folder = ckpt_root / f"bare-{time.monotonic_ns()}"
        write_atomic(folder / "last.pt", functools.partial(serialize_into, state),
                     also=(folder / "best.pt",))
    return Result(epochs * batches, time.perf_counter() - started, model)


def fixed_val_draws(val_x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """(x_0, x_1, t, eps) batches of the held-out rows, drawn once (as FlowTrainer does)."""
    generator = torch.Generator().manual_seed(SEED)
    x_0, t = torch.randn(val_x.shape, generator=generator), torch.rand(len(val_x), generator=generator)
    eps = torch.randn(val_x.shape, generator=generator)
    return [tuple(part[i:i + BATCH] for part in (x_0, val_x, t, eps)) for i in range(0, len(val_x), BATCH)]


@torch.no_grad()
def val_loss(model: torch.nn.Module, live: list, ema: list, draws: list) -> float:
    """The icfm MSE of the EMA weights on `draws` (swapped into `model` and back)."""
    backup = [p.clone() for p in live]
    torch._foreach_copy_(live, ema)
    model.eval()
    total = torch.zeros(())
    for x_0, x_1, t, eps in draws:
        x_t = t[:, None] * x_1 + (1 - t[:, None]) * x_0 + SIGMA * eps
        total += F.mse_loss(model(x_t, t), x_1 - x_0, reduction="sum") / x_1.shape[-1]
    model.train()
    torch._foreach_copy_(live, backup)
    return (total / sum(len(d[1]) for d in draws)).item()


def run_naive(work: Workload, train_x: torch.Tensor, epochs: int) -> Result:
    model, loader = fresh_model(work), shuffled_loader(train_x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    scheduler = cosine_schedule(optimizer, epochs * len(loader))
    ema, losses = [p.detach().clone() for p in model.parameters()], []
    started = time.perf_counter()
    for _ in range(epochs):
        for (x_1,) in loader:
            loss = icfm_loss(model, x_1)
            optimizer.zero_grad()
            loss.backward()
            clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                for p_ema, p in zip(ema, model.parameters(), strict=True):
                    p_ema.mul_(EMA_DECAY).add_(p, alpha=1 - EMA_DECAY)
            losses.append(loss.item())
    return Result(epochs * len(loader), time.perf_counter() - started, model)


class TimedTrainer(FlowTrainer):
    """FlowTrainer that adds up the seconds the training thread spends validating and on
    checkpoints (the policy's snapshots, and waiting for the writer thread at the end)."""

    validate_s = save_s = 0.0
    timing = False

    def time_parts(self) -> None:
        for owner, name, total in ((self, "validate", "validate_s"),
                                   (self.checkpoints, "after_step", "save_s"),
                                   (self.checkpoints, "finish", "save_s"),
                                   (self.recorder, "flush", "save_s")):
            call = getattr(owner, name)

            def timed(*args, call=call, total=total, **kwargs):
                if self.timing:  # nested (a checkpoint write waits in flush): counted once
                    return call(*args, **kwargs)
                self.timing, started = True, time.perf_counter()
                try:
                    return call(*args, **kwargs)
                finally:
                    self.timing = False
                    setattr(self, total, getattr(self, total) + time.perf_counter() - started)

            setattr(owner, name, timed)


def run_flowtrainer(work: Workload, train_x: torch.Tensor, epochs: int, ckpt_root: Path,
                    checkpoint_interval: float = 30.0, val_every: int = 1) -> Result:
    config = TrainingConfig(dataset=work.name, run_name=f"bench-{work.name}-{time.monotonic_ns()}",
                            epochs=epochs, batch_size=BATCH, lr=LR, warmup_steps=WARMUP_STEPS,
                            patience=0, seed=SEED, grad_clip=GRAD_CLIP, ema_decay=EMA_DECAY,
                            sigma=SIGMA, log_every=LOG_EVERY, width=work.width,
                            checkpoint_interval=checkpoint_interval, val_every=val_every)
    trainer = TimedTrainer(fresh_model(work), config, train_x, work.val_x, "cpu",
                           wandb_mode="disabled", ckpt_root=ckpt_root)
    trainer.time_parts()
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    # Run folders stay until the benchmark ends: on this machine's ext4 (mounted with online
    # discard) deleting a 67 MB checkpoint stalls the next large write for ~0.15 s a few
    # seconds later, i.e. inside the next contender's measurement.
    return Result(result["global_step"], seconds, trainer.model, trainer.validate_s, trainer.save_s)


def run_lightning(lightning, work: Workload, train_x: torch.Tensor, epochs: int) -> Result:
    """The same step as a LightningModule (not run by the author: lightning was not installed)."""
    class FlowModule(lightning.LightningModule):
        def __init__(self, model, total_steps):
            super().__init__()
            self.model, self.total_steps = model, total_steps
            self.ema = [p.detach().clone() for p in model.parameters()]

        def training_step(self, batch, batch_idx):
            return icfm_loss(self.model, batch[0])

        def on_train_batch_end(self, outputs, batch, batch_idx):
            live = [p.detach() for p in self.model.parameters()]
            torch._foreach_lerp_(self.ema, live, 1.0 - EMA_DECAY)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.0, fused=True)
            return {"optimizer": optimizer, "lr_scheduler": {
                "scheduler": cosine_schedule(optimizer, self.total_steps), "interval": "step"}}

    loader = shuffled_loader(train_x)
    module = FlowModule(fresh_model(work), epochs * len(loader))
    trainer = lightning.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=GRAD_CLIP,
        log_every_n_steps=LOG_EVERY, num_sanity_val_steps=0)
    started = time.perf_counter()
    trainer.fit(module, loader)
    return Result(epochs * len(loader), time.perf_counter() - started, module.model)


def bench_workload(work: Workload, contenders: dict, repeats: int) -> list[tuple]:
    """Warm up, then `repeats` interleaved rounds; rows of (contender, steps/s values, note)."""
    for run in contenders.values():
        run(work, work.train_x[:WARM_UP_BATCHES * BATCH], 1)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    rates["flowtrainer (steps only)"] = []
    first: dict[str, Result] = {}
    validate_s = save_s = wall_s = 0.0
    for _ in range(repeats):
        for name, run in contenders.items():
            result = run(work, work.train_x, work.epochs)
            first.setdefault(name, result)
            rates[name].append(result.steps / result.seconds)
            if name == "flowtrainer":
                steps_only_s = result.seconds - result.validate_s - result.save_s
                rates["flowtrainer (steps only)"].append(result.steps / steps_only_s)
                validate_s, save_s = validate_s + result.validate_s, save_s + result.save_s
                wall_s += result.seconds
    bare, ours = first["bare"].model.state_dict(), first["flowtrainer"].model.state_dict()
    same = all(torch.equal(bare[key], ours[key]) for key in bare)
    notes = {"bare": f"{first['bare'].steps} steps; weights "
                     + ("== flowtrainer's" if same else "DIFFER from flowtrainer's"),
             "flowtrainer": f"validate {validate_s / wall_s:.1%}, ckpt {save_s / wall_s:.1%} of wall"}
    return [(name, values, notes.get(name, "")) for name, values in rates.items()]


def print_table(rows: list[tuple]) -> None:
    # "x bare": the median over rounds of (this contender / bare in the same round); "x bare+io"
    # the same against "bare + val + ckpt" (the same work as a real run). Rounds interleave
    # the contenders, so a paired ratio cancels most of the machine's drift.
    def ratio(values, base):
        return f"{statistics.median(v / b for v, b in zip(values, base, strict=True)):.2f}"

    header = ("workload", "contender", "steps/s", "x bare", "x bare+io", "spread", "note")
    rich_table = Table(*header)
    for workload, name, values, base, io_base, note in rows:
        rich_table.add_row(workload, name, f"{statistics.median(values):,.1f}", ratio(values, base),
                           ratio(values, io_base),
                           f"{(max(values) - min(values)) / statistics.median(values):.0%}", note)
    Console(width=None if sys.stdout.isatty() else 130).print(rich_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="2d,1024d",
                        help="comma-separated: 2d, 1024d, 1024d-long")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a few steps, to check the script runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (torch's default)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # DataLoader/Lightning advice about workers
    for name in ("lightning", "pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)

    print(f"$ python {shlex.join(sys.argv)}")
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu} "
          f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}), repeats {repeats}")
    lightning = next((importlib.import_module(name) for name in ("lightning", "pytorch_lightning")
                      if importlib.util.find_spec(name)), None)
    if lightning is None:
        print("lightning not installed (skipped)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as ckpt_root:
        contenders = {"bare": run_bare,
                      "bare + val + ckpt": lambda w, x, e: run_bare(w, x, e, Path(ckpt_root)),
                      "naive": run_naive,
                      "flowtrainer": lambda w, x, e: run_flowtrainer(w, x, e, Path(ckpt_root)),
                      "flowtrainer, ckpt every epoch": lambda w, x, e: run_flowtrainer(
                          w, x, e, Path(ckpt_root), checkpoint_interval=0.0),
                      "flowtrainer, val_every 4": lambda w, x, e: run_flowtrainer(
                          w, x, e, Path(ckpt_root), val_every=4)}
        if lightning is not None:
            contenders["lightning"] = lambda w, x, e: run_lightning(lightning, w, x, e)
        for name in args.workloads.split(","):
            work = make_workload(name.strip(), args.quick)
            print(f"{work.name}: {work.epochs} epoch(s) x {len(work.train_x) // BATCH} steps "
                  f"per measurement", flush=True)
            results = bench_workload(work, contenders, repeats)
            base, io_base = results[0][1], results[1][1]  # bare's and bare + val + ckpt's, by round
            rows += [(work.name, contender, values, base, io_base, note)
                     for contender, values, note in results]
    print_table(rows)


if __name__ == "__main__":
    main()
