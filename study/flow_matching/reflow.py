"""Reflow (rectified flow, Liu et al. 2023): train on pairs (x_0, x_1 = ODE_teacher(x_0)).

`coupled_sources` turns a teacher checkpoint into the student's data: x_0 drawn from the
teacher's source, pushed through the teacher's ODE (EMA weights, rk4) and de-normalised to
raw data units. The student trainer then normalises x_1 with the new splits' stats like
any data, and takes x_0 as given (like Gaussian source noise), row i of x_0 with row i of
x_1. Generating the pairs costs N * 200 teacher evaluations, so they are cached in the run
folder and reused while the teacher file, the row counts and the seed stay the same.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from study.data.normalize import denormalize
from study.errors import RunFailed, UsageError
from study.runs.paths import BEST_FIRST, find_checkpoint
from study.seeds import stream_generator

log = logging.getLogger("flowctl")

PAIRS_NAME = "reflow_pairs.pt"
PAIRS_VERSION = 1  # bump when the way pairs are generated changes: old caches regenerate
SOLVER, STEPS = "rk4", 50  # 200 evaluations per row: far below the data's W2 floor in 2-D
BATCH_ROWS = 8192  # rows integrated at once; bounds memory for wide data


def teacher_of(config) -> str:
    """The teacher checkpoint of a reflow run: `config.teacher`, else the first stage's."""
    teacher = config.teacher or next((s.teacher for s in config.stages if s.teacher), None)
    if not teacher:
        raise UsageError("flow 'reflow' needs a teacher: pass --teacher PATH (a checkpoint)")
    return teacher


def resolve_teacher(teacher: str, checkpoint_root: Path) -> Path:
    """A .pt file, a run folder (best.pt, else last.pt) or a run name under the root."""
    try:
        return find_checkpoint(teacher, checkpoint_root, prefer=BEST_FIRST)
    except UsageError as err:
        raise UsageError(f"teacher: {err}") from None


def coupled_sources(config, splits, run_dir: Path, device, *,
                    warn=print) -> tuple[Tensor, Tensor, Any]:
    """(train_x0 [N_train, D], val_x0 [N_val, D], DataSplits of the teacher's samples).

    The returned splits hold the teacher's generated x_1 (raw units) as train/val, the real
    test split, and a checksum of the teacher file plus the real data. Tensors are on the CPU.
    """
    from study.data.dataset import DataSplits, column_stats, file_sha256
    from study.flow_matching.evaluate import load_flow_model

    run_dir = Path(run_dir)
    teacher = resolve_teacher(teacher_of(config), run_dir.parent)
    if teacher.resolve().parent == run_dir.resolve():
        raise UsageError(f"teacher {teacher} is inside this run's own folder; give the student "
                         "another --run-name")
    loaded = load_flow_model(teacher, device)
    if loaded.dim != splits.dim:
        raise UsageError(f"teacher {teacher} was trained on dimension {loaded.dim} but dataset "
                         f"{splits.source} has dimension {splits.dim}")
    source = loaded.config.get("source", "gaussian")
    if source != config.source:
        raise UsageError(f"teacher {teacher} starts from source {source!r} but this run's source "
                         f"is {config.source!r}; pass --source {source}")

    key = {"version": PAIRS_VERSION, "teacher_sha256": file_sha256(teacher),
           "n_train": len(splits.train), "n_val": len(splits.val), "seed": int(config.seed),
           "solver": SOLVER, "steps": STEPS}
    cache = run_dir / PAIRS_NAME
    pairs = _read_cache(cache, key, teacher, warn)
    if pairs is None:
        log.info("reflow: integrating teacher %s for %d pairs (%s, %d steps)", teacher,
                 key["n_train"] + key["n_val"], SOLVER, STEPS)
        pairs = generate_pairs(loaded, key, source, torch.device(device))
        from study.runs.checkpoint import serialize_into, write_atomic

        write_atomic(cache, functools.partial(serialize_into, {**key, **pairs}))

    mean, std = column_stats(pairs["train_x1"])
    checksum = hashlib.sha256(f"reflow:{key['teacher_sha256']}:{splits.checksum}".encode()).hexdigest()
    student_splits = DataSplits(pairs["train_x1"], pairs["val_x1"], splits.test, mean, std,
                                checksum, f"reflow of {teacher}")
    return pairs["train_x0"], pairs["val_x0"], student_splits


def _read_cache(cache: Path, key: dict, teacher: Path, warn) -> dict[str, Tensor] | None:
    """The cached pairs if they were made with `key`; None (and one line why) otherwise."""
    if not cache.is_file():
        return None
    try:
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        pairs = {name: saved[name] for name in ("train_x0", "val_x0", "train_x1", "val_x1")}
        stale = [name for name, value in key.items() if saved.get(name) != value]
    except Exception:  # torch raises many types for a cut-short or foreign file
        warn(f"reflow: {cache} is unreadable; regenerating the pairs")
        return None
    if not stale:
        log.info("reflow: reusing %d pairs from %s", key["n_train"] + key["n_val"], cache)
        return pairs
    why = (f"teacher {teacher} changed" if "teacher_sha256" in stale
           else f"{', '.join(stale)} changed")
    warn(f"reflow: {why} since {cache.name} was written; regenerating the pairs")
    return None


def generate_pairs(loaded, key: dict, source: str, device: torch.device) -> dict[str, Tensor]:
    """x_0 from the teacher's source (seeded), x_1 = teacher ODE(x_0) in raw data units.

    `loaded`: the teacher from evaluate.load_flow_model (EMA weights, eval mode).
    Returns {"train_x0", "val_x0", "train_x1", "val_x1"}: CPU float32, [N, D] each.
    """
    from study.data.toy import sample_source
    from study.flow_matching.solvers import integrate

    model = loaded.model.to(device)
    # Own stream, independent of the student's data/t/noise generators for the same seed.
    generator = stream_generator(key["seed"], "reflow")
    pairs = {}
    for split in ("train", "val"):
        x_0 = sample_source(source, key[f"n_{split}"], loaded.dim, generator).float()
        x_1 = torch.cat([integrate(model, chunk.to(device), solver=SOLVER, steps=STEPS).x_1.cpu()
                         for chunk in x_0.split(BATCH_ROWS)])
        if not torch.isfinite(x_1).all():
            raise RunFailed(f"teacher {loaded.path} produced non-finite samples; check it with "
                            "`flowctl inspect-ckpt`")
        pairs[f"{split}_x0"], pairs[f"{split}_x1"] = x_0, denormalize(x_1, loaded.stats).float()
    return pairs
