"""Data files and dataset names -> train/val/test tensors of vectors.

`FlowDataset(path)` reads one file of N vectors of dimension D (.pt, .npy, .csv, .jsonl;
study.data.readers). `resolve_dataset(name, ...)` turns a `--dataset` value into
`DataSplits`: a built-in toy name, a split folder under `study/datasets/splits/`, a folder
path, or a single file. Every problem with the input is a one-line `UsageError`.

Data larger than memory: a split folder of float32 `.npy` (or `.pt`) files, as
`scripts/make_splits.py --format npy` writes. Its tensors are memory-mapped views of the
files (`DataSplits.memory_mapped`); take batches with `gather_rows(splits.train, rows)`, never
`.to(device)` the whole split. A single file is split into train/val by a random permutation
of its rows, which copies them into memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from study.data import toy
from study.data.matrix import column_stats, gather_rows, is_memory_mapped
from study.data.readers import SUPPORTED_EXTENSIONS, file_sha256, read_vectors
from study.errors import UsageError
from study.plugins import is_target

__all__ = ["DEFAULT_SPLITS_ROOT", "SPLITS", "SUPPORTED_EXTENSIONS", "DataSplits", "FlowDataset",
           "column_stats", "file_sha256", "gather_rows", "resolve_dataset"]

DEFAULT_SPLITS_ROOT = Path("study/datasets/splits")
SPLITS = ("train", "val", "test")
SPLIT_FORMATS = (".pt", ".npy")


@dataclass
class DataSplits:
    """Raw (not normalized) splits plus the train statistics the model normalizes with."""

    train: Tensor  # [N_train, D] float32 on the CPU; possibly a view of a mapped file
    val: Tensor  # [N_val, D]
    test: Tensor | None  # [N_test, D], or None when the source has no test split
    mean: Tensor  # [D], of train only
    std: Tensor  # [D], of train only; near-zero entries replaced by 1 so dividing is safe
    checksum: str  # SHA-256 hex of the file(s), or of a "builtin:..." string
    source: str  # one line for people, e.g. "built-in moons (seed 0)"
    files: dict[str, str] = field(default_factory=dict)  # file name -> its SHA-256 hex

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    @property
    def memory_mapped(self) -> bool:
        """True when train is a view of a file mapping: gather batches, do not copy it whole."""
        return is_memory_mapped(self.train)

    def normalization_stats(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std}


class FlowDataset:
    """FlowDataset(path) loads one file of vectors.

    Attributes: path, x ([N, D] float32, memory-mapped when the file allows it), n, dim,
    sha256 (hex of the file's bytes), mean and std ([D] each, of x, computed when first
    asked for; see `column_stats`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        loaded = read_vectors(self.path)
        self.x, self.sha256, self._read_stats = loaded.x, loaded.sha256, loaded.stats
        self.n, self.dim = self.x.shape

    @cached_property
    def _stats(self) -> tuple[Tensor, Tensor]:
        return self._read_stats if self._read_stats is not None else column_stats(self.x)

    @property
    def mean(self) -> Tensor:
        return self._stats[0]

    @property
    def std(self) -> Tensor:
        return self._stats[1]

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"FlowDataset({str(self.path)!r}, n={self.n}, dim={self.dim})"


def resolve_dataset(name: str, *, seed: int, val_fraction: float,
                    splits_root: Path | None = None, min_rows: int = 1,
                    args: dict | None = None) -> DataSplits:
    """`--dataset NAME` -> DataSplits, trying in order:

    0. an import path `pkg.module:function`, called with `seed` and `args`
       (study.data.user_dataset);
    1. a built-in generator (`toy.TOY_DATASETS`): fixed-size splits from `seed`;
    2. a split folder `{splits_root}/{name}/` with train, val and optionally test, each a
       .pt or a .npy file;
    3. a path to such a folder, or to one file of vectors, split into train/val by a
       permutation from `seed` (`val_fraction` of the rows go to val; no test split).
    """
    if is_target(name):
        from study.data.user_dataset import call_dataset_function

        made, checksum = call_dataset_function(name, seed=seed, args=args)
        result = _make_splits(made["train"], made["val"], made["test"], checksum,
                              f"{name} (seed {seed})")
    elif name in toy.TOY_DATASETS:
        splits = toy.builtin_splits(name, seed)
        checksum = hashlib.sha256(f"builtin:{name}:seed={seed}:v1".encode()).hexdigest()
        result = _make_splits(splits["train"], splits["val"], splits["test"], checksum,
                              f"built-in {name} (seed {seed})")
    else:
        named_folder = (DEFAULT_SPLITS_ROOT if splits_root is None else Path(splits_root)) / name
        path = Path(name).expanduser()
        if named_folder.is_dir():
            result = _load_split_folder(named_folder)
        elif path.is_dir():
            result = _load_split_folder(path)
        elif path.is_file():
            result = _split_file(FlowDataset(path), seed=seed, val_fraction=val_fraction)
        else:
            raise UsageError(f"unknown dataset {name!r}: not a built-in ({', '.join(toy.TOY_DATASETS)}), "
                             f"no split folder {named_folder}/, no such file or folder")
    if result.train.shape[0] < min_rows:
        raise UsageError(f"dataset {name} has {result.train.shape[0]} training rows, fewer than "
                         f"one batch ({min_rows}); lower --batch-size")
    return result


def _make_splits(train: Tensor, val: Tensor, test: Tensor | None, checksum: str,
                 source: str, stats: tuple[Tensor, Tensor] | None = None,
                 files: dict[str, str] | None = None) -> DataSplits:
    for split, x in (("val", val), ("test", test)):
        if x is not None and x.shape[1] != train.shape[1]:
            raise UsageError(f"dataset {source}: {split} has {x.shape[1]} columns, "
                             f"train has {train.shape[1]}")
    mean, std = stats if stats is not None else column_stats(train)
    return DataSplits(train, val, test, mean, std, checksum, source, files or {})


def _load_split_folder(folder: Path) -> DataSplits:
    """train + val (+ test), each .pt or .npy; the checksum covers every split file it read."""
    files = {}
    for split in SPLITS:
        found = [folder / f"{split}{ext}" for ext in SPLIT_FORMATS if (folder / f"{split}{ext}").is_file()]
        if len(found) > 1:
            raise UsageError(f"split folder {folder}: has both {found[0].name} and {found[1].name}; "
                             "remove one")
        if found:
            files[split] = found[0]
        elif split != "test":
            raise UsageError(f"split folder {folder}: missing {split}.pt or {split}.npy (make one "
                             "with scripts/make_splits.py)")
    loaded = {split: FlowDataset(path) for split, path in files.items()}
    digest = hashlib.sha256("".join(f"{files[s].name}:{d.sha256}\n" for s, d in loaded.items()).encode())
    test = loaded["test"].x if "test" in loaded else None
    train = loaded["train"]
    return _make_splits(train.x, loaded["val"].x, test, digest.hexdigest(),
                        str(folder.resolve()), stats=(train.mean, train.std),
                        files={files[s].name: d.sha256 for s, d in loaded.items()})


def _split_file(data: FlowDataset, *, seed: int, val_fraction: float) -> DataSplits:
    """A random (seeded) train/val split of one file; val gets round(n * val_fraction) rows."""
    if not 0 < val_fraction < 1:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, round(data.n * val_fraction))
    if data.n - n_val < 1:
        raise UsageError(f"data file {data.path}: has {data.n} row(s), need at least 2 to "
                         "split into train and val")
    order = torch.randperm(data.n, generator=torch.Generator().manual_seed(seed))
    return _make_splits(data.x[order[n_val:]], data.x[order[:n_val]], None, data.sha256,
                        str(data.path.resolve()), files={data.path.name: data.sha256})
