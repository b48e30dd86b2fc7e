"""From a config (or a checkpoint) to a finished run: data, model, trainer, train.

Shared by `flowctl train`, `flowctl resume` and `python -m study.flow_matching.train`.
Resume rules: the checkpoint's config wins; a flag that would change the model, the data
or the optimisation is an error; a harmless one (epochs, patience, log_every, save_every,
group) wins with one printed line. `--epochs` is always the total target.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.flow_matching.config import TrainingConfig, config_from_dict
from study.runs.paths import BEST_NAME, LAST_NAME, METRICS_CSV, RUN_JSON, checkpoint_root, run_dir
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
    progress: Any = None


class AlreadyCompleted(Exception):
    """The checkpoint already reached the target epochs; nothing to do (exit 0)."""


def find_checkpoint(target: str, ckpt_dir: str | None = None,
                    prefer: tuple[str, ...] = (LAST_NAME, BEST_NAME)) -> Path:
    """A .pt file, a run folder or a run name under the root -> the first file in `prefer`
    that exists there (resume: last.pt, else best.pt; evaluation passes best first)."""
    path = Path(target)
    if path.is_file():
        return path
    folder = path if path.is_dir() else run_dir(target, ckpt_dir)
    for name in prefer:
        if (folder / name).is_file():
            return folder / name
    if folder.is_dir():
        raise UsageError(f"{folder} holds no checkpoint (no {' or '.join(prefer)})")
    raise UsageError(f"no checkpoint or run named {target!r} (looked under "
                     f"{checkpoint_root(ckpt_dir)}); see `flowctl list-runs`")


def config_for_resume(payload: dict, path: Path, overrides: dict[str, Any],
                      warn=print) -> TrainingConfig:
    """The checkpoint's config with the allowed overrides applied."""
    from dataclasses import fields

    saved = dict(payload.get("config") or {})
    known = {f.name for f in fields(TrainingConfig)}
    ignored = sorted(set(saved) - known)
    if ignored:
        warn(f"{path.name}: ignoring config keys flowctl does not know: {', '.join(ignored)}")
    config = config_from_dict({k: v for k, v in saved.items() if k in known}, source=str(path))
    for key, value in overrides.items():
        if value is None or getattr(config, key) == value:
            continue
        if key not in HARMLESS_OVERRIDES:
            raise UsageError(f"--{key.replace('_', '-')} {value} conflicts with the checkpoint "
                             f"({getattr(config, key)}); a resume keeps the model, data and "
                             "optimiser: drop the flag or start a new run with --run-name")
        shown = mask_secrets({key: value, "checkpoint": getattr(config, key)})
        warn(f"{key}: {shown[key]} (flag) wins over {shown['checkpoint']} (checkpoint)")
        setattr(config, key, value)
    return config.validate(check_arch=False)


def prepare_resume(target: str, overrides: dict[str, Any], options: RunOptions,
                   warn=print) -> tuple[TrainingConfig, Path]:
    """Resolve the checkpoint and its config; raise AlreadyCompleted when there is no work."""
    from study.runs.checkpoint import read_checkpoint

    path = find_checkpoint(target, options.ckpt_dir)
    payload = read_checkpoint(path)
    config = config_for_resume(payload, path, overrides, warn=warn)
    done = int(payload["epoch"]) + 1
    if done >= config.epochs and not payload.get("batch_in_epoch"):
        raise AlreadyCompleted(f"already completed (last epoch {done} of {config.epochs})")
    saved_epochs = int((payload.get("config") or {}).get("epochs", config.epochs))
    if config.epochs > saved_epochs and done >= saved_epochs:
        warn(f"extending {config.name} from {saved_epochs} to {config.epochs} epochs: the cosine "
             "schedule is re-planned for the new horizon from the current step")
    return config, path


def clear_run(folder: Path) -> None:
    """Remove what a previous run left in `folder` (for --overwrite)."""
    for name in (BEST_NAME, LAST_NAME, RUN_JSON, METRICS_CSV):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "wandb", ignore_errors=True)


def run_training(config: TrainingConfig, options: RunOptions, *, resume_path: Path | None = None,
                 warn=print) -> dict[str, Any]:
    """Build everything from `config`, train, return FlowTrainer.train()'s result dict."""
    import torch

    from study.data.dataset import resolve_dataset
    from study.flow_matching.device import resolve_device
    from study.flow_matching.models import build_model
    from study.flow_matching.trainer import FlowTrainer
    from study.runs.lock import RunLock
    from study.signals import GracefulStop, parse_signal

    root = checkpoint_root(options.ckpt_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"checkpoint root {root} is a file, not a folder; pass another --ckpt-dir")
    folder = run_dir(config.name, options.ckpt_dir)
    if resume_path is None and any((folder / n).is_file() for n in (BEST_NAME, LAST_NAME)):
        if not options.overwrite:
            raise UsageError(f"run {config.name} already has checkpoints in {folder}; continue it "
                             f"with `flowctl resume {config.name}` or pass --overwrite to start over")
        lock = RunLock(folder, config.name)
        lock.acquire(warn=warn)  # refuses if a live process owns the run
        clear_run(folder)
        lock.release()

    device = resolve_device(options.device)
    splits = resolve_dataset(config.dataset, seed=config.seed, val_fraction=config.val_fraction,
                             min_rows=config.batch_size)
    train_x0 = val_x0 = None
    if "reflow" in config.flows_used():
        from study.flow_matching.reflow import coupled_sources

        train_x0, val_x0, splits = coupled_sources(config, splits, folder, device, warn=warn)
    torch.manual_seed(config.seed)  # model initialisation; all later draws use generators
    model = build_model(config.arch, splits.dim, width=config.width, depth=config.depth,
                        activation=config.activation)
    stop = GracefulStop(parse_signal(options.requeue_signal))
    trainer = FlowTrainer(
        model, config, splits.train, splits.val, device, wandb_project=options.wandb_project,
        resume_path=resume_path, ckpt_root=options.ckpt_dir, wandb_mode=options.wandb_mode,
        stats=splits.normalization_stats(), dataset_checksum=splits.checksum,
        progress=options.progress, stop=stop, train_x0=train_x0, val_x0=val_x0,
        tensorboard=options.tensorboard, warn=warn)
    return trainer.train()
