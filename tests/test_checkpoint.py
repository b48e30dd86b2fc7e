"""Checkpoints: plain-dict format, atomic writes, exact restore and one-line read errors."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from study.errors import RunFailed, UsageError
from study.flow_matching.config import TrainingConfig
from study.flow_matching.utils import (
    EMAModel,
    get_cosine_schedule_with_warmup,
    load_checkpoint,
    load_checkpoint_with_stats_check,
    save_checkpoint,
)
from study.runs.checkpoint import (
    FORMAT_VERSION,
    read_checkpoint,
    remove_stale_temp_files,
    serialize_into,
    write_atomic,
)
from tests.support.helpers import CreatesMarker

STATS = {"mean": torch.tensor([0.5, -1.0]), "std": torch.tensor([1.0, 2.0])}


@dataclass
class TrainState:
    model: nn.Module
    ema: EMAModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR


def _fresh_state(seed: int, width: int = 8) -> TrainState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, 2))
    ema = EMAModel(model, decay=0.9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=3, num_training_steps=10)
    return TrainState(model, ema, optimizer, scheduler)


def _trained_state(steps: int = 2) -> TrainState:
    state = _fresh_state(seed=0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 2, generator=generator)
        loss = ((state.model(x) - x.flip(1)) ** 2).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.ema.update(state.model)
    return state


def _save(path: Path, state: TrainState, *, epoch: int = 4, best_loss: float = 0.125,
          stats: dict | None = None, **extra) -> Path:
    return save_checkpoint(path, epoch, state.model, state.ema, state.optimizer, state.scheduler,
                           best_loss, TrainingConfig(epochs=7), STATS if stats is None else stats,
                           **extra)


def _restore(path: Path, width: int = 8) -> tuple[TrainState, tuple[int, float]]:
    fresh = _fresh_state(seed=123, width=width)
    result = load_checkpoint(path, fresh.model, fresh.ema, fresh.optimizer, fresh.scheduler, "cpu")
    return fresh, result


def _walk_plain(value, where: str = "checkpoint") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, (str, int)), f"expected str/int keys at {where}, got {key!r}"
            _walk_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _walk_plain(item, f"{where}[{index}]")
    else:
        assert isinstance(value, (torch.Tensor, str, int, float, bool, type(None))), (
            f"expected a tensor or primitive at {where}, got {type(value)}")


def _temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, TrainState]:
    state = _trained_state()
    path = _save(tmp_path / "runs" / "tiny" / "best.pt", state, global_step=2, note="hello")
    return path, state


# -- save_checkpoint -----------------------------------------------------------------------

def test_save_creates_folders_and_a_plain_dict(saved) -> None:
    path, _ = saved
    assert path.is_file() and path.stat().st_size > 0
    payload = torch.load(path, weights_only=True)
    assert isinstance(payload, dict)
    _walk_plain(payload)
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["epoch"] == 4 and payload["best_loss"] == 0.125
    assert payload["config"] == TrainingConfig(epochs=7).to_dict()
    assert type(payload["config"]) is dict
    assert payload["global_step"] == 2 and payload["note"] == "hello"
    assert set(payload["model_state_dict"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert payload["scheduler_state_dict"]["last_epoch"] == 2
    assert torch.equal(payload["normalization_stats"]["mean"], STATS["mean"])


def test_save_leaves_no_temp_files(saved) -> None:
    path, state = saved
    _save(path, state, epoch=5)  # overwrite an existing file too
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]
    assert torch.load(path, weights_only=True)["epoch"] == 5


# -- load_checkpoint -----------------------------------------------------------------------

def test_load_restores_everything_bitwise(saved) -> None:
    path, state = saved
    fresh, (start_epoch, best_loss) = _restore(path)
    assert (start_epoch, best_loss) == (5, 0.125)
    for name, tensor in state.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[name], tensor), f"model {name} differs"
    assert set(fresh.ema.shadow) == set(state.ema.shadow)
    for name, tensor in state.ema.shadow.items():
        assert torch.equal(fresh.ema.shadow[name], tensor), f"ema {name} differs"
    # The EMA differs from the model after 2 steps, so the check above is not vacuous.
    assert not torch.equal(state.ema.shadow["0.weight"], state.model.state_dict()["0.weight"])

    saved_opt, fresh_opt = state.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert fresh_opt["param_groups"] == saved_opt["param_groups"]
    assert set(fresh_opt["state"]) == set(saved_opt["state"]) and saved_opt["state"]
    for index, slots in saved_opt["state"].items():
        for slot, tensor in slots.items():
            assert torch.equal(fresh_opt["state"][index][slot], tensor), f"optimizer {index}.{slot}"

    assert fresh.scheduler.last_epoch == state.scheduler.last_epoch == 2
    assert fresh.optimizer.param_groups[0]["lr"] == state.optimizer.param_groups[0]["lr"]
    assert fresh.scheduler.get_last_lr() == state.scheduler.get_last_lr()


def test_training_continues_identically_after_load(saved) -> None:
    path, state = saved
    fresh, _ = _restore(path)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(7))
    for run in (state, fresh):
        loss = ((run.model(x) - x.flip(1)) ** 2).mean()
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        run.ema.update(run.model)
    for name, tensor in state.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[name], tensor), f"model {name} diverged"
    for name, tensor in state.ema.shadow.items():
        assert torch.equal(fresh.ema.shadow[name], tensor), f"ema {name} diverged"
    assert fresh.optimizer.param_groups[0]["lr"] == state.optimizer.param_groups[0]["lr"]


def test_checkpoint_that_does_not_fit_the_model(saved) -> None:
    path, _ = saved
    with pytest.raises(UsageError) as err:
        _restore(path, width=16)
    message = str(err.value)
    assert str(path) in message and "does not fit" in message
    assert "\n" not in message


# -- normalization stats check -------------------------------------------------------------

@pytest.fixture
def flowctl_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    # The CLI's setup_logging turns propagation off; caplog listens on the root logger.
    monkeypatch.setattr(logging.getLogger("flowctl"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="flowctl")
    return caplog


def _load_with_stats(path: Path, current: dict) -> tuple[int, float]:
    fresh = _fresh_state(seed=5)
    return load_checkpoint_with_stats_check(path, fresh.model, fresh.ema, fresh.optimizer,
                                            fresh.scheduler, "cpu", current_stats=current)


def test_stats_check_warns_with_the_largest_difference(saved, flowctl_log) -> None:
    path, _ = saved
    current = {"mean": torch.tensor([0.5, -0.75]), "std": torch.tensor([1.0, 3.0])}
    assert _load_with_stats(path, current) == (5, 0.125)
    warnings = [r for r in flowctl_log.records
                if r.name == "flowctl" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "std[1]" in message and "2 vs 3" in message  # |2 - 3| beats |-1 - -0.75|
    assert str(path) in message


def test_stats_check_is_silent_when_equal(saved, flowctl_log) -> None:
    path, _ = saved
    same = {name: tensor.clone() for name, tensor in STATS.items()}
    assert _load_with_stats(path, same) == (5, 0.125)
    assert not [r for r in flowctl_log.records if r.levelno >= logging.WARNING]


# -- read_checkpoint errors ----------------------------------------------------------------

def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _bad_file(kind: str, folder: Path, real: Path) -> Path:
    path = folder / f"{kind}.pt"
    marker = folder / "marker"
    writers = {
        "empty": lambda: b"",
        "truncated": lambda: real.read_bytes()[: real.stat().st_size // 2],
        "random-bytes": lambda: random.Random(0).randbytes(4096),
        "json": lambda: json.dumps({"model_state_dict": {}}).encode(),
        "list": lambda: _torch_bytes([torch.ones(2), 3]),
        "no-model-state": lambda: _torch_bytes({"epoch": 1, "best_loss": 0.5}),
        "format-99": lambda: _torch_bytes({"model_state_dict": {}, "format_version": 99}),
        "code-pickle": lambda: pickle.dumps(CreatesMarker(marker), protocol=2),
        "code-torch-save": lambda: _torch_bytes({"model_state_dict": CreatesMarker(marker)}),
    }
    if kind != "missing":
        path.write_bytes(writers[kind]())
    return path


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("missing", "does not exist"),
        ("empty", "empty"),
        ("truncated", "not a torch checkpoint"),
        ("random-bytes", ""),
        ("json", ""),
        ("list", "not a flowctl checkpoint (it holds a list)"),
        ("no-model-state", "a dict without model_state_dict"),
        ("format-99", "newer flowctl"),
        ("code-pickle", "refusing"),
        ("code-torch-save", "refusing"),
    ],
)
def test_read_errors_are_one_line_usage_errors(saved, tmp_path: Path, kind: str, needle: str) -> None:
    real, _ = saved
    folder = tmp_path / "bad"
    folder.mkdir()
    path = _bad_file(kind, folder, real)
    with pytest.raises(UsageError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert str(path) in message, f"expected the path in {message!r}"
    assert "\n" not in message
    assert needle in message
    assert not (folder / "marker").exists(), "unpickling ran code"


def test_the_code_payload_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    # Guards the test above: the payload is live, so its marker staying absent means something.
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(CreatesMarker(marker), protocol=2)).close()
    assert marker.exists()


@pytest.mark.parametrize("kind", ["random-bytes", "json"])
def test_corrupt_bytes_are_reported_as_corrupt_not_as_code(saved, tmp_path: Path, kind: str) -> None:
    real, _ = saved
    path = _bad_file(kind, tmp_path, real)
    with pytest.raises(UsageError, match="not a torch checkpoint"):
        read_checkpoint(path)


def test_read_rejects_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a folder"):
        read_checkpoint(tmp_path)


# -- write_atomic --------------------------------------------------------------------------

def test_write_atomic_failure_keeps_the_previous_file(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run" / "best.pt"
    write_atomic(path, b"version one")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(RunFailed) as err:
        write_atomic(path, b"version two, longer")
    message = str(err.value)
    assert "best.pt" in message and "no space left on device" in message and "\n" not in message
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == 28
    monkeypatch.undo()
    assert path.read_bytes() == b"version one"
    assert _temp_files(path.parent) == []


def test_write_atomic_onto_a_folder_fails_cleanly(tmp_path: Path) -> None:
    # os.replace of a file over a non-empty folder is a real OSError (IsADirectoryError).
    path = tmp_path / "best.pt"
    path.mkdir()
    (path / "keep.txt").write_text("still here")
    with pytest.raises(RunFailed) as err:
        write_atomic(path, b"data")
    assert "best.pt" in str(err.value)
    assert (path / "keep.txt").read_text() == "still here"
    assert _temp_files(tmp_path) == []


def test_write_atomic_when_the_parent_is_a_file(tmp_path: Path) -> None:
    parent = tmp_path / "not-a-folder"
    parent.write_text("I am a file")
    with pytest.raises(RunFailed, match="best.pt"):
        write_atomic(parent / "best.pt", b"data")
    assert parent.read_text() == "I am a file"


def test_write_atomic_streams_a_writer_function_and_copies_each_extra_name(
        tmp_path: Path) -> None:
    """A checkpoint is streamed by torch.save into the temp file (serialize_into); the extra
    name is a copy, never a hard link: damaging one file in place leaves the other whole."""
    payload = {"model_state_dict": {"w": torch.arange(6.0)}, "epoch": 3}
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    write_atomic(last, functools.partial(serialize_into, payload), also=(best,))
    in_memory = io.BytesIO()
    torch.save(payload, in_memory)
    assert last.read_bytes() == in_memory.getvalue() == best.read_bytes()
    assert not os.path.samefile(last, best)
    with open(last, "wb") as handle:  # `> last.pt` in a shell
        handle.write(b"oops")
    assert read_checkpoint(best)["epoch"] == 3
    write_atomic(last, functools.partial(serialize_into, {**payload, "epoch": 4}), also=(best,))
    assert read_checkpoint(best)["epoch"] == read_checkpoint(last)["epoch"] == 4
    assert _temp_files(tmp_path) == []


def test_write_atomic_removes_the_temp_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    write_atomic(path, b"version one")

    def half_then_fail(handle):
        handle.write(b"half a checkpoint")
        raise ValueError("cannot pickle this")

    with pytest.raises(ValueError, match="cannot pickle"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"version one" and _temp_files(tmp_path) == []


# -- remove_stale_temp_files ---------------------------------------------------------------

def test_remove_stale_temp_files_removes_only_temp_files(tmp_path: Path) -> None:
    stale = [tmp_path / ".last.pt.tmp-123", tmp_path / ".best.pt.tmp-4567"]
    keep = [tmp_path / name for name in
            ("last.pt", "best.pt", "run.json", "metrics.csv", ".hidden", "notes.tmp-1.txt")]
    for path in stale + keep:
        path.write_bytes(b"x")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_remove_stale_temp_files_on_a_missing_folder(tmp_path: Path) -> None:
    assert remove_stale_temp_files(tmp_path / "nope") == []


@pytest.mark.parametrize("writer", ["sbatch script", "run.json", "point config"])
def test_every_small_file_goes_through_write_atomic(writer: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """run.json, a sweep point's config and an sbatch script are written by write_atomic: a
    full disk at the replace is one RunFailed naming the file, the previous file is kept and
    no temp file is left; the script is executable."""
    from study.runs.status import write_json_atomic
    from study.slurm.submit import write_script
    from study.sweep.grid import Point
    from study.sweep.point_files import write_point_config

    def write(version: int) -> Path:
        if writer == "sbatch script":
            return write_script(tmp_path / "job.sbatch", f"#!/bin/bash\necho {version}\n")
        if writer == "run.json":
            write_json_atomic(tmp_path / "run.json", {"version": version})
            return tmp_path / "run.json"
        config = TrainingConfig(epochs=version + 1, run_name="point")
        return write_point_config(tmp_path, Point(name="point", config=config, config_hash="h"))

    path = write(1)
    before = path.read_bytes()
    if writer == "sbatch script":
        assert os.access(path, os.X_OK)

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(RunFailed, match=f"no space left on device while writing {path.name}"):
        write(2)
    monkeypatch.undo()
    assert path.read_bytes() == before and _temp_files(tmp_path) == []
