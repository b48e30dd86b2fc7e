"""Build fixed train/val/test split folders for `flowctl train --dataset SIZE`.

Each size is a number of training rows (`1k` = 1000); val and test each get 10% of it, at
least 100 rows. Output: {out}/{size}/{train,val,test}.pt, each a plain float32 tensor [N, D].
The same arguments always write the same tensors, and a smaller size's training rows are
the first rows of every larger size's (more data is a superset, not a different sample).

Examples:
    python scripts/make_splits.py --from embeddings.npy --sizes 1k,5k
    python scripts/make_splits.py --generator gmm --dim 1024 --seed 0
    python scripts/make_splits.py --generator moons --out /tmp/splits --sizes 200,500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor

from study.data import toy
from study.data.dataset import DEFAULT_SPLITS_ROOT, FlowDataset
from study.errors import UsageError

MIN_HELD_OUT = 100  # val and test rows per size, at least


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


def build_splits(sizes: dict[str, int], *, source: Path | None, generator: str | None,
                 dim: int, seed: int, n_components: int = 8) -> dict[str, dict[str, Tensor]]:
    """{size name: {"train": [size, D], "val": [n, D], "test": [n, D]}} (n = held_out_rows).

    From a file: one seeded permutation of its rows; train is its first `size` rows, then
    val, then test. From a generator: one stream per split, cut to each size's length.
    """
    biggest = max(sizes.values())
    need = {"train": biggest, "val": held_out_rows(biggest), "test": held_out_rows(biggest)}
    if source is not None:
        data = FlowDataset(source)
        for name, size in sizes.items():
            if size + 2 * held_out_rows(size) > data.n:
                raise UsageError(f"data file {source}: has {data.n} rows, size {name} needs "
                                 f"{size + 2 * held_out_rows(size)} (train + val + test)")
        rows = data.x[torch.randperm(data.n, generator=torch.Generator().manual_seed(seed))]
        result = {}
        for name, size in sizes.items():
            n_held = held_out_rows(size)
            result[name] = {"train": rows[:size], "val": rows[size:size + n_held],
                            "test": rows[size + n_held:size + 2 * n_held]}
    else:
        streams = {split: toy.generate(generator, n, dim=dim, n_components=n_components,
                                       generator=toy.split_generator(generator, seed, split))
                   for split, n in need.items()}
        result = {name: {"train": streams["train"][:size],
                         "val": streams["val"][:held_out_rows(size)],
                         "test": streams["test"][:held_out_rows(size)]}
                  for name, size in sizes.items()}
    # clone: torch.save of a slice would write the whole underlying storage
    return {name: {split: x.clone() for split, x in splits.items()} for name, splits in result.items()}


def write_splits(splits: dict[str, dict[str, Tensor]], out: Path) -> list[tuple[str, ...]]:
    """Save each size to {out}/{size}/{split}.pt; returns table rows for printing."""
    table = []
    for name, by_split in splits.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, x in by_split.items():
            torch.save(x, folder / f"{split}.pt")
        counts = [str(by_split[s].shape[0]) for s in ("train", "val", "test")]
        table.append((name, *counts, str(by_split["train"].shape[1]), str(folder)))
    return table


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the script; returns the exit code (2 for bad input)."""
    args = parse_args(argv)
    try:
        sizes = {token.strip().lower(): parse_size(token) for token in args.sizes.split(",")}
        splits = build_splits(sizes, source=args.source, generator=args.generator, dim=args.dim,
                              seed=args.seed, n_components=args.components)
        table = write_splits(splits, args.out)
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
