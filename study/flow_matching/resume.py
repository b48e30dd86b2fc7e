"""Continuing a run: which checkpoint, with which config, and whether there is work left.

Rules: the checkpoint's config wins; a flag that would change the model, the data or the
optimisation is an error; a harmless one (epochs, patience, log_every, save_every, group,
checkpoint_interval) wins with one printed line. `--epochs` is always the total target.
`--resume auto` continues the run the flags name if it has a checkpoint, else starts it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.errors import UsageError
from study.flow_matching.config import TrainingConfig, assign_network
from study.flow_matching.config_load import NESTED, config_from_checkpoint
from study.runs.paths import (
    BEST_NAME,
    LAST_FIRST,
    LAST_NAME,
    check_run_name,
    checkpoint_root,
    find_checkpoint,
    run_dir,
)
from study.secrets import mask_secrets

HARMLESS_OVERRIDES = ("epochs", "patience", "log_every", "save_every", "group",
                      "checkpoint_interval")



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


def plan_resume(target: str, overrides: dict[str, Any], ckpt_dir: str | None,
                warn=print) -> tuple[TrainingConfig, ResumePoint]:
    """`--resume TARGET`: the checkpoint (last.pt first) and its config with the overrides."""
    point = read_resume_point(resume_file(target, ckpt_dir, warn=warn))
    config = config_for_resume(point.payload, point.path, overrides, warn=warn)
    named = config.name
    config = resume_in_place(config, point.path, ckpt_dir, warn=warn)
    if config.name != named:  # a copy or a renamed folder: not the original's wandb run
        point.payload["wandb_run_id"] = None
    return config, point


def resume_in_place(config: TrainingConfig, checkpoint: Path, ckpt_dir: str | None,
                    warn=print) -> TrainingConfig:
    """The folder resumed is the folder written: a checkpoint in a run folder under the root
    continues *that* folder, whatever run name its config holds (a copy `cp -r exp exp-e1`,
    a renamed `mv a b`): the run is renamed after its folder, with one line, and logs to a
    wandb run of its own. A checkpoint anywhere else is refused (a resume would write into
    another folder)."""
    folder = Path(os.path.realpath(checkpoint)).parent
    root = checkpoint_root(ckpt_dir)
    if folder.parent != Path(os.path.realpath(root)):
        raise UsageError(f"{checkpoint} is not in a run folder under the checkpoint root {root}, "
                         "and a resume writes into the folder it continues; copy it into one "
                         f"(mkdir {root}/NAME; cp {checkpoint} {root}/NAME/last.pt) or pass "
                         f"--ckpt-dir {folder.parent}")
    if folder.name != config.name:
        check_run_name(folder.name, what="the run folder")
        warn(f"resuming run folder {folder.name}: the run named {config.name} in its "
             f"checkpoint is renamed {folder.name} (it writes only into {folder}, and logs "
             "to a new wandb run)")
        config.run_name = folder.name
    return config


def plan_auto_resume(wanted: TrainingConfig, ckpt_dir: str | None,
                     warn=print) -> tuple[TrainingConfig, ResumePoint | None]:
    """`--resume auto`: continue the run these flags name if it has a checkpoint, else start
    it. Every key of `wanted` must match the checkpoint's, except the harmless ones."""
    folder = run_dir(wanted.name, ckpt_dir)
    if not any((folder / name).is_file() for name in LAST_FIRST):
        return wanted, None
    point = read_resume_point(resume_file(folder, None, warn=warn))
    assign_network(wanted, warn=lambda _: None)
    saved_network = (point.payload.get("config") or {}).get("network")
    overrides = wanted.to_dict()
    if saved_network is None:  # written before `network` existed: the arch names it
        overrides.pop("network")
    return config_for_resume(point.payload, point.path, overrides, warn=warn), point


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


def check_resume(resume: ResumePoint, config: TrainingConfig, *, processes: int,
                 strict_world_size: bool, warn) -> ResumePoint:
    """Re-read a checkpoint that changed before we held the lock; is there work left?
    AlreadyCompleted when not."""
    if resume.path.stat().st_mtime_ns != resume.mtime_ns:
        resume = read_resume_point(resume.path)
    payload = resume.payload
    check_world_size(resume, processes, strict=strict_world_size, warn=warn)
    done = int(payload["epoch"]) + 1
    if done >= config.epochs and not payload.get("batch_in_epoch"):
        raise AlreadyCompleted(f"already completed (last epoch {done} of {config.epochs})")
    saved_epochs = int((payload.get("config") or {}).get("epochs", config.epochs))
    if config.epochs > saved_epochs and done >= saved_epochs:
        warn(f"extending {config.name} from {saved_epochs} to {config.epochs} epochs: the "
             "schedule is re-planned for the new horizon from the current step")
    return resume
