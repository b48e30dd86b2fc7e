"""Data files and dataset names -> train/val/test tensors of vectors.

`FlowDataset(path)` reads one file of N vectors of dimension D (.pt, .npy, .csv, .jsonl).
`resolve_dataset(name, ...)` turns a `--dataset` value into `DataSplits`: a built-in toy
name, a split folder under `study/datasets/splits/`, a folder path, or a single file.
Every problem with the input is a one-line `UsageError` that names the file.
Row numbers in messages count from 0 (the index into x); line numbers count from 1.
"""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from study.data import toy
from study.errors import UsageError

SUPPORTED_EXTENSIONS = (".pt", ".npy", ".csv", ".jsonl")
DEFAULT_SPLITS_ROOT = Path("study/datasets/splits")
SPLIT_FILES = ("train.pt", "val.pt", "test.pt")
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class DataSplits:
    """Raw (not normalized) splits plus the train statistics the model normalizes with."""

    train: Tensor  # [N_train, D] float32
    val: Tensor  # [N_val, D]
    test: Tensor | None  # [N_test, D], or None when the source has no test split
    mean: Tensor  # [D], of train only
    std: Tensor  # [D], of train only; near-zero entries replaced by 1 so dividing is safe
    checksum: str  # SHA-256 hex of the file(s), or of a "builtin:..." string
    source: str  # one line for people, e.g. "built-in moons (seed 0)"

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def normalization_stats(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std}


def column_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and std of x [N, D]; std < 1e-8 (a constant column) becomes 1."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    return mean, torch.where(std < 1e-8, torch.ones_like(std), std)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FlowDataset:
    """FlowDataset(path) loads one file of vectors.

    Attributes: path, x ([N, D] float32), n, dim, sha256 (hex of the file's bytes),
    mean and std ([D] each, of x; see `column_stats`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.x = load_vectors(self.path)
        self.n, self.dim = self.x.shape
        self.sha256 = file_sha256(self.path)
        self.mean, self.std = column_stats(self.x)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"FlowDataset({str(self.path)!r}, n={self.n}, dim={self.dim})"


def load_vectors(path: Path) -> Tensor:
    """Read and check a file of vectors. Returns [N, D] float32, N >= 1, all finite."""
    where = f"data file {path}"
    if not path.is_file():
        raise UsageError(f"{where}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise UsageError(f"{where}: unsupported extension {path.suffix or '(none)'!r}; "
                         f"supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    if path.stat().st_size == 0:
        raise UsageError(f"{where}: file is empty")
    reader = {".pt": _read_pt, ".npy": _read_npy, ".csv": _read_csv, ".jsonl": _read_jsonl}[suffix]
    try:
        return _check_matrix(reader(path, where), where)
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not a UTF-8 text file") from None


def _check_matrix(x: Tensor, where: str) -> Tensor:
    if not (x.is_floating_point() or x.dtype in _INT_DTYPES):
        raise UsageError(f"{where}: values are not real numbers (dtype {x.dtype})")
    if x.ndim != 2:
        raise UsageError(f"{where}: expected a 2-D array [N, D], got shape {tuple(x.shape)}")
    if 0 in x.shape:
        raise UsageError(f"{where}: has zero {'rows' if x.shape[0] == 0 else 'columns'}")
    x = x.detach().to(device="cpu", dtype=torch.float32).contiguous()
    bad_rows = (~torch.isfinite(x)).any(dim=1).nonzero()
    if len(bad_rows):
        raise UsageError(f"{where}: contains NaN or Inf at row {bad_rows[0].item()}")
    return x


def _read_pt(path: Path, where: str) -> Tensor:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or non-torch files
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err):
            raise UsageError(f"{where}: refused to unpickle objects other than tensors "
                             "(save a plain tensor or a dict of tensors)") from None
        raise UsageError(f"{where}: not a readable torch file") from None
    if isinstance(loaded, dict):
        key = next((k for k in ("x", "embeddings") if k in loaded), None)
        if key is None:
            keys = ", ".join(map(str, loaded)) or "none"
            raise UsageError(f"{where}: dict has no 'x' or 'embeddings' key (keys: {keys})")
        loaded = loaded[key]
    if not isinstance(loaded, Tensor):
        raise UsageError(f"{where}: expected a 2-D tensor or a dict with 'x' or 'embeddings', "
                         f"got {type(loaded).__name__}")
    return loaded


def _read_npy(path: Path, where: str) -> Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        problem = "values are not numbers (object array)" if "Object arrays" in str(err) else (
            "not a readable .npy file")
        raise UsageError(f"{where}: {problem}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        raise UsageError(f"{where}: values are not real numbers "
                         f"(dtype {getattr(array, 'dtype', type(array).__name__)})")
    return torch.from_numpy(array.astype(np.float64, copy=False))


def _floats(cells: list) -> list[float] | None:
    """Text cells or JSON values -> floats, or None if one is not a number (bools are not)."""
    if any(isinstance(cell, bool) or not isinstance(cell, (str, int, float)) for cell in cells):
        return None
    try:
        return [float(cell) for cell in cells]
    except (ValueError, OverflowError):  # OverflowError: a JSON integer too big for a float
        return None


# "utf-8-sig" drops a byte-order mark (Excel's "CSV UTF-8", Notepad) and reads plain UTF-8 too;
# without it a headerless CSV lost its first row (taken for a header) and JSONL was refused.
TEXT_ENCODING = "utf-8-sig"


def _read_csv(path: Path, where: str) -> Tensor:
    """Commas, optional header row, quoted fields (also after a space), any line ends, blank
    lines skipped."""
    rows: list[tuple[int, list[float]]] = []
    with path.open(newline="", encoding=TEXT_ENCODING) as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        for cells in reader:
            line_no = reader.line_num  # the row's last physical line
            cells = [cell.strip() for cell in cells]
            values = _floats(cells)
            if not any(cells) or (values is None and not rows and line_no == 1):
                continue  # a blank line, or the header row
            if values is None:
                bad = next(c for c in cells if _floats([c]) is None)
                raise UsageError(f"{where}: line {line_no} has a non-numeric value {bad!r}")
            rows.append((line_no, values))
    return _rows_to_tensor(rows, where, "columns")


def _read_jsonl(path: Path, where: str) -> Tensor:
    """One JSON list (or object with one numeric list field) per line; blank lines skipped."""
    rows: list[tuple[int, list[float]]] = []
    with path.open(encoding=TEXT_ENCODING) as handle:
        for line_no, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                item = json.loads(text)
            except json.JSONDecodeError as err:
                raise UsageError(f"{where}: line {line_no} is not valid JSON ({err.msg} at "
                                 f"column {err.colno})") from None
            if isinstance(item, dict):  # e.g. {"id": 3, "embedding": [0.1, 0.2]}
                fields = [k for k, v in item.items() if isinstance(v, list) and _floats(v)]
                if len(fields) != 1:
                    raise UsageError(f"{where}: line {line_no}: expected an object with one "
                                     f"numeric list field, found {', '.join(fields) or 'none'}")
                item = item[fields[0]]
            values = _floats(item) if isinstance(item, list) else None
            if values is None:
                raise UsageError(f"{where}: line {line_no} is not a list of numbers")
            rows.append((line_no, values))
    return _rows_to_tensor(rows, where, "values")


def _rows_to_tensor(rows: list[tuple[int, list[float]]], where: str, unit: str) -> Tensor:
    """(line number, values) pairs -> [N, D] float64, checking every row has D values."""
    for line_no, values in rows:
        if len(values) != len(rows[0][1]):
            raise UsageError(f"{where}: line {line_no} has {len(values)} {unit}, "
                             f"expected {len(rows[0][1])}")
    return torch.tensor([v for _, v in rows], dtype=torch.float64) if rows else torch.empty(0, 0)


def resolve_dataset(name: str, *, seed: int, val_fraction: float,
                    splits_root: Path | None = None, min_rows: int = 1) -> DataSplits:
    """`--dataset NAME` -> DataSplits, trying in order:

    1. a built-in generator (`toy.TOY_DATASETS`): fixed-size splits from `seed`;
    2. a split folder `{splits_root}/{name}/` with train.pt, val.pt and optionally test.pt;
    3. a path to such a folder, or to one file of vectors, split into train/val by a
       permutation from `seed` (`val_fraction` of the rows go to val; no test split).
    """
    if name in toy.TOY_DATASETS:
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
                 source: str) -> DataSplits:
    for split, x in (("val", val), ("test", test)):
        if x is not None and x.shape[1] != train.shape[1]:
            raise UsageError(f"dataset {source}: {split} has {x.shape[1]} columns, "
                             f"train has {train.shape[1]}")
    mean, std = column_stats(train)
    return DataSplits(train, val, test, mean, std, checksum, source)


def _load_split_folder(folder: Path) -> DataSplits:
    """train.pt + val.pt (+ test.pt); the checksum covers every split file it read."""
    for required in SPLIT_FILES[:2]:
        if not (folder / required).is_file():
            raise UsageError(f"split folder {folder}: missing {required} (make one with "
                             "scripts/make_splits.py)")
    loaded = {f: FlowDataset(folder / f) for f in SPLIT_FILES if (folder / f).is_file()}
    digest = hashlib.sha256("".join(f"{f}:{d.sha256}\n" for f, d in loaded.items()).encode())
    test = loaded["test.pt"].x if "test.pt" in loaded else None
    return _make_splits(loaded["train.pt"].x, loaded["val.pt"].x, test, digest.hexdigest(),
                        str(folder.resolve()))


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
                        str(data.path.resolve()))
