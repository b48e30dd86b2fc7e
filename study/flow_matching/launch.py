"""From a config (or a checkpoint) to a finished run: lock, data, model, trainer, train.

Shared by `flowctl train`, `flowctl resume` and `python -m study.flow_matching.train`. The
run folder is computed once and its lock is taken before anything else is decided, and
held for the whole run (`--overwrite` included), so a run that is training now is named
as such and nothing can slip in between two steps.

Resume rules: the checkpoint's config wins; a flag that would change the model, the data
or the optimisation is an error; a harmless one (epochs, patience, log_every, save_every,
group) wins with one printed line. `--epochs` is always the total target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.flow_matching.config import ARCH_NAMES, TrainingConfig
from study.flow_matching.config_load import NESTED, config_from_checkpoint
from study.runs.paths import (
    BEST_NAME,
    LAST_FIRST,
    LAST_NAME,
    METRICS_CSV,
    RUN_JSON,
    checkpoint_root,
    find_checkpoint,
    run_dir,
)
from study.secrets import mask_secrets

log = logging.getLogger("flowctl")

HARMLESS_OVERRIDES = ("epochs", "patience", "log_every", "save_every", "group")


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
    progress: Any = None


@dataclass
class ResumePoint:
    """A checkpoint to continue from: its file and its payload, read once."""

    path: Path
    payload: dict[str, Any] = field(repr=False)
    mtime_ns: int = 0  # the file's mtime when it was read


class AlreadyCompleted(Exception):
    """The checkpoint already reached the target epochs; nothing to do (exit 0)."""


def read_resume_point(path: Path) -> ResumePoint:
    from study.runs.checkpoint import read_checkpoint

    mtime_ns = path.stat().st_mtime_ns
    return ResumePoint(path, read_checkpoint(path), mtime_ns)


def resume_file(target: str | Path, ckpt_dir: str | None, warn=print) -> Path:
    """The file to continue `target` from: last.pt first. A run's best.pt given as a file
    means its newest state: last.pt beside it, when that is a newer write."""
    path = find_checkpoint(target, ckpt_dir, prefer=LAST_FIRST)
    last = path.with_name(LAST_NAME)
    if path.name == BEST_NAME and last.is_file() and not last.samefile(path):
        warn(f"resuming from {last}, the latest state of this run ({path.name} is older); "
             "continue from best.pt itself by copying it to a new run folder")
        return last
    return path


def config_for_resume(payload: dict, path: Path, overrides: dict[str, Any],
                      warn=print) -> TrainingConfig:
    """The checkpoint's config with the allowed overrides (None: not given) applied."""
    config = config_from_checkpoint(dict(payload.get("config") or {}), source=str(path), warn=warn)
    for key, value in overrides.items():
        if isinstance(value, dict) and key in NESTED:  # a flag sets part of a mapping
            value = NESTED[key](**{**_plain(getattr(config, key)), **value})
        if value is None or _plain(getattr(config, key)) == _plain(value):
            continue
        if key not in HARMLESS_OVERRIDES:
            raise UsageError(f"--{key.replace('_', '-')} {value} conflicts with the checkpoint "
                             f"({getattr(config, key)}); a resume keeps the model, data and "
                             "optimiser: drop the flag or start a new run with --run-name")
        shown = mask_secrets({key: value, "checkpoint": getattr(config, key)})
        warn(f"{key}: {shown[key]} (flag) wins over {shown['checkpoint']} (checkpoint)")
        setattr(config, key, value)
    return config.validate(check_arch=False)


def _plain(value: Any) -> Any:
    """Stages and the scheduler compare as dicts, whether dataclasses or mappings."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def plan_resume(target: str, overrides: dict[str, Any], options: RunOptions,
                warn=print) -> tuple[TrainingConfig, ResumePoint]:
    """`--resume TARGET`: the checkpoint (last.pt first) and its config with the overrides."""
    point = read_resume_point(resume_file(target, options.ckpt_dir, warn=warn))
    return config_for_resume(point.payload, point.path, overrides, warn=warn), point


def plan_auto_resume(wanted: TrainingConfig, options: RunOptions,
                     warn=print) -> tuple[TrainingConfig, ResumePoint | None]:
    """`--resume auto`: continue the run these flags name if it has a checkpoint, else start
    it. Every key of `wanted` must match the checkpoint's, except the harmless ones."""
    folder = run_dir(wanted.name, options.ckpt_dir)
    if not any((folder / name).is_file() for name in LAST_FIRST):
        return wanted, None
    point = read_resume_point(resume_file(folder, None, warn=warn))
    assign_network(wanted, warn=lambda _: None)
    saved_network = (point.payload.get("config") or {}).get("network")
    overrides = wanted.to_dict()
    if saved_network is None:  # written before `network` existed: the arch names it
        overrides.pop("network")
    return config_for_resume(point.payload, point.path, overrides, warn=warn), point


def assign_network(config: TrainingConfig, warn=print) -> None:
    """Fix which built-in network a run trains: `network`, else the arch when it names one,
    else the default mlp under the arch label (with one notice line)."""
    if config.network is not None:
        return
    if config.arch not in ARCH_NAMES:
        warn(f"arch {config.arch!r} names no built-in network; training the default mlp under "
             f"that label (choose one with --network {'|'.join(ARCH_NAMES)})")
    config.network = config.arch if config.arch in ARCH_NAMES else "mlp"


def clear_run(folder: Path) -> None:
    """Remove what a previous run left in `folder` (for --overwrite)."""
    for name in (BEST_NAME, LAST_NAME, RUN_JSON, METRICS_CSV):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "wandb", ignore_errors=True)


def run_training(config: TrainingConfig, options: RunOptions, *,
                 resume: ResumePoint | None = None, warn=print) -> dict[str, Any]:
    """Lock the run folder, check what is there, build everything, train; returns
    FlowTrainer.train()'s result dict. AlreadyCompleted when the checkpoint needs no work.

    Under torchrun, rank 0 takes the lock and decides (fresh, overwrite, resume, nothing
    to do, or an error); the other ranks follow its decision and only read."""
    from study.flow_matching import distributed
    from study.flow_matching.device import is_main_process, resolve_device
    from study.runs.lock import RunLock

    root = checkpoint_root(options.ckpt_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"checkpoint root {root} is a file, not a folder; pass another --ckpt-dir")
    device = resolve_device(options.device)
    distributed.init_process_group(device)
    main = is_main_process()
    if not main:
        warn = _silent
        logging.getLogger("flowctl").setLevel(logging.WARNING)
    folder = run_dir(config.name, options.ckpt_dir)
    created = not folder.exists()
    lock = RunLock(folder, config.name)
    try:
        outcome: BaseException | None = None
        if main:
            try:
                lock.acquire(warn=warn)  # first: a live owner is the one thing to report
                resume = _prepare_folder(folder, config, options, resume, warn)
            except (UsageError, AlreadyCompleted) as error:
                outcome = error
        outcome = distributed.broadcast_from_main(outcome)
        if outcome is not None:
            raise outcome
        if not main and resume is not None:
            resume = _check_resume(resume, config, options, warn)
        assign_network(config, warn=warn)
        return _build_and_train(config, options, folder, lock, resume, device, warn)
    finally:
        lock.release()
        if created and main:  # bad input before anything was written: no empty run folder
            with contextlib.suppress(OSError):
                folder.rmdir()
        distributed.shutdown()


def _silent(message: str) -> None:
    """The other ranks' `warn`: rank 0 says it once."""


def _prepare_folder(folder: Path, config: TrainingConfig, options: RunOptions,
                    resume: ResumePoint | None, warn) -> ResumePoint | None:
    if resume is None:
        _claim_fresh_folder(folder, config.name, options.overwrite)
        return None
    return _check_resume(resume, config, options, warn)


def _claim_fresh_folder(folder: Path, name: str, overwrite: bool) -> None:
    if any((folder / n).is_file() for n in (BEST_NAME, LAST_NAME)):
        if not overwrite:
            raise UsageError(f"run {name} already has checkpoints in {folder}; continue it "
                             f"with `flowctl resume {name}` or pass --overwrite to start over")
        clear_run(folder)


def check_world_size(resume: ResumePoint, processes: int, *, strict: bool, warn) -> None:
    """A resume on another number of processes continues the same global batches; with
    `strict` it is refused."""
    saved = int(resume.payload.get("world_size", 1))
    if saved == processes:
        return
    if strict:
        raise UsageError(f"{resume.path} was trained on {saved} process(es), this run has "
                         f"{processes}; drop --strict-world-size to continue the same data "
                         "stream anyway")
    warn(f"continuing on {processes} process(es) a run trained on {saved}: the same global "
         "batches; results differ only by reduction order (~1e-6)")


def _check_resume(resume: ResumePoint, config: TrainingConfig, options: RunOptions,
                  warn) -> ResumePoint:
    """Re-read a checkpoint that changed before we held the lock; is there work left?"""
    from study.flow_matching.distributed import world_size

    if resume.path.stat().st_mtime_ns != resume.mtime_ns:
        resume = read_resume_point(resume.path)
    payload = resume.payload
    check_world_size(resume, world_size(), strict=options.strict_world_size, warn=warn)
    done = int(payload["epoch"]) + 1
    if done >= config.epochs and not payload.get("batch_in_epoch"):
        raise AlreadyCompleted(f"already completed (last epoch {done} of {config.epochs})")
    saved_epochs = int((payload.get("config") or {}).get("epochs", config.epochs))
    if config.epochs > saved_epochs and done >= saved_epochs:
        warn(f"extending {config.name} from {saved_epochs} to {config.epochs} epochs: the "
             "schedule is re-planned for the new horizon from the current step")
    return resume


def _build_and_train(config: TrainingConfig, options: RunOptions, folder: Path, lock,
                     resume: ResumePoint | None, device, warn) -> dict[str, Any]:
    import torch

    from study.data.dataset import resolve_dataset
    from study.data.normalize import normalization_stats
    from study.data.training_data import TrainingData
    from study.flow_matching.device import is_main_process
    from study.flow_matching.distributed import world_size
    from study.flow_matching.models import build_model
    from study.flow_matching.precision import check_precision
    from study.flow_matching.progress import SilentProgress
    from study.flow_matching.trainer import FlowTrainer
    from study.runs.recorder import RunRecorder
    from study.runs.tracking import resolve_wandb_mode
    from study.signals import GracefulStop, parse_signal

    check_precision(config.precision, device)
    if config.batch_size % (world_size() * config.grad_accum):
        raise UsageError(f"--batch-size {config.batch_size} (the global batch) must split into "
                         f"{world_size()} process(es) x {config.grad_accum} micro-batch(es)")
    splits = resolve_dataset(config.dataset, seed=config.seed, val_fraction=config.val_fraction,
                             min_rows=config.batch_size)
    train_x0 = val_x0 = None
    if "reflow" in config.flows_used():
        from study.flow_matching.reflow import coupled_sources

        train_x0, val_x0, splits = coupled_sources(config, splits, folder, device, warn=warn)
    stats = (splits.normalization_stats() if config.normalize == "standard"
             else normalization_stats(splits.train, config.normalize))
    data = TrainingData.prepare(splits.train, splits.val, device=device, stats=stats,
                                checksum=splits.checksum, train_x0=train_x0, val_x0=val_x0,
                                heldout=splits.test)
    torch.manual_seed(config.seed)  # model initialisation; all later draws use generators
    model = build_model(config.network, splits.dim, width=config.width, depth=config.depth,
                        activation=config.activation)
    recorder = RunRecorder(folder, config.name, wandb_project=options.wandb_project,
                           wandb_mode=resolve_wandb_mode(options.wandb_mode),
                           enabled=is_main_process(), tensorboard=options.tensorboard,
                           lock=lock, warn=warn)
    trainer = FlowTrainer.from_parts(
        model, config, data, recorder, device,
        resume=resume.payload if resume else None, resume_source=resume.path if resume else None,
        progress=options.progress if is_main_process() else SilentProgress(),
        stop=GracefulStop(parse_signal(options.requeue_signal)),
        warn=warn)
    return trainer.train()
