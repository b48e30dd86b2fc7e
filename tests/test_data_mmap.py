"""Data larger than memory: float32 .npy and .pt files are memory-mapped, never read whole.

What is checked: the loaded tensor lies inside a mapping of the file (/proc/self/maps); stats
and batches are bit-identical to the same data held in memory; finiteness and stats work
through the data in chunks; the resident memory of a process that loads a split, computes its
stats and gathers batches stays far below the file size (measured in a subprocess). Linux only
(/proc), like the machines flowctl trains on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from study.data import matrix
from study.data.dataset import FlowDataset, column_stats, gather_rows, resolve_dataset
from study.errors import UsageError
from tests.support.helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")


def data(rows: int = 3000, dim: int = 5, seed: int = 0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return (generator.standard_normal((rows, dim)) * 3 + 7).astype(np.float32)


def save(x: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, x)
    else:
        torch.save(torch.from_numpy(x), path)
    return path


def split_folder(folder: Path, ext: str, seed: int = 0) -> dict[str, np.ndarray]:
    arrays = {"train": data(3000, seed=seed), "val": data(300, seed=seed + 1),
              "test": data(200, seed=seed + 2)}
    for split, x in arrays.items():
        save(x, folder / f"{split}.{ext}")
    return arrays


def mapped_files() -> dict[str, list[tuple[int, int]]]:
    """{file path: [(start, end) of each mapping]} of this process."""
    mappings: dict[str, list[tuple[int, int]]] = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            start, end = (int(address, 16) for address in parts[0].split("-"))
            mappings.setdefault(parts[5], []).append((start, end))
    return mappings


def inside_a_mapping_of(tensor: torch.Tensor, path: Path) -> bool:
    first, last = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * 4
    return any(start <= first and last <= end for start, end in mapped_files().get(str(path), []))


@pytest.mark.parametrize("ext", ["npy", "pt"])
def test_float32_files_are_memory_mapped_not_copied(tmp_path: Path, ext: str):
    arrays = split_folder(tmp_path / "big", ext)
    splits = resolve_dataset(str(tmp_path / "big"), seed=0, val_fraction=0.1)
    for split in ("train", "val", "test"):
        tensor = getattr(splits, split)
        assert tensor.dtype == torch.float32 and tensor.shape == arrays[split].shape
        assert inside_a_mapping_of(tensor, tmp_path / "big" / f"{split}.{ext}"), split
        assert np.array_equal(tensor.numpy(), arrays[split])
    assert splits.memory_mapped


@pytest.mark.parametrize("ext", ["npy", "pt"])
def test_mapped_and_in_memory_give_identical_stats_and_batches(
        tmp_path: Path, ext: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(matrix, "CHUNK_BYTES", 4096)  # 3000 x 5 floats: 59 chunks
    monkeypatch.setattr(matrix, "SINGLE_PASS_BYTES", 0)  # the chunked stats, as for big data
    arrays = split_folder(tmp_path / "big", ext)
    mapped = resolve_dataset(str(tmp_path / "big"), seed=0, val_fraction=0.1)
    in_memory = torch.from_numpy(arrays["train"].copy())
    mean, std = column_stats(in_memory)
    assert torch.equal(mapped.mean, mean) and torch.equal(mapped.std, std)
    reference = arrays["train"].astype(np.float64)
    assert np.allclose(mean.numpy(), reference.mean(0), rtol=1e-6)
    assert np.allclose(std.numpy(), reference.std(0), rtol=1e-6)
    rows = torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:256]
    batch = gather_rows(mapped.train, rows)
    assert batch.dtype == torch.float32 and batch.is_contiguous() and batch.shape == (256, 5)
    assert torch.equal(batch, in_memory[rows]) and torch.equal(batch, gather_rows(in_memory, rows))


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_chunked_stats_match_float64_even_far_from_zero(monkeypatch: pytest.MonkeyPatch,
                                                        offset: float):
    monkeypatch.setattr(matrix, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(matrix, "SINGLE_PASS_BYTES", 0)
    x = torch.from_numpy(data(5000, 7) + np.float32(offset))
    x[17, 2] = offset + 500  # an outlier in the first chunk, which sets the shift
    mean, std = column_stats(x)
    reference = x.double()
    assert torch.allclose(mean.double(), reference.mean(0), rtol=1e-7, atol=0)
    assert torch.allclose(std.double(), reference.std(0, correction=0), rtol=1e-6, atol=0)
    constant = torch.full((5000, 3), offset + 1.5)
    assert torch.equal(column_stats(constant)[1], torch.ones(3))  # std 0 -> 1


def test_one_chunk_gives_the_same_stats_as_before(tmp_path: Path):
    """Data that fits one chunk: torch's own mean/std, as flowctl always computed them."""
    x = torch.from_numpy(data(500))
    mean, std = column_stats(x)
    assert torch.equal(mean, x.mean(dim=0)) and torch.equal(std, x.std(dim=0, correction=0))


def test_non_float32_files_are_converted_into_memory(tmp_path: Path):
    path = save(data(100).astype(np.float64), tmp_path / "doubles.npy")
    loaded = FlowDataset(path)
    assert loaded.x.dtype == torch.float32 and not inside_a_mapping_of(loaded.x, path)
    assert torch.equal(loaded.x, torch.from_numpy(np.load(path)).float())


def test_fortran_order_npy_is_read_correctly(tmp_path: Path):
    x = np.asfortranarray(data(50))
    path = tmp_path / "fortran.npy"
    np.save(path, x)
    assert torch.equal(FlowDataset(path).x, torch.from_numpy(np.ascontiguousarray(x)))


@pytest.mark.parametrize("ext", ["npy", "pt"])
def test_a_nan_deep_in_the_file_is_found_chunk_by_chunk(tmp_path: Path, ext: str,
                                                         monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(matrix, "CHUNK_BYTES", 4096)
    x = data(3000)
    x[2345, 3] = np.nan
    path = save(x, tmp_path / f"nan.{ext}")
    with pytest.raises(UsageError, match="row 2345 holds NaN, Inf or a number beyond float32"):
        FlowDataset(path)


def test_a_split_folder_with_both_formats_is_refused(tmp_path: Path):
    split_folder(tmp_path / "both", "npy")
    save(data(10), tmp_path / "both" / "train.pt")
    with pytest.raises(UsageError, match="both train.pt and train.npy"):
        resolve_dataset(str(tmp_path / "both"), seed=0, val_fraction=0.1)


def test_npy_and_pt_folders_of_the_same_data_give_the_same_splits(tmp_path: Path):
    split_folder(tmp_path / "a", "npy")
    split_folder(tmp_path / "b", "pt")
    a = resolve_dataset(str(tmp_path / "a"), seed=0, val_fraction=0.1)
    b = resolve_dataset(str(tmp_path / "b"), seed=0, val_fraction=0.1)
    for field in ("train", "val", "test", "mean", "std"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.checksum != b.checksum  # the checksum is of the files, which differ


RSS_PROBE = """
import json, sys, torch
from study.data import matrix
from study.data.dataset import gather_rows, resolve_dataset

matrix.GATHER_FROM_MAPPING_MAX_BYTES = int(sys.argv[3])  # the production value is 1 GiB

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
torch.ones(1)  # torch's own start-up memory counts before the baseline
before = status("VmHWM")
splits = resolve_dataset(sys.argv[1], seed=0, val_fraction=0.1)
generator = torch.Generator().manual_seed(0)
total = 0.0
for _ in range(int(sys.argv[2])):
    rows = torch.randint(len(splits.train), (1024,), generator=generator)
    total += float(gather_rows(splits.train, rows).sum())
print(json.dumps({"before": before, "peak": status("VmHWM"), "mapped": splits.memory_mapped,
                  "rows": len(splits.train)}))
"""


@pytest.mark.slow  # a real process reading 160 MB: seconds
@pytest.mark.parametrize("ext", ["npy", "pt"])
def test_resident_memory_stays_far_below_the_file_size(tmp_path: Path, ext: str):
    """160 MB of training rows: loading, checksum, finiteness, stats and 100 random batches of
    1024 rows raise the process's peak RSS by well under a quarter of that. Gathering by
    pread starts at 1 GiB in production; lowered here to 16 MiB so a small file takes it."""
    rows, dim = 40_000, 1024
    folder = tmp_path / "big"
    train = np.lib.format.open_memmap(tmp_path / "train.npy", mode="w+", dtype=np.float32,
                                      shape=(rows, dim))
    for start in range(0, rows, 5000):
        train[start:start + 5000] = data(5000, dim, seed=start)
    train.flush()
    save(np.asarray(train), folder / f"train.{ext}")
    del train
    save(data(100, dim), folder / f"val.{ext}")
    size = (folder / f"train.{ext}").stat().st_size
    # A fixed malloc mmap threshold: glibc otherwise keeps a varying 0-40 MB of freed 4 MB
    # batches in its heap (seen here), noise that does not grow with the file.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = subprocess.run([sys.executable, "-c", RSS_PROBE, str(folder), "100", str(16 << 20)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["mapped"] and report["rows"] == rows
    growth = report["peak"] - report["before"]
    assert growth < size / 4, f"peak RSS grew by {growth / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


@pytest.mark.parametrize("ext", ["npy", "pt"])
@pytest.mark.parametrize("by_pread", [False, True], ids=["via-mapping", "pread"])
def test_both_gather_paths_give_the_same_batches(tmp_path: Path, ext: str, by_pread: bool,
                                                 monkeypatch: pytest.MonkeyPatch):
    """Files above GATHER_FROM_MAPPING_MAX_BYTES (1 GiB) are gathered with pread; lowered to
    0 here so a small file takes that path too."""
    if by_pread:
        monkeypatch.setattr(matrix, "GATHER_FROM_MAPPING_MAX_BYTES", 0)
    x = data(2000, 6)
    mapped = FlowDataset(save(x, tmp_path / f"x.{ext}")).x
    assert matrix.is_memory_mapped(mapped)
    rows = torch.tensor([5, 1999, 0, 5, 1234])
    expected = torch.from_numpy(x)[rows]
    assert torch.equal(gather_rows(mapped, rows), expected)
    buffer = torch.empty(5, 6)
    assert gather_rows(mapped, rows, out=buffer) is buffer and torch.equal(buffer, expected)
    assert gather_rows(mapped, torch.tensor([], dtype=torch.long)).shape == (0, 6)
    for bad in (2000, -1):
        with pytest.raises(IndexError):
            gather_rows(mapped, torch.tensor([0, bad]))


@pytest.mark.parametrize("ext", ["npy", "pt"])
def test_a_mapped_file_is_read_from_disk_once(tmp_path: Path, ext: str,
                                              monkeypatch: pytest.MonkeyPatch):
    """Checksum, finiteness and stats come from one sequential read: data larger than memory
    (not in the page cache) costs one pass over the disk, not three."""
    import hashlib

    monkeypatch.setattr(matrix, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(matrix, "SINGLE_PASS_BYTES", 0)
    path = save(data(3000), tmp_path / f"x.{ext}")
    read = []
    real_preadv, real_pread = os.preadv, os.pread

    def preadv(fd, buffers, offset):
        count = real_preadv(fd, buffers, offset)
        read.append(count)
        return count

    def pread(fd, size, offset):
        piece = real_pread(fd, size, offset)
        read.append(len(piece))
        return piece

    monkeypatch.setattr(matrix.os, "preadv", preadv)
    monkeypatch.setattr(matrix.os, "pread", pread)
    loaded = FlowDataset(path)
    mean, std = loaded.mean, loaded.std
    assert sum(read) == path.stat().st_size
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    expected = column_stats(torch.from_numpy(data(3000)))
    assert torch.equal(mean, expected[0]) and torch.equal(std, expected[1])
