"""study.runs.checkpoint_reader: torch.save zips described without torch, hostile ones refused.

Every expectation is checked against torch itself: what the restricted reader says about a
tensor (shape, dtype, numel, size, first values) is what the loaded tensor says.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from study.runs import checkpoint_summary
from study.runs.checkpoint import read_checkpoint
from study.runs.checkpoint_reader import NotModelled, TensorInfo, read_zip_checkpoint
from study.runs.checkpoint_summary import (
    describe_loaded,
    load_checkpoint_info,
    sha256_file,
    summarize_checkpoint,
)
from tests.support.checkpoints import RunsShell, build_checkpoint, hostile_files
from tests.support.helpers import REPO_ROOT

STORAGE = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
TENSORS = {
    "float32": STORAGE,
    "transposed": STORAGE.t(),  # shares the storage, other strides
    "slice": STORAGE[1:, 2:5],  # storage offset 8, non-contiguous
    "scalar": torch.tensor(3.25),
    "empty": torch.zeros(0, 3),
    "float64": torch.linspace(-1, 1, 5, dtype=torch.float64),
    "float16": torch.tensor([0.5, -2.0, 65504.0], dtype=torch.float16),
    "bfloat16": torch.tensor([1.5, -3.0e38, 1e-3], dtype=torch.bfloat16),
    "int64": torch.tensor([-(2**62), 5]),
    "int32": torch.tensor([[1, -2], [3, 4]], dtype=torch.int32),
    "int16": torch.tensor([-7], dtype=torch.int16),
    "int8": torch.tensor([-128, 127], dtype=torch.int8),
    "uint8": torch.tensor([0, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "complex64": torch.tensor([1 + 2j, -0.5j], dtype=torch.complex64),
    "uint16": torch.tensor([65535, 1], dtype=torch.uint16),
    "parameter": nn.Parameter(torch.ones(2, 2)),
    "big": torch.randn(1000, 3, generator=torch.Generator().manual_seed(0)),
}


@pytest.fixture(scope="module")
def tensor_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reader") / "tensors.pt"
    torch.save(TENSORS, path)
    return path


@pytest.mark.parametrize("name", list(TENSORS))
def test_each_tensor_is_described_as_torch_loads_it(tensor_file: Path, name: str) -> None:
    info = read_zip_checkpoint(tensor_file)[name]
    tensor = torch.load(tensor_file, weights_only=True)[name]
    assert isinstance(info, TensorInfo)
    assert info.shape == tuple(tensor.shape) and info.dtype == str(tensor.dtype).removeprefix("torch.")
    assert info.numel() == tensor.numel() and info.nbytes == tensor.numel() * tensor.element_size()
    assert info.location == "cpu"
    assert info.values(8) == tensor.flatten()[:8].tolist()
    if tensor.numel() <= 64:
        assert info.tolist() == tensor.tolist()


def test_views_name_the_storage_they_share(tensor_file: Path) -> None:
    loaded = read_zip_checkpoint(tensor_file)
    keys = {loaded[name].storage_key for name in ("float32", "transposed", "slice")}
    assert len(keys) == 1 and loaded["big"].storage_key not in keys


def test_a_dtype_struct_cannot_decode_has_a_shape_but_no_values(tmp_path: Path) -> None:
    path = tmp_path / "f8.pt"
    torch.save({"f8": torch.zeros(2, 3, dtype=torch.float8_e4m3fn)}, path)
    info = read_zip_checkpoint(path)["f8"]
    assert (info.shape, info.dtype, info.nbytes) == ((2, 3), "float8_e4m3fn", 6)
    assert info.values(8) is None


def test_primitives_and_containers_come_back_as_python_values(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    value = {"ordered": nn.Linear(1, 1).state_dict(), "size": torch.Size([2, 3]),
             "device": torch.device("cpu"), "version": torch.__version__, "bytes": b"\x00\xff",
             "set": {1, 2}, "nested": [(1, 2.5, None, True, "x")], "dtype": torch.float16}
    torch.save(value, path)
    loaded = read_zip_checkpoint(path)
    assert list(loaded["ordered"]) == ["weight", "bias"]
    assert loaded["size"] == (2, 3) and loaded["device"] == "cpu"
    assert loaded["version"] == str(torch.__version__) and type(loaded["version"]) is str
    assert loaded["bytes"] == b"\x00\xff" and loaded["set"] == {1, 2}
    assert loaded["nested"] == [(1, 2.5, None, True, "x")]
    assert repr(loaded["dtype"]) == "torch.float16"


@pytest.mark.parametrize("original", [False, True], ids=["flowctl", "original-study"])
def test_summary_is_the_same_as_through_torch(tmp_path: Path, original: bool) -> None:
    path = tmp_path / "best.pt"
    torch.save(build_checkpoint(original=original)[0], path)
    fast = summarize_checkpoint(path, load_checkpoint_info(path))
    through_torch = summarize_checkpoint(path, describe_loaded(read_checkpoint(path)))
    assert json.dumps(fast) == json.dumps(through_torch)


def test_legacy_format_falls_back_to_torch(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    ckpt = build_checkpoint()[0]
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    summary = summarize_checkpoint(path, load_checkpoint_info(path))
    assert summary["epoch"] == 2 and summary["parameter_count"] == 9
    assert summary["tensors"][0] == {"name": "weight", "shape": [3, 2], "dtype": "float32"}


# -- hostile files: refused by the reader before anything is built --------------------------

@pytest.mark.parametrize("kind", ["torch-save", "os-system", "eval", "codecs", "persistent-id"])
def test_hostile_pickles_are_not_modelled_and_run_nothing(tmp_path: Path, kind: str) -> None:
    path = hostile_files(tmp_path)[kind]
    with pytest.raises(NotModelled):
        read_zip_checkpoint(path)
    assert not (tmp_path / "marker").exists()


def test_the_os_system_payload_is_live(tmp_path: Path) -> None:
    # Guards the test above: unrestricted unpickling of the same bytes does run the command.
    pickle.loads(pickle.dumps(RunsShell(tmp_path / "marker"), protocol=2))
    assert (tmp_path / "marker").exists()


def test_reading_imports_no_torch_even_for_hostile_files(tmp_path: Path) -> None:
    files = hostile_files(tmp_path)
    good = tmp_path / "good.pt"
    torch.save(build_checkpoint()[0], good)
    code = f"""
import sys
from study.runs.checkpoint_reader import NotModelled, read_zip_checkpoint
from study.runs.checkpoint_summary import load_checkpoint_info, summarize_checkpoint
summarize_checkpoint({str(good)!r}, load_checkpoint_info({str(good)!r}))
for path in {[str(p) for p in files.values()]!r}:
    try:
        read_zip_checkpoint(path)
    except NotModelled:
        pass
print(sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "numpy"))))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert not (tmp_path / "marker").exists()


# -- sha256 of big files: remembered until the file changes --------------------------------

def test_sha256_of_a_big_file_is_cached_until_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_summary, "SHA256_CACHE_MIN_BYTES", 10)
    path = tmp_path / "best.pt"
    path.write_bytes(b"first version of the file")
    import hashlib

    first = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == first
    (cached,) = (Path(os.environ["FLOWCTL_CACHE_DIR"]) / "sha256").glob("*.json")
    record = json.loads(cached.read_text())
    assert record["sha256"] == first and record["size"] == path.stat().st_size
    # The cache is what answers while the file is unchanged ...
    cached.write_text(json.dumps({**record, "sha256": "f" * 64}))
    assert sha256_file(path) == "f" * 64
    # ... and a rewrite (os.replace, as every checkpoint write) is hashed again.
    replacement = tmp_path / "new.pt"
    replacement.write_bytes(b"second version, same dir")
    os.replace(replacement, path)
    assert sha256_file(path) == hashlib.sha256(b"second version, same dir").hexdigest()


def test_small_files_are_never_cached(tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    path.write_bytes(b"x" * 1000)
    sha256_file(path)
    assert not (Path(os.environ["FLOWCTL_CACHE_DIR"]) / "sha256").exists()


def test_a_missing_storage_entry_leaves_the_values_unknown(tmp_path: Path) -> None:
    """A damaged or hand-made zip: the descriptor still has its shape, its values are None."""
    whole = tmp_path / "whole.pt"
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "epoch": torch.tensor(3)}, whole)
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(whole) as source, zipfile.ZipFile(damaged, "w") as target:
        for info in source.infolist():
            if not info.filename.endswith("/data/1"):  # the epoch's storage
                target.writestr(info, source.read(info))
    loaded = read_zip_checkpoint(damaged)
    assert loaded["epoch"].shape == () and loaded["epoch"].values(1) is None
    assert loaded["model_state_dict"]["w"].tolist() == [1.0, 1.0]
    assert summarize_checkpoint(damaged, loaded)["epoch"] == "<tensor [] int64>"
