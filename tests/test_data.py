"""study.data: built-in generators, data files, dataset resolution, augmentations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from study.data import toy
from study.data.augment import AUGMENTATIONS, augment
from study.data.dataset import FlowDataset, resolve_dataset
from study.errors import UsageError
from study.flow_matching.config import AUG_NAMES
from tests.support.helpers import CreatesMarker

MATRIX = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.5, -6.0], [0.0, 0.25, 1e3], [7.0, 8.0, 9.0]])


def _splits(seed: int, name: str = "moons"):
    return resolve_dataset(name, seed=seed, val_fraction=0.1)


def _write_split_folder(folder: Path, train: torch.Tensor, val: torch.Tensor,
                        test: torch.Tensor | None = None) -> Path:
    folder.mkdir(parents=True)
    torch.save(train, folder / "train.pt")
    torch.save(val, folder / "val.pt")
    if test is not None:
        torch.save(test, folder / "test.pt")
    return folder


def _usage_error(call) -> str:
    with pytest.raises(UsageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- built-in generators -------------------------------------------------------------------

@pytest.mark.parametrize("name", list(toy.TOY_DATASETS))
def test_builtin_has_fixed_split_sizes_and_checksum(name):
    splits = _splits(0, name)
    sizes = toy.split_sizes(name)
    assert sizes == ({"train": 10_000, "val": 1_000, "test": 10_000} if name.startswith("tong-")
                     else {"train": 20_000, "val": 2_000, "test": 2_000})
    assert splits.train.shape == (sizes["train"], 2) and splits.train.dtype == torch.float32
    assert splits.val.shape == (sizes["val"], 2) and splits.test.shape == (sizes["test"], 2)
    assert torch.isfinite(splits.train).all()
    assert splits.dim == 2 and splits.source == f"built-in {name} (seed 0)"
    assert splits.checksum == hashlib.sha256(f"builtin:{name}:seed=0:v1".encode()).hexdigest()
    assert splits.normalization_stats()["mean"].shape == (2,)


@pytest.mark.parametrize("name", list(toy.TOY_DATASETS))
def test_builtin_is_deterministic_per_seed_and_differs_across_seeds(name):
    first, again, other = _splits(3, name), _splits(3, name), _splits(4, name)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(first, split), getattr(again, split))
        assert not torch.equal(getattr(first, split), getattr(other, split))
    assert not torch.equal(first.train[:2000], first.test)  # splits are independent streams
    assert first.checksum != other.checksum


@pytest.mark.parametrize("name", list(toy.TOY_DATASETS))
def test_generators_use_only_their_own_generator(name):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    x = toy.TOY_DATASETS[name](500, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(x, toy.TOY_DATASETS[name](500, torch.Generator().manual_seed(0)))


def test_builtin_scales_match_torchcfm_conventions():
    moons = toy.moons(5000, torch.Generator().manual_seed(0))
    assert moons[:, 0].abs().max() < 3 and moons.mean(0).abs().max() < 0.1
    radii = toy.eight_gaussians(5000, torch.Generator().manual_seed(0)).norm(dim=1)
    assert 4.5 < radii.mean() < 5.5
    board = toy.checkerboard(5000, torch.Generator().manual_seed(0))
    assert board.abs().max() <= 4.0
    # only the dark squares: the 2x2 cell indices of every point add up to an even number
    assert ((torch.floor(board[:, 0] / 2) + torch.floor(board[:, 1] / 2)) % 2 == 0).all()


@pytest.mark.parametrize("dim", [1, 2, 64])
def test_gaussian_mixture_any_dim_same_centres_for_every_generator(dim):
    x = toy.gaussian_mixture(300, dim, 4, torch.Generator().manual_seed(0))
    assert x.shape == (300, dim) and x.dtype == torch.float32
    exact = [toy.gaussian_mixture(200, dim, 4, torch.Generator().manual_seed(s), component_std=0.0)
             for s in (0, 1)]
    centres = torch.unique(torch.cat(exact), dim=0)
    assert len(centres) <= 4 and torch.allclose(centres.norm(dim=1), torch.tensor(4.0))


def test_generate_checks_dim_and_name():
    assert toy.generate("gmm", 10, dim=7, generator=torch.Generator()).shape == (10, 7)
    assert "2-D only" in _usage_error(lambda: toy.generate("moons", 10, dim=3,
                                                           generator=torch.Generator()))
    assert "gmm" in _usage_error(lambda: toy.generate("spiral", 10, dim=2,
                                                      generator=torch.Generator()))


def test_sample_source():
    g = torch.Generator().manual_seed(0)
    assert toy.sample_source("gaussian", 8, 5, g).shape == (8, 5)
    assert toy.sample_source("8gaussians", 8, 2, g).shape == (8, 2)
    assert "use --source gaussian" in _usage_error(lambda: toy.sample_source("moons", 8, 3, g))
    assert "choose gaussian or one of: moons" in _usage_error(
        lambda: toy.sample_source("uniform", 8, 2, g))


# --- file formats ---------------------------------------------------------------------------

def _write(path: Path, fmt: str, x: torch.Tensor) -> Path:
    if fmt == "pt":
        torch.save(x, path)
    elif fmt == "npy":
        np.save(path, x.numpy())
    elif fmt == "csv":
        path.write_text("a,b,c\n" + "".join(",".join(map(str, r)) + "\n\n" for r in x.tolist()))
    else:
        lines = [json.dumps({"id": i, "vec": r}) if i % 2 else json.dumps(r)
                 for i, r in enumerate(x.tolist())]
        path.write_text("\n\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["pt", "npy", "csv", "jsonl"])
def test_each_format_round_trips(tmp_path, fmt):
    path = _write(tmp_path / f"vectors.{fmt}", fmt, MATRIX)
    data = FlowDataset(path)
    assert data.x.dtype == torch.float32 and torch.equal(data.x, MATRIX)
    assert (data.n, data.dim, len(data)) == (4, 3, 4)
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.allclose(data.mean, MATRIX.mean(0))
    assert torch.allclose(data.std, MATRIX.std(0, correction=0))


@pytest.mark.parametrize("key", ["x", "embeddings"])
def test_pt_dict_with_x_or_embeddings(tmp_path, key):
    torch.save({key: MATRIX.double(), "labels": torch.arange(4)}, tmp_path / "d.pt")
    assert torch.equal(FlowDataset(tmp_path / "d.pt").x, MATRIX)


# --- text files as spreadsheets, editors and other tools write them ---------------------------

BOM = "\ufeff"  # UTF-8 byte-order mark: Excel's "CSV UTF-8", Notepad, PowerShell
CSV_ROWS = ["1.0,2.0,3.0", "4.0,5.5,-6.0", "0.0,0.25,1000.0", "7,8,9"]
JSONL_ROWS = ["[1.0, 2.0, 3.0]", '{"id": 1, "vec": [4.0, 5.5, -6.0]}', "[0, 0.25, 1e3]", "[7, 8, 9]"]


def _load_text(tmp_path: Path, name: str, text: str) -> torch.Tensor:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return FlowDataset(path).x


@pytest.mark.parametrize("header", ["", "a,b,c\n"], ids=["headerless", "header"])
def test_csv_with_a_byte_order_mark_keeps_every_row(tmp_path, header):
    assert torch.equal(_load_text(tmp_path, "bom.csv", BOM + header + "\n".join(CSV_ROWS)), MATRIX)


def test_jsonl_with_a_byte_order_mark_loads(tmp_path):
    assert torch.equal(_load_text(tmp_path, "bom.jsonl", BOM + "\n".join(JSONL_ROWS)), MATRIX)


def test_csv_with_quoted_fields_loads(tmp_path):
    text = "\"a\",\"b\",\"c\"\n" + "\n".join(
        ",".join(f'"{cell}"' if i % 2 else f' "{cell}"' for i, cell in enumerate(row.split(",")))
        for row in CSV_ROWS)
    assert torch.equal(_load_text(tmp_path, "quoted.csv", text), MATRIX)


@pytest.mark.parametrize("ext, rows", [("csv", CSV_ROWS), ("jsonl", JSONL_ROWS)])
def test_crlf_line_ends_load(tmp_path, ext, rows):
    assert torch.equal(_load_text(tmp_path, f"crlf.{ext}", "\r\n".join(rows) + "\r\n"), MATRIX)


@pytest.mark.parametrize("ext, rows", [("csv", CSV_ROWS), ("jsonl", JSONL_ROWS)])
@pytest.mark.parametrize("layout", ["blank-lines", "trailing-newline", "no-trailing-newline",
                                    "excel"])
def test_blank_lines_and_line_endings_load(tmp_path, ext, rows, layout):
    text = {
        "blank-lines": "\n\n" + "\n  \n\n".join(rows) + "\n\n\t\n",
        "trailing-newline": "\n".join(rows) + "\n",
        "no-trailing-newline": "\n".join(rows),
        "excel": BOM + "\r\n".join(rows) + "\r\n\r\n",
    }[layout]
    assert torch.equal(_load_text(tmp_path, f"{layout}.{ext}", text), MATRIX)


@pytest.mark.parametrize("newline, bom", [("\n", ""), ("\r\n", BOM)], ids=["lf", "crlf-bom"])
def test_malformed_jsonl_line_is_one_line_error_with_its_number(tmp_path, newline, bom):
    path = tmp_path / "bad.jsonl"
    lines = [JSONL_ROWS[0], "", '{"vec": [4.0, 5.5, -6.0]', JSONL_ROWS[2]]
    path.write_bytes((bom + newline.join(lines) + newline).encode())
    message = _usage_error(lambda: FlowDataset(path))
    assert message.startswith(f"data file {path}: line 3 is not valid JSON"), message


def _pt(value):
    return lambda path: torch.save(value, path)


def _text(text):
    return lambda path: path.write_text(text)


def _npy(array, **kwargs):
    return lambda path: np.save(path, array, **kwargs)


MALFORMED = [
    ("missing.csv", None, "no such file"),
    ("empty.csv", _text(""), "file is empty"),
    ("data.txt", _text("1,2\n"), "unsupported extension '.txt'; supported: .pt, .npy, .csv, .jsonl"),
    ("flat.pt", _pt(torch.ones(5)), "expected a 2-D array [N, D], got shape (5,)"),
    ("cube.npy", _npy(np.ones((2, 2, 2))), "got shape (2, 2, 2)"),
    ("words.csv", _text("1,2,3\n4,5,6\n7,abc,9\n"), "line 3 has a non-numeric value 'abc'"),
    ("ragged.csv", _text("x,y,z\n1,2,3\n4,5\n"), "line 3 has 2 columns, expected 3"),
    ("ragged.jsonl", _text("[1, 2, 3]\n[4, 5]\n"), "line 2 has 2 values, expected 3"),
    ("broken.jsonl", _text("[1, 2\n"), "line 1 is not valid JSON"),
    ("strings.jsonl", _text('["a", "b"]\n'), "line 1 is not a list of numbers"),
    ("bools.jsonl", _text("[true, false]\n"), "line 1 is not a list of numbers"),
    ("two.jsonl", _text('{"a": [1], "b": [2]}\n'), "one numeric list field, found a, b"),
    ("deep.jsonl", _text("[1, 2]\n" + "[" * 100_000 + "]" * 100_000 + "\n"),
     "line 2 nests lists too deeply"),
    ("nan.csv", _text("1,2\nnan,3\n"), "row 1 holds NaN, Inf or a number beyond float32"),
    ("inf.npy", _npy(np.array([[1.0], [2.0], [np.inf]])), "row 2 holds NaN, Inf or a number beyond float32"),
    ("nan.jsonl", _text("[1, NaN]\n"), "row 0 holds NaN, Inf or a number beyond float32"),
    ("huge.csv", _text("1e39,0\n"), "row 0 holds NaN, Inf or a number beyond float32"),  # overflows float32
    ("header.csv", _text("a,b\n"), "has zero rows"),
    ("none.pt", _pt(torch.zeros(0, 3)), "has zero rows"),
    ("nocols.npy", _npy(np.zeros((3, 0))), "has zero columns"),
    ("dict.pt", _pt({"a": torch.ones(2, 2)}), "dict has no 'x' or 'embeddings' key (keys: a)"),
    ("list.pt", _pt([1.0, 2.0]), "got list"),
    ("bool.pt", _pt(torch.ones(2, 2, dtype=torch.bool)), "not real numbers"),
    ("text.npy", _npy(np.array([["a", "b"]])), "not real numbers"),
    ("object.npy", _npy(np.array([[1, "a"]], dtype=object), allow_pickle=True), "object array"),
    ("junk.pt", _text("not a torch file"), "not a readable torch file"),
    ("junk.npy", _text("not numpy"), "not a readable .npy file"),
    ("binary.csv", lambda path: path.write_bytes(b"\xff\xfe\x00\x81"), "not a UTF-8 text file"),
]


@pytest.mark.parametrize("name, write, fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_are_one_line_usage_errors(tmp_path, name, write, fragment):
    path = tmp_path / name
    if write is not None:
        write(path)
    message = _usage_error(lambda: FlowDataset(path))
    assert message.startswith(f"data file {path}: ")
    assert fragment in message


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    payload = tmp_path / "payload.pt"
    torch.save(CreatesMarker(tmp_path / "pwned"), payload)
    assert "refused to unpickle" in _usage_error(lambda: FlowDataset(payload))
    assert not (tmp_path / "pwned").exists()
    # the payload is real: an unsafe load would have run it
    torch.load(payload, weights_only=False).close()
    assert (tmp_path / "pwned").exists()


# --- resolve_dataset ------------------------------------------------------------------------

def test_builtin_wins_over_a_split_folder_of_the_same_name(tmp_path):
    _write_split_folder(tmp_path / "moons", torch.ones(10, 2), torch.ones(5, 2))
    splits = resolve_dataset("moons", seed=0, val_fraction=0.1, splits_root=tmp_path)
    assert splits.source.startswith("built-in moons")


def test_split_folder_under_splits_root(tmp_path):
    train, val, test = torch.randn(50, 4), torch.randn(10, 4), torch.randn(10, 4)
    folder = _write_split_folder(tmp_path / "1k", train, val, test)
    splits = resolve_dataset("1k", seed=0, val_fraction=0.1, splits_root=tmp_path)
    assert torch.equal(splits.train, train) and torch.equal(splits.val, val)
    assert torch.equal(splits.test, test) and splits.dim == 4
    assert splits.source == str(folder.resolve())


def test_default_splits_root_is_relative_to_cwd(tmp_path, monkeypatch):
    _write_split_folder(tmp_path / "study/datasets/splits/5k", torch.ones(20, 3), torch.ones(4, 3))
    monkeypatch.chdir(tmp_path)
    splits = resolve_dataset("5k", seed=0, val_fraction=0.1)
    assert splits.train.shape == (20, 3) and splits.test is None


def test_folder_path_and_missing_val(tmp_path):
    folder = _write_split_folder(tmp_path / "mine", torch.ones(20, 3), torch.zeros(4, 3))
    splits = resolve_dataset(str(folder), seed=0, val_fraction=0.1, splits_root=tmp_path / "no")
    assert splits.val.shape == (4, 3) and splits.test is None
    (folder / "val.pt").unlink()
    assert "missing val.pt" in _usage_error(
        lambda: resolve_dataset(str(folder), seed=0, val_fraction=0.1))


def test_single_file_is_split_by_val_fraction_with_the_seed(tmp_path):
    x = torch.arange(300.0).reshape(100, 3)
    path = _write(tmp_path / "rows.npy", "npy", x)
    splits = resolve_dataset(str(path), seed=0, val_fraction=0.2)
    assert splits.train.shape == (80, 3) and splits.val.shape == (20, 3) and splits.test is None
    together = torch.cat([splits.train, splits.val])
    assert torch.equal(together[together[:, 0].argsort()], x)  # a partition of the rows
    assert splits.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    same = resolve_dataset(str(path), seed=0, val_fraction=0.2)
    other = resolve_dataset(str(path), seed=1, val_fraction=0.2)
    assert torch.equal(same.val, splits.val) and not torch.equal(other.val, splits.val)
    assert "val_fraction" in _usage_error(
        lambda: resolve_dataset(str(path), seed=0, val_fraction=1.5))
    one_row = _write(tmp_path / "one.pt", "pt", x[:1])
    assert "need at least 2" in _usage_error(
        lambda: resolve_dataset(str(one_row), seed=0, val_fraction=0.1))


def test_unknown_dataset_lists_what_was_tried(tmp_path):
    message = _usage_error(lambda: resolve_dataset("foo", seed=0, val_fraction=0.1,
                                                   splits_root=tmp_path))
    assert message == (f"unknown dataset 'foo': not a built-in (moons, 8gaussians, checkerboard, "
                       "scurve, tong-moons, tong-scurve, tong-8gaussians, tong-pair-moons, "
                       f"tong-pair-8gaussians), no split folder {tmp_path / 'foo'}/, no such file "
                       "or folder")


def test_train_and_val_must_have_the_same_dim(tmp_path):
    _write_split_folder(tmp_path / "bad", torch.ones(10, 2), torch.ones(5, 3))
    message = _usage_error(lambda: resolve_dataset("bad", seed=0, val_fraction=0.1,
                                                   splits_root=tmp_path))
    assert "val has 3 columns, train has 2" in message


def test_fewer_training_rows_than_one_batch(tmp_path):
    _write_split_folder(tmp_path / "small", torch.ones(100, 2), torch.ones(5, 2))
    message = _usage_error(lambda: resolve_dataset("small", seed=0, val_fraction=0.1,
                                                   splits_root=tmp_path, min_rows=256))
    assert message == ("dataset small has 100 training rows, fewer than one batch (256); "
                       "lower --batch-size")


def test_stats_come_from_train_only(tmp_path):
    train = torch.tensor([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    _write_split_folder(tmp_path / "s", train, torch.full((3, 2), 100.0), torch.full((3, 2), -9.0))
    splits = resolve_dataset("s", seed=0, val_fraction=0.1, splits_root=tmp_path)
    assert torch.allclose(splits.mean, torch.tensor([2.0, 5.0]))
    # the constant column gets std 1 so that (x - mean) / std stays finite
    assert torch.allclose(splits.std, torch.tensor([(8 / 3) ** 0.5, 1.0]))
    assert torch.equal(splits.normalization_stats()["std"], splits.std)


def test_checksum_changes_when_a_file_changes(tmp_path):
    folder = _write_split_folder(tmp_path / "c", torch.ones(10, 2), torch.ones(5, 2), torch.ones(5, 2))
    before = resolve_dataset("c", seed=0, val_fraction=0.1, splits_root=tmp_path).checksum
    torch.save(torch.zeros(5, 2), folder / "test.pt")  # only the test split changes
    after = resolve_dataset("c", seed=0, val_fraction=0.1, splits_root=tmp_path).checksum
    assert before != after
    single = _write(tmp_path / "one.csv", "csv", MATRIX)
    first = resolve_dataset(str(single), seed=0, val_fraction=0.5).checksum
    _write(single, "csv", MATRIX + 1)
    assert resolve_dataset(str(single), seed=0, val_fraction=0.5).checksum != first


# --- augmentations --------------------------------------------------------------------------

def test_augmentation_names_match_the_config():
    assert tuple(AUGMENTATIONS) == AUG_NAMES


def test_none_is_identity_and_noise_is_seeded_jitter():
    x_1 = torch.randn(4000, 3, dtype=torch.float64)
    assert torch.equal(augment("none", x_1, std=0.5, generator=torch.Generator()), x_1)
    state = torch.get_rng_state()
    noisy = augment("noise", x_1, std=0.5, generator=torch.Generator().manual_seed(1))
    again = augment("noise", x_1, std=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(noisy, again) and noisy.dtype == torch.float64 and noisy.shape == x_1.shape
    assert abs((noisy - x_1).std().item() - 0.5) < 0.02
    assert torch.equal(augment("noise", x_1, std=0.0, generator=torch.Generator()), x_1)


def test_unknown_augmentation_lists_the_names():
    message = _usage_error(lambda: augment("mixup", torch.ones(2, 2), std=0.1,
                                           generator=torch.Generator()))
    assert message == "unknown augmentation 'mixup'; choose one of: none, noise"
