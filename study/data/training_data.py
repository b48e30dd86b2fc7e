"""What a trainer trains on: normalised train/val rows, their statistics, optional sources.

`TrainingData.prepare` takes raw splits (tensors [N, D], or datasets with an `x` tensor),
normalises them with the training split's statistics (or the given ones, e.g. a resumed
checkpoint's) and moves them to the training device. A training split that is a
memory-mapped file (study.data.readers) is left where it is: each batch is gathered from
the file, normalised and moved when it is asked for (`train_rows`), so a split larger than
memory trains with a batch's worth of memory; the numbers are the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from study.data.matrix import gather_rows, is_memory_mapped
from study.data.normalize import denormalize, normalization_stats
from study.data.normalize import normalize as normalize_rows
from study.errors import UsageError


@dataclass
class TrainingData:
    train: Tensor  # [N_train, D] normalised, on the training device
    val: Tensor  # [N_val, D] normalised
    stats: dict[str, Tensor]  # {"mean": [D], "std": [D]} of the raw training split
    checksum: str = ""  # of the data files (or a built-in's name and seed); "" if unknown
    train_x0: Tensor | None = None  # [N_train, D] pre-coupled sources (reflow), else None
    val_x0: Tensor | None = None  # [N_val, D]
    heldout: Tensor | None = None  # [M, D] raw rows for sample quality (a test split), else None
    files: dict[str, str] = field(default_factory=dict)  # data file name -> its SHA-256 hex
    mapped: bool = False  # `train` is the raw memory-mapped file, normalised per batch
    device: torch.device = torch.device("cpu")

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def train_rows(self, rows: Tensor) -> Tensor:
        """Normalised training rows [B, D] on the training device for row ids `rows` [B]."""
        if not self.mapped:
            return self.train[rows]
        return normalize_rows(gather_rows(self.train, rows.cpu()), self.stats).to(self.device)

    def describe(self) -> dict[str, Any]:
        """What the run trains on, for run.json: the data's checksum and row counts."""
        rows = {"train": len(self.train), "val": len(self.val)}
        if self.heldout is not None:
            rows["test"] = len(self.heldout)
        return {"checksum": self.checksum, "rows": rows, "files": dict(self.files)}

    def heldout_rows(self) -> Tensor:
        """Raw rows to compare samples with: the test split, else the val split ([M, D], CPU)."""
        if self.heldout is not None:
            return self.heldout.float().cpu()
        return denormalize(self.val.float().cpu(), self.stats)

    @classmethod
    def prepare(cls, train, val, *, device: torch.device | str = "cpu", normalize: str = "standard",
                stats: dict[str, Tensor] | None = None, checksum: str = "",
                train_x0: Tensor | None = None, val_x0: Tensor | None = None,
                heldout: Tensor | None = None, files: dict[str, str] | None = None
                ) -> TrainingData:
        """Normalise raw `train`/`val` rows (`normalize`: standard or none, unless `stats` are
        given) and move everything to `device`."""
        train_x, val_x = as_tensor(train), as_tensor(val)
        stats = stats or normalization_stats(train_x, normalize)
        mapped = is_memory_mapped(train_x)
        train_x = train_x if mapped else normalize_rows(train_x, stats).to(device)
        return cls(train_x, normalize_rows(val_x, stats).to(device), stats, checksum,
                   None if train_x0 is None else train_x0.to(device),
                   None if val_x0 is None else val_x0.to(device), heldout, files or {},
                   mapped, torch.device(device))

    def check_checkpoint(self, payload: dict[str, Any], source: Path, *, dataset: str,
                         steps_per_epoch: int, warn=print) -> None:
        """Refuse a checkpoint trained on another dimension; warn when the data changed
        (another number of steps per epoch, or another checksum)."""
        saved_mean = (payload.get("normalization_stats") or {}).get("mean")
        if saved_mean is not None and saved_mean.numel() != self.dim:
            raise UsageError(f"dataset {dataset} has dimension {self.dim} but the checkpoint "
                             f"{source} was trained on dimension {saved_mean.numel()}")
        saved_steps = payload.get("steps_per_epoch")
        if saved_steps is not None and saved_steps != steps_per_epoch:
            warn(f"{source} was trained with {saved_steps} steps per epoch, now "
                 f"{steps_per_epoch}: the data changed size; data order will differ")
        checksum = payload.get("dataset_checksum")
        if checksum and self.checksum and checksum != self.checksum:
            warn(f"the dataset changed since {source.name} was written (checksum differs)")


def as_tensor(dataset) -> Tensor:
    """A float32 tensor [N, D] from a tensor, an object with an `x` tensor, or a sequence."""
    if isinstance(dataset, Tensor):
        return dataset.float()
    if hasattr(dataset, "x"):
        return dataset.x.float()
    return torch.stack([torch.as_tensor(dataset[i]) for i in range(len(dataset))]).float()
