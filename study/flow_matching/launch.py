"""From a config (or a checkpoint) to a finished run: lock, data, model, trainer, train.

Shared by `flowctl train`, `flowctl resume` and the study's `python -m
study.flow_matching.train`. The run folder is computed once and its lock is taken before anything else is decided, and
held for the whole run (`--overwrite` included), so a run that is training now is named
as such and nothing can slip in between two steps. Which checkpoint and config a resume
continues is resume.py's business.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.flow_matching.config import TrainingConfig, assign_network
from study.flow_matching.resume import AlreadyCompleted, ResumePoint, check_resume
from study.runs.paths import (
    BEST_NAME,
    LAST_NAME,
    METRICS_CSV,
    RUN_JSON,
    checkpoint_root,
    run_dir,
)
from study.runtime.cores import cpu_share

log = logging.getLogger("flowctl")


@dataclass
class RunOptions:
    """How to run, as opposed to what to train (not stored in the config)."""

    ckpt_dir: str | None = None
    device: str = "auto"
    wandb_project: str = "flow-matching-study"
    wandb_mode: str | None = None
    overwrite: bool = False
    requeue_signal: str | None = None
    tensorboard: bool = False
    strict_world_size: bool = False  # refuse to resume on another number of processes
    pairing_workers: int | None = None  # OT plans solved ahead; None: auto (see pairing_workers)
    threads: int | None = None  # CPU intra-op threads; None: auto (device.set_cpu_threads)
    trackers: tuple[str, ...] | None = None  # --tracker (None: the defaults; (): none)
    progress: Any = None


def pairing_workers(config: TrainingConfig, asked: int | None) -> int:
    """Threads that solve OT plans ahead of the step: `asked`, else for OT-based flows one
    per spare core up to 4 (POT releases the GIL while it solves), else none."""
    if asked is not None:
        if asked < 0:
            raise UsageError(f"--pairing-workers must be >= 0, got {asked}")
        return asked
    from study.flow_matching.flows import FLOWS  # torch: only when a run is built

    if not any(FLOWS[name].solves_a_plan for name in config.flows_used()):
        return 0
    return max(1, min(4, cpu_share() - 1))


def clear_run(folder: Path) -> None:
    """Remove what a previous run left in `folder` (for --overwrite)."""
    for name in (BEST_NAME, LAST_NAME, RUN_JSON, METRICS_CSV):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "wandb", ignore_errors=True)


def run_training(config: TrainingConfig, options: RunOptions, *,
                 resume: ResumePoint | None = None, warn=print) -> dict[str, Any]:
    """Lock the run folder, check what is there, build everything, train; returns
    FlowTrainer.train()'s result dict. AlreadyCompleted when the checkpoint needs no work.

    A single process takes the lock before torch is imported: a second `train` of a live run
    is refused in a fraction of a second. Under torchrun, rank 0 takes the lock and decides
    (fresh, overwrite, resume, nothing to do, or an error); the other ranks follow its
    decision and only read."""
    from study.runs.lock import RunLock
    from study.runtime.ranks import is_main_process, world_size

    root = checkpoint_root(options.ckpt_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"checkpoint root {root} is a file, not a folder; pass another --ckpt-dir")
    main = is_main_process()
    if not main:
        warn = _silent
        logging.getLogger("flowctl").setLevel(logging.WARNING)
    folder = run_dir(config.name, options.ckpt_dir)
    created = not folder.exists()
    lock = RunLock(folder, config.name)
    try:
        if world_size() == 1:
            lock.acquire(warn=warn)  # first: a live owner is the one thing to report
        return _decide_and_train(config, options, folder, lock, resume, warn, main=main)
    finally:
        lock.release()
        if created and main:  # bad input before anything was written: no empty run folder
            with contextlib.suppress(OSError):
                folder.rmdir()


def _decide_and_train(config: TrainingConfig, options: RunOptions, folder: Path, lock,
                      resume: ResumePoint | None, warn, *, main: bool) -> dict[str, Any]:
    """Join the process group; rank 0 (`main`) decides what the folder holds, every rank
    trains."""
    from study.runtime import distributed
    from study.runtime.device import resolve_device
    from study.runtime.ranks import world_size

    device = resolve_device(options.device)
    distributed.init_process_group(device)
    try:
        outcome: BaseException | None = None
        if main:
            try:
                if not lock.held:
                    lock.acquire(warn=warn)  # rank 0 of several: the refusal goes to all
                resume = _prepare_folder(folder, config, options, resume, warn)
            except (UsageError, AlreadyCompleted) as error:
                outcome = error
        outcome = distributed.broadcast_from_main(outcome)
        if outcome is not None:
            raise outcome
        if not main and resume is not None:
            resume = check_resume(resume, config, processes=world_size(),
                                  strict_world_size=options.strict_world_size, warn=warn)
        assign_network(config, warn=warn)
        return _build_and_train(config, options, folder, lock, resume, device, warn)
    finally:
        distributed.shutdown()


def _silent(message: str) -> None:
    """The other ranks' `warn`: rank 0 says it once."""


def _prepare_folder(folder: Path, config: TrainingConfig, options: RunOptions,
                    resume: ResumePoint | None, warn) -> ResumePoint | None:
    if resume is None:
        _claim_fresh_folder(folder, config.name, options.overwrite)
        return None
    from study.runtime.ranks import world_size

    return check_resume(resume, config, processes=world_size(),
                        strict_world_size=options.strict_world_size, warn=warn)


def _claim_fresh_folder(folder: Path, name: str, overwrite: bool) -> None:
    if any((folder / n).is_file() for n in (BEST_NAME, LAST_NAME)):
        if not overwrite:
            raise UsageError(f"run {name} already has checkpoints in {folder}; continue it "
                             f"with `flowctl resume {name}` or pass --overwrite to start over")
        clear_run(folder)


def _build_and_train(config: TrainingConfig, options: RunOptions, folder: Path, lock,
                     resume: ResumePoint | None, device, warn) -> dict[str, Any]:
    import torch

    from study.data.dataset import resolve_dataset
    from study.data.normalize import normalization_stats
    from study.data.training_data import TrainingData
    from study.flow_matching.networks import build_network, record_network
    from study.flow_matching.precision import check_precision
    from study.flow_matching.progress import SilentProgress
    from study.flow_matching.trainer import FlowTrainer
    from study.flow_matching.user_metrics import user_metric
    from study.runs.recorder import RunRecorder
    from study.runtime.cores import set_cpu_threads
    from study.runtime.ranks import is_main_process, world_size
    from study.signals import GracefulStop, parse_signal

    check_precision(config.precision, device)
    if config.batch_size % (world_size() * config.grad_accum):
        raise UsageError(f"--batch-size {config.batch_size} (the global batch) must split into "
                         f"{world_size()} process(es) x {config.grad_accum} micro-batch(es)")
    splits = resolve_dataset(config.dataset, seed=config.seed, val_fraction=config.val_fraction,
                             min_rows=config.batch_size, args=config.dataset_args)
    train_x0 = val_x0 = None
    if "reflow" in config.flows_used():
        from study.flow_matching.reflow import coupled_sources

        train_x0, val_x0, splits = coupled_sources(config, splits, folder, device, warn=warn)
    saved = (resume.payload.get("normalization_stats") or {}) if resume else {}
    if _stats_fit(saved, splits.dim):  # a resume goes on in the space it trained in
        stats = dict(saved)
    else:
        stats = (splits.normalization_stats() if config.normalize == "standard"
                 else normalization_stats(splits.train, config.normalize))
    data = TrainingData.prepare(splits.train, splits.val, device=device, stats=stats,
                                checksum=splits.checksum, train_x0=train_x0, val_x0=val_x0,
                                heldout=splits.test, files=splits.files)
    record_network(config)  # before anything is written: run.json and checkpoints hold it
    user_metric(config)  # a bad --eval-fn fails now, not at the first evaluation
    torch.manual_seed(config.seed)  # model initialisation; all later draws use generators
    model = build_network(config, splits.dim, warn=warn, run=config.name)
    set_cpu_threads(device, sum(p.numel() for p in model.parameters()), options.threads)
    recorder = RunRecorder(folder, config.name, wandb_project=options.wandb_project,
                           wandb_mode=options.wandb_mode,
                           enabled=is_main_process(), tensorboard=options.tensorboard,
                           trackers=options.trackers, lock=lock, warn=warn)
    trainer = FlowTrainer(
        model, config, data, recorder, device,
        resume=resume.payload if resume else None, resume_source=resume.path if resume else None,
        progress=options.progress if is_main_process() else SilentProgress(),
        stop=GracefulStop(parse_signal(options.requeue_signal)),
        pairing_workers=pairing_workers(config, options.pairing_workers),
        warn=warn)
    return trainer.train()


def _stats_fit(stats: dict[str, Any], dim: int) -> bool:
    """Whether a checkpoint's normalisation stats are mean and std tensors of `dim` values
    (else the data's own are computed; a dimension mismatch is refused by the trainer)."""
    import torch

    return all(isinstance(stats.get(key), torch.Tensor) and stats[key].numel() == dim
               for key in ("mean", "std"))
