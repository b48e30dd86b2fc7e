"""[N, D] matrices that may be memory-mapped files: row chunks, checks, stats and batches.

A split larger than memory is a float32 file mapped into the address space (see
study.data.readers), used through three functions that never need all of it at once:
- `first_nonfinite_row(x)` and `column_stats(x)` work through CHUNK_BYTES of rows at a time;
- `gather_rows(x, rows)` copies one batch of rows into a new float32 tensor.
The same functions serve tensors held in memory, with bit-identical results.

Pages of a mapping that were read count as the process's resident memory until the kernel
needs them back, and a page fault maps more than the page asked for (fault-around: measured
here, one batch of 1024 random 4 KB rows of a 160 MB file made 128 MB resident). So for a
mapped file (`register_mapped`), full passes read chunks with plain reads into one buffer,
and `gather_rows` on a file above GATHER_FROM_MAPPING_MAX_BYTES reads each row with pread:
resident memory stays at a chunk or a batch whatever the file's size, while the page cache
still serves repeated reads. Smaller mapped files are gathered straight from the mapping.
Mapped tensors are read-only: never write into them in place.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CHUNK_BYTES = 4 << 20  # rows per step of a full pass (plus a float64 copy: twice this)
SINGLE_PASS_BYTES = 64 << 20  # at most this much: one torch.mean/std, as flowctl always did
GATHER_FROM_MAPPING_MAX_BYTES = 1 << 30  # larger mapped files: gather rows with pread


@dataclass
class _MappedFile:
    """Where the rows of a mapped tensor live in its file."""

    fd: int
    offset: int  # byte offset of row 0
    row_bytes: int
    nbytes: int


_MAPPED: dict[int, _MappedFile] = {}  # by the data_ptr of the tensor's storage


def register_mapped(x: Tensor, path: str | os.PathLike, offset: int) -> Tensor:
    """Record that float32 contiguous x [N, D] maps `path` from byte `offset`; returns x.

    The record (and the file descriptor it keeps open) lives as long as `x`.
    """
    key = x.untyped_storage().data_ptr()
    fd = os.open(path, os.O_RDONLY)
    _MAPPED[key] = _MappedFile(fd, offset, x.shape[1] * x.element_size(),
                               x.numel() * x.element_size())
    weakref.finalize(x, _forget, key, fd)
    return x


def _forget(key: int, fd: int) -> None:
    _MAPPED.pop(key, None)
    os.close(fd)


def is_memory_mapped(x: Tensor) -> bool:
    """Whether x was registered as a view of a mapped file."""
    return x.untyped_storage().data_ptr() in _MAPPED


def row_chunks(x: Tensor, chunk_bytes: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """(first row, rows first..first+k of x) for consecutive chunks of about `chunk_bytes`.

    For a mapped x the chunk is read from the file into one reused buffer: use it before
    asking for the next one.
    """
    rows = max(1, (chunk_bytes or CHUNK_BYTES) // max(1, x.shape[1] * x.element_size()))
    mapped = _MAPPED.get(x.untyped_storage().data_ptr())
    if mapped is None:
        for first in range(0, x.shape[0], rows):
            yield first, x[first:first + rows]
        return
    buffer = torch.empty(min(rows, x.shape[0]), x.shape[1], dtype=x.dtype)
    for first in range(0, x.shape[0], rows):
        chunk = buffer[:min(rows, x.shape[0] - first)]
        _read_exactly(mapped, chunk, mapped.offset + first * mapped.row_bytes)
        yield first, chunk


def first_nonfinite_row(x: Tensor) -> int | None:
    """Index of the first row of x [N, D] holding a NaN or an Inf, or None."""
    if not x.is_floating_point():
        return None
    for first, chunk in row_chunks(x):
        bad = _first_bad_row(chunk)
        if bad is not None:
            return first + bad
    return None


def _first_bad_row(chunk: Tensor) -> int | None:
    # A float64 row sum is finite exactly when every value is (no float32 row can overflow
    # it): one small [rows] temporary instead of a [rows, D] mask. numpy, single-threaded:
    # torch's thread pool spins on every small op and was 30x slower on a busy machine.
    sums = chunk.numpy().sum(axis=1, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(sums))
    return int(bad[0]) if len(bad) else None


def column_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and std (population) of x [N, D] as float32 [D] each; std < 1e-8 (a
    constant column) becomes 1.

    Up to SINGLE_PASS_BYTES: torch's own mean and std, exactly as flowctl always computed
    them. Larger: one pass over `row_chunks` with a ChunkedStats. The result depends only on
    the values, not on whether x is mapped or in memory.
    """
    if x.numel() * x.element_size() <= SINGLE_PASS_BYTES:
        mean, std = x.mean(dim=0), x.std(dim=0, correction=0)
        return mean, torch.where(std < 1e-8, torch.ones_like(std), std)
    stats = ChunkedStats()
    for _, chunk in row_chunks(x):
        stats.add(chunk)
    return stats.result()


class ChunkedStats:
    """Column mean and std over row chunks: float64 sums of deviations from the first chunk's
    mean (so the sum of squares does not cancel), rounded to float32 at the end. In numpy
    (single-threaded, memory-bound work) for the reason given in _first_bad_row."""

    def __init__(self) -> None:
        self.count = 0
        self.shift = self.sum_dev = self.sum_sq = self.work = None

    def add(self, chunk: Tensor) -> None:
        rows = chunk.shape[0]
        # One float64 buffer for every chunk: repeated big allocations fragment the heap,
        # which then keeps them resident.
        if self.work is None or self.work.shape[0] < rows:
            self.work = np.empty(tuple(chunk.shape), dtype=np.float64)
        deviation = self.work[:rows]
        np.copyto(deviation, chunk.numpy())
        if self.shift is None:
            self.shift = deviation.mean(axis=0)
            self.sum_dev = np.zeros_like(self.shift)
            self.sum_sq = np.zeros_like(self.shift)
        deviation -= self.shift
        self.sum_dev += deviation.sum(axis=0)
        np.square(deviation, out=deviation)
        self.sum_sq += deviation.sum(axis=0)
        self.count += rows

    def result(self) -> tuple[Tensor, Tensor]:
        mean64 = self.shift + self.sum_dev / self.count
        var64 = np.maximum(self.sum_sq - np.square(self.sum_dev) / self.count, 0.0) / self.count
        mean = torch.from_numpy(mean64.astype(np.float32))
        std = torch.from_numpy(np.sqrt(var64).astype(np.float32))
        return mean, torch.where(std < 1e-8, torch.ones_like(std), std)


def scan_mapped(x: Tensor) -> tuple[str, int | None, tuple[Tensor, Tensor] | None]:
    """One sequential read of the file a registered x maps, for all a loader needs:
    (sha256 hex of every byte of the file, the first row with a NaN or Inf or None, column
    stats when x is larger than SINGLE_PASS_BYTES else None). Data larger than memory is
    read from disk once instead of three times."""
    mapped = _MAPPED[x.untyped_storage().data_ptr()]
    digest = hashlib.sha256()
    _hash_range(mapped, digest, 0, mapped.offset)
    stats = ChunkedStats() if mapped.nbytes > SINGLE_PASS_BYTES else None
    bad_row = None
    for first, chunk in row_chunks(x):
        digest.update(memoryview(chunk.numpy()).cast("B"))
        if bad_row is None:
            bad = _first_bad_row(chunk)
            bad_row = None if bad is None else first + bad
        if stats is not None and bad_row is None:
            stats.add(chunk)
    _hash_range(mapped, digest, mapped.offset + mapped.nbytes, os.fstat(mapped.fd).st_size)
    return digest.hexdigest(), bad_row, stats.result() if stats is not None and bad_row is None else None


def _hash_range(mapped: _MappedFile, digest, start: int, stop: int) -> None:
    while start < stop:
        piece = os.pread(mapped.fd, min(1 << 20, stop - start), start)
        if not piece:
            raise OSError(f"short read at byte {start} of a mapped data file")
        digest.update(piece)
        start += len(piece)


def gather_rows(x: Tensor, rows: Tensor, out: Tensor | None = None) -> Tensor:
    """The batch x[rows]: x [N, D] (in memory or mapped), rows [B] int64 -> [B, D] float32,
    contiguous, on x's device (CPU for mapped data). Only those rows are read.

    `out`: an optional float32 contiguous [B, D] buffer to fill and return (e.g. pinned memory
    for a fast copy to the GPU). Rows out of range raise IndexError.
    """
    rows = rows.to(device=x.device, dtype=torch.long)
    mapped = _MAPPED.get(x.untyped_storage().data_ptr())
    if mapped is not None and mapped.nbytes > GATHER_FROM_MAPPING_MAX_BYTES:
        return _pread_rows(x, mapped, rows, out)
    if out is not None:
        return torch.index_select(x, 0, rows, out=out)
    batch = x.index_select(0, rows)
    return batch if batch.dtype == torch.float32 else batch.float()


def _pread_rows(x: Tensor, mapped: _MappedFile, rows: Tensor, out: Tensor | None) -> Tensor:
    batch = torch.empty(len(rows), x.shape[1], dtype=x.dtype) if out is None else out
    wanted = rows.tolist()
    if not wanted:
        return batch
    if not (0 <= min(wanted) and max(wanted) < x.shape[0]):
        raise IndexError(f"expected rows in [0, {x.shape[0]}), got {min(wanted)}..{max(wanted)}")
    view = memoryview(batch.numpy()).cast("B")
    size = mapped.row_bytes
    for index, row in enumerate(wanted):
        where = mapped.offset + row * size
        if os.preadv(mapped.fd, [view[index * size:(index + 1) * size]], where) != size:
            raise OSError(f"short read at byte {where} of a mapped data file")
    return batch


def _read_exactly(mapped: _MappedFile, into: Tensor, where: int) -> None:
    view = memoryview(into.numpy()).cast("B")
    done = 0
    while done < len(view):
        count = os.preadv(mapped.fd, [view[done:]], where + done)
        if count <= 0:
            raise OSError(f"short read at byte {where + done} of a mapped data file")
        done += count
