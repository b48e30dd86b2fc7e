"""Files of vectors -> [N, D] float32 tensors, checked: .pt, .npy, .csv, .jsonl.

`read_vectors(path)` is the one entry point: the checked tensor, the file's sha256 and (for
big mapped files) its column stats. Every problem with the input is a one-line `UsageError`
that names the file. Row numbers in messages count from 0 (the index into x); line numbers
count from 1.

A float32 2-D row-major array in a .npy file, or a float32 contiguous tensor in a .pt file
(torch.save's zip format), is memory-mapped rather than read: the tensor returned is a view of
the file, so a split larger than memory loads in no time and costs no memory until rows are
gathered (study.data.matrix), and it is read once, sequentially, for its checksum, its
finiteness check and its stats together: data larger than memory comes from disk once.
Anything else (other dtypes, Fortran order, legacy .pt, text) is converted into a float32
tensor in memory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from study.data.matrix import (
    first_nonfinite_row,
    is_memory_mapped,
    register_mapped,
    row_chunks,
    scan_mapped,
)
from study.errors import UsageError

SUPPORTED_EXTENSIONS = (".pt", ".npy", ".csv", ".jsonl")
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class VectorFile:
    """A checked file of vectors: x [N, D] float32 (N >= 1, all finite; memory-mapped when
    the file allows it), sha256 (hex of the file's bytes), stats ((mean, std) when they came
    for free with the read, else None: see study.data.matrix.column_stats)."""

    x: Tensor
    sha256: str
    stats: tuple[Tensor, Tensor] | None = None


def read_vectors(path: Path) -> VectorFile:
    """Read and check the file of vectors at `path` (see the module doc)."""
    where = f"data file {path}"
    x = _load_matrix(path, where)
    if is_memory_mapped(x):
        sha256, bad_row, stats = scan_mapped(x)
    else:
        sha256, bad_row, stats = file_sha256(path), first_nonfinite_row(x), None
    if bad_row is not None:
        raise UsageError(f"{where}: row {bad_row} holds NaN, Inf or a number beyond float32's "
                         "range (|x| > 3.4e38): every value must be a finite float32")
    return VectorFile(x, sha256, stats)


def load_vectors(path: Path) -> Tensor:
    """The checked [N, D] float32 tensor of `read_vectors(path)`."""
    return read_vectors(path).x


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_matrix(path: Path, where: str) -> Tensor:
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
        x, offset = reader(path, where)
        return _check_matrix(x, where, path=path, offset=offset)
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not a UTF-8 text file") from None


def _check_matrix(x: Tensor, where: str, *, path: Path, offset: int | None) -> Tensor:
    """Shape and type checks, then [N, D] float32 contiguous on the CPU (finiteness is
    read_vectors' job). A float32 contiguous x that maps `path` from byte `offset` is kept as
    it is (registered with study.data.matrix); anything else is converted into memory."""
    if not (x.is_floating_point() or x.dtype in _INT_DTYPES):
        raise UsageError(f"{where}: values are not real numbers (dtype {x.dtype})")
    if x.ndim != 2:
        raise UsageError(f"{where}: expected a 2-D array [N, D], got shape {tuple(x.shape)}")
    if 0 in x.shape:
        raise UsageError(f"{where}: has zero {'rows' if x.shape[0] == 0 else 'columns'}")
    x = x.detach()
    if offset is not None and x.dtype == torch.float32 and x.is_contiguous() \
            and x.device.type == "cpu" and hasattr(os, "preadv"):
        x = register_mapped(x, path, offset)
    else:
        x = x.to(device="cpu", dtype=torch.float32).contiguous()
    return x


def _read_pt(path: Path, where: str) -> tuple[Tensor, int | None]:
    """(the tensor, the byte offset in the file it maps, or None): torch.save's zip files are
    mapped, legacy ones read."""
    mapped = True
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # the legacy (non-zip) format cannot be mapped
                raise
            mapped = False
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
    return loaded, _file_offset(loaded, path) if mapped else None


def _file_offset(x: Tensor, path: Path) -> int | None:
    """The byte offset in `path` of x's first element, from this process's mappings (Linux);
    None when x does not map that file."""
    try:
        with open("/proc/self/maps") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    address, target = x.data_ptr(), os.path.realpath(path)
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(part, 16) for part in fields[0].split("-"))
            if start <= address < end:
                return address - start + int(fields[2], 16)
    return None


def _read_npy(path: Path, where: str) -> tuple[Tensor, int | None]:
    """(the array as a tensor, the byte offset in the file it maps, or None). A native
    float32 2-D C-order array is mapped read-only; other numbers are converted chunk by chunk
    (through float64, as flowctl always did, so the values are the same)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # object arrays, empty arrays and other files cannot be mapped
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as err:
            problem = "values are not numbers (object array)" if "Object arrays" in str(err) else (
                "not a readable .npy file")
            raise UsageError(f"{where}: {problem}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        raise UsageError(f"{where}: values are not real numbers "
                         f"(dtype {getattr(array, 'dtype', type(array).__name__)})")
    if isinstance(array, np.memmap) and array.dtype == np.float32 and array.ndim == 2 \
            and array.flags.c_contiguous:
        with warnings.catch_warnings():  # read-only: flowctl never writes into data tensors
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(array), array.offset
    if array.ndim != 2 or 0 in array.shape:
        return torch.from_numpy(np.array(array, dtype=np.float64)), None  # _check_matrix words it
    converted = torch.empty(array.shape, dtype=torch.float32)
    for first, chunk in row_chunks(converted):
        chunk.copy_(torch.from_numpy(np.array(array[first:first + len(chunk)], dtype=np.float64)))
    return converted, None


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


def _read_csv(path: Path, where: str) -> tuple[Tensor, None]:
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


def _read_jsonl(path: Path, where: str) -> tuple[Tensor, None]:
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
            except RecursionError:
                raise UsageError(f"{where}: line {line_no} nests lists too deeply to be a "
                                 "vector") from None
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


def _rows_to_tensor(rows: list[tuple[int, list[float]]], where: str,
                    unit: str) -> tuple[Tensor, None]:
    """(line number, values) pairs -> ([N, D] float64, None), checking every row has D values."""
    for line_no, values in rows:
        if len(values) != len(rows[0][1]):
            raise UsageError(f"{where}: line {line_no} has {len(values)} {unit}, "
                             f"expected {len(rows[0][1])}")
    return (torch.tensor([v for _, v in rows], dtype=torch.float64) if rows
            else torch.empty(0, 0)), None
