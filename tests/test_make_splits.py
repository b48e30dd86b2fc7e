"""scripts/make_splits.py: deterministic split folders from a file or a built-in generator."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from study.data.dataset import resolve_dataset
from tests.support.helpers import error_line

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "make_splits.py"
_spec = importlib.util.spec_from_file_location("make_splits", SCRIPT)
make_splits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_splits)


def _load(folder: Path) -> dict[str, torch.Tensor]:
    return {split: torch.load(folder / f"{split}.pt", weights_only=True)
            for split in ("train", "val", "test")}


def test_generator_writes_each_size_with_10_percent_held_out(tmp_path, capsys):
    out = tmp_path / "splits"
    assert make_splits.main(["--generator", "moons", "--out", str(out), "--sizes", "200,2k"]) == 0
    small, large = _load(out / "200"), _load(out / "2k")
    assert [small[s].shape for s in ("train", "val", "test")] == [(200, 2), (100, 2), (100, 2)]
    assert [large[s].shape for s in ("train", "val", "test")] == [(2000, 2), (200, 2), (200, 2)]
    assert all(type(x) is torch.Tensor and x.dtype == torch.float32 for x in small.values())
    assert torch.equal(large["train"][:200], small["train"])  # bigger sizes extend smaller ones
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["size", "train", "val", "test", "dim", "folder"]
    assert table[1].split()[:5] == ["200", "200", "100", "100", "2"]


def test_two_runs_give_identical_tensors_and_seeds_differ(tmp_path):
    runs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        args = ["--generator", "8gaussians", "--out", str(tmp_path / name), "--sizes", "300",
                "--seed", seed]
        assert make_splits.main(args) == 0
        runs[name] = _load(tmp_path / name / "300")
    for split in ("train", "val", "test"):
        assert torch.equal(runs["a"][split], runs["b"][split])
        assert not torch.equal(runs["a"][split], runs["c"][split])


def test_gmm_in_any_dimension(tmp_path):
    out = tmp_path / "gmm"
    args = ["--generator", "gmm", "--dim", "32", "--components", "3", "--out", str(out),
            "--sizes", "200"]
    assert make_splits.main(args) == 0
    assert _load(out / "200")["train"].shape == (200, 32)


def test_from_file_uses_disjoint_rows_of_the_file(tmp_path):
    rows = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    np.save(tmp_path / "vectors.npy", rows)
    out = tmp_path / "splits"
    args = ["--from", str(tmp_path / "vectors.npy"), "--out", str(out), "--sizes", "200,500"]
    assert make_splits.main(args) == 0
    splits = _load(out / "500")
    firsts = torch.cat(list(splits.values()))[:, 0]
    assert len(firsts) == 700 and len(torch.unique(firsts)) == 700
    assert set((firsts / 3).long().tolist()) <= set(range(1000))
    # split folders are what `--dataset 500` reads
    resolved = resolve_dataset("500", seed=0, val_fraction=0.1, splits_root=out)
    assert torch.equal(resolved.test, splits["test"]) and resolved.dim == 3


@pytest.mark.parametrize("args, fragment", [
    (["--generator", "moons", "--sizes", "abc"], "'abc' is not a size like 200, 1k or 10k"),
    (["--generator", "moons", "--sizes", "0"], "must be positive"),
    (["--generator", "moons", "--dim", "3", "--sizes", "200"], "2-D only"),
    (["--generator", "spiral", "--sizes", "200"], "unknown generator 'spiral'"),
    (["--from", "missing.npy", "--sizes", "200"], "no such file"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, fragment):
    assert make_splits.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    error_line(err, fragment)
    assert not (tmp_path / "out").exists()


def test_file_too_small_for_a_size(tmp_path, capsys):
    np.save(tmp_path / "few.npy", np.ones((250, 2)))
    args = ["--from", str(tmp_path / "few.npy"), "--out", str(tmp_path), "--sizes", "200"]
    assert make_splits.main(args) == 2
    assert "has 250 rows, size 200 needs 400 (train + val + test)" in capsys.readouterr().err


def test_needs_exactly_one_source(tmp_path):
    with pytest.raises(SystemExit) as info:
        make_splits.main(["--out", str(tmp_path)])
    assert info.value.code == 2


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as info:
        make_splits.main(["--help"])
    assert info.value.code == 0
    assert "--generator gmm --dim 1024" in capsys.readouterr().out


@pytest.mark.slow
def test_runs_as_a_script(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--generator", "scurve", "--sizes", "100",
         "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "100" / "test.pt").is_file()
    assert str(tmp_path / "100") in result.stdout


# -- --format npy: the same values, written chunk by chunk, memory-mapped when read ------------

def _load_npy(folder: Path) -> dict[str, torch.Tensor]:
    return {split: torch.from_numpy(np.load(folder / f"{split}.npy"))
            for split in ("train", "val", "test")}


@pytest.mark.parametrize("chunk_bytes", [64 << 20, 3000], ids=["one-chunk", "many-chunks"])
def test_npy_format_writes_the_same_values_as_pt(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(make_splits, "GENERATE_CHUNK_BYTES", chunk_bytes)
    common = ["--generator", "gmm", "--dim", "16", "--sizes", "300,1k", "--seed", "3"]
    assert make_splits.main([*common, "--out", str(tmp_path / "pt")]) == 0
    assert make_splits.main([*common, "--out", str(tmp_path / "npy"), "--format", "npy"]) == 0
    for size in ("300", "1k"):
        pt, npy = _load(tmp_path / "pt" / size), _load_npy(tmp_path / "npy" / size)
        for split in ("train", "val", "test"):
            assert npy[split].dtype == torch.float32 and torch.equal(npy[split], pt[split]), split
    small, large = _load_npy(tmp_path / "npy" / "300"), _load_npy(tmp_path / "npy" / "1k")
    assert torch.equal(large["train"][:300], small["train"])  # still a superset
    assert not list((tmp_path / "npy").rglob(".*tmp-*")), "temp files left behind"


def test_a_split_that_fits_one_chunk_is_what_earlier_versions_wrote(tmp_path):
    from study.data import toy

    assert make_splits.main(["--generator", "gmm", "--dim", "8", "--sizes", "500,1k",
                             "--out", str(tmp_path), "--format", "npy"]) == 0
    for split, need in (("train", 1000), ("val", 100)):
        stream = toy.generate("gmm", need, dim=8, generator=toy.split_generator("gmm", 0, split))
        assert torch.equal(_load_npy(tmp_path / "500")[split], stream[:500 if split == "train" else 100])


def test_npy_split_from_a_file_and_read_back_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(make_splits, "GENERATE_CHUNK_BYTES", 100)  # 8 rows per chunk
    rows = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    np.save(tmp_path / "vectors.npy", rows)
    common = ["--from", str(tmp_path / "vectors.npy"), "--sizes", "200,500"]
    assert make_splits.main([*common, "--out", str(tmp_path / "pt")]) == 0
    assert make_splits.main([*common, "--out", str(tmp_path / "npy"), "--format", "npy"]) == 0
    assert all(torch.equal(_load(tmp_path / "pt" / "500")[s], _load_npy(tmp_path / "npy" / "500")[s])
               for s in ("train", "val", "test"))
    resolved = resolve_dataset("500", seed=0, val_fraction=0.1, splits_root=tmp_path / "npy")
    assert resolved.memory_mapped and torch.equal(resolved.train, _load(tmp_path / "pt" / "500")["train"])
