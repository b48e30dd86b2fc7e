"""Build fixed train/val/test split folders for `flowctl train --dataset SIZE`.

Each size is a number of training rows (`1k` = 1000); val and test each get 10% of it, at
least 100 rows. Output: {out}/{size}/{train,val,test}.pt, each a plain float32 tensor [N, D],
or with `--format npy` float32 .npy files, which flowctl memory-maps: data larger than memory.
The same arguments always write the same values in either format, and a smaller size's
training rows are the first rows of every larger size's (more data is a superset).

Splits are written chunk by chunk (.npy: straight to the file), so a split larger than memory
can be made from a generator or from a memory-mapped float32 .npy/.pt file. A generator's
stream is one call per GENERATE_CHUNK_BYTES of rows (the first one seeded as before, so
splits that fit one chunk are what earlier versions wrote).

Examples:
    python scripts/make_splits.py --from embeddings.npy --sizes 1k,5k
    python scripts/make_splits.py --generator gmm --dim 1024 --seed 0
    python scripts/make_splits.py --generator gmm --dim 1024 --sizes 750k --format npy
    python scripts/make_splits.py --generator moons --out /tmp/splits --sizes 200,500
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from study.data import toy
from study.data.dataset import DEFAULT_SPLITS_ROOT, FlowDataset, gather_rows
from study.errors import UsageError

MIN_HELD_OUT = 100  # val and test rows per size, at least
GENERATE_CHUNK_BYTES = 64 << 20  # rows per generator call, and per write
SPLITS = ("train", "val", "test")


def parse_size(token: str) -> int:
    """'1k' -> 1000, '200' -> 200."""
    text = token.strip().lower()
    scale = 1000 if text.endswith("k") else 1
    try:
        size = int(text.removesuffix("k")) * scale
    except ValueError:
        raise UsageError(f"--sizes: {token!r} is not a size like 200, 1k or 10k") from None
    if size <= 0:
        raise UsageError(f"--sizes: {token!r} must be positive")
    return size


def held_out_rows(size: int) -> int:
    """Rows in each of val and test for `size` training rows."""
    return max(MIN_HELD_OUT, size // 10)


# (size name, split) -> (rows, columns, a function giving that split's rows as chunks)
SplitPlan = dict[tuple[str, str], tuple[int, int, Callable[[], Iterator[Tensor]]]]


def plan_splits(sizes: dict[str, int], *, source: Path | None, generator: str | None,
                dim: int, seed: int, n_components: int = 8) -> SplitPlan:
    """What each {size}/{split} file holds, as chunk streams (nothing is generated yet).

    From a file: one seeded permutation of its rows; train is its first `size` rows, then
    val, then test. From a generator: one stream per split, cut to each size's length.
    """
    biggest = max(sizes.values())
    need = {"train": biggest, "val": held_out_rows(biggest), "test": held_out_rows(biggest)}
    plan: SplitPlan = {}
    if source is not None:
        data = FlowDataset(source)
        for name, size in sizes.items():
            if size + 2 * held_out_rows(size) > data.n:
                raise UsageError(f"data file {source}: has {data.n} rows, size {name} needs "
                                 f"{size + 2 * held_out_rows(size)} (train + val + test)")
        order = torch.randperm(data.n, generator=torch.Generator().manual_seed(seed))
        for name, size in sizes.items():
            n_held = held_out_rows(size)
            starts = {"train": 0, "val": size, "test": size + n_held}
            for split in SPLITS:
                rows = order[starts[split]:starts[split] + (size if split == "train" else n_held)]
                plan[(name, split)] = (len(rows), data.dim, _file_chunks(data.x, rows))
    else:
        toy.generate(generator, 1, dim=dim, n_components=n_components,
                     generator=torch.Generator())  # bad names and dims fail before any writing
        for name, size in sizes.items():
            for split in SPLITS:
                length = size if split == "train" else held_out_rows(size)
                plan[(name, split)] = (length, dim, _generated_chunks(
                    generator, seed, split, need[split], length, dim, n_components))
    return plan


def _file_chunks(x: Tensor, rows: Tensor) -> Callable[[], Iterator[Tensor]]:
    step = max(1, GENERATE_CHUNK_BYTES // (4 * x.shape[1]))
    return lambda: (gather_rows(x, rows[first:first + step]) for first in range(0, len(rows), step))


def _generated_chunks(name: str, seed: int, split: str, total: int, length: int, dim: int,
                      n_components: int) -> Callable[[], Iterator[Tensor]]:
    """The first `length` rows of the split's stream of `total` rows: chunk 0 from
    toy.split_generator(name, seed, split), chunk k from the split named "{split}:chunk={k}"."""
    step = max(1, GENERATE_CHUNK_BYTES // (4 * dim))

    def chunks() -> Iterator[Tensor]:
        for index, first in enumerate(range(0, length, step)):
            stream = split if index == 0 else f"{split}:chunk={index}"
            rows = toy.generate(name, min(step, total - first), dim=dim, n_components=n_components,
                                generator=toy.split_generator(name, seed, stream))
            yield rows[:length - first]
    return chunks


def write_splits(plan: SplitPlan, out: Path, fmt: str = "pt") -> list[tuple[str, ...]]:
    """Write each {out}/{size}/{split}.{fmt}; returns table rows for printing."""
    table = []
    for name in dict.fromkeys(size_name for size_name, _ in plan):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            n_rows, n_cols, chunks = plan[(name, split)]
            path = folder / f"{split}.{fmt}"
            temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            if fmt == "npy":
                _write_npy(temp, n_rows, n_cols, chunks())
            else:  # a fresh tensor: torch.save of a slice would write the whole storage
                torch.save(torch.cat(list(chunks())).contiguous().clone(), temp)
            os.replace(temp, path)
        counts = [str(plan[(name, s)][0]) for s in SPLITS]
        table.append((name, *counts, str(plan[(name, "train")][1]), str(folder)))
    return table


def _write_npy(path: Path, n_rows: int, n_cols: int, chunks: Iterator[Tensor]) -> None:
    """A float32 [n_rows, n_cols] .npy file written chunk by chunk, never held in memory."""
    written = 0
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                     "fortran_order": False, "shape": (n_rows, n_cols)})
        for chunk in chunks:
            handle.write(chunk.to(torch.float32).contiguous().numpy().tobytes())
            written += len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    assert written == n_rows, f"expected {n_rows} rows, wrote {written}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="source", type=Path, metavar="FILE",
                        help="a file of vectors (.pt, .npy, .csv, .jsonl)")
    source.add_argument("--generator", help=f"a built-in: {', '.join(toy.GENERATOR_NAMES)}")
    parser.add_argument("--dim", type=int, default=2, help="dimension for --generator (default 2)")
    parser.add_argument("--components", type=int, default=8, help="mixture components for gmm")
    parser.add_argument("--out", type=Path, default=DEFAULT_SPLITS_ROOT, help="output root")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default="1k,5k,10k", help="training rows per split folder")
    parser.add_argument("--format", choices=("pt", "npy"), default="pt",
                        help="pt (default) or npy (memory-mapped by flowctl: data larger than memory)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the script; returns the exit code (2 for bad input)."""
    args = parse_args(argv)
    try:
        sizes = {token.strip().lower(): parse_size(token) for token in args.sizes.split(",")}
        plan = plan_splits(sizes, source=args.source, generator=args.generator, dim=args.dim,
                           seed=args.seed, n_components=args.components)
        table = write_splits(plan, args.out, args.format)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    header = ("size", "train", "val", "test", "dim", "folder")
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
