"""Write failures (disk full, I/O error, a path that cannot be written): the previous
checkpoints stay intact byte for byte, the run is marked `failed` with the reason, the CLI
exits 1 with one line, and a resume from what is left still ends bit-identical."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from study.runs import checkpoint, recorder, status
from tests.support.helpers import (
    assert_same_state,
    cli,
    error_line,
    load,
    metrics_rows,
    run_flags,
    run_json,
    vectors_file,
    wait_for,
)
from tests.support.kill_loop import checkpoint_problems

FAILING_SAVE = 3  # the saves are at steps 9 (last + best), 18 and 27: fail the third



def snapshot(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(run.glob("*.pt"))}


def fail_at_third_save(monkeypatch, run: Path, inject) -> dict[str, bytes]:
    """When the FAILING_SAVE-th checkpoint write starts, record the files and call `inject()`.

    Hooked at the write itself (the recorder's writer thread), not at serialisation: the
    recorder serialises the next checkpoint while the previous write may still be in flight,
    but it starts a write only after the previous one has finished, so the files recorded
    here can no longer change.
    """
    before: dict[str, bytes] = {}
    calls = 0
    real_write = recorder.write_atomic

    def write_atomic(path, data, **kwargs):
        nonlocal calls
        calls += 1
        if calls == FAILING_SAVE:
            before.update(snapshot(run))
            inject()
        return real_write(path, data, **kwargs)

    monkeypatch.setattr(recorder, "write_atomic", write_atomic)
    return before



def injected(call: str, error: int):
    """A fake os.<call> that raises OSError(error) for a checkpoint or its temp file."""
    real = getattr(os, call)

    def fake(*args, **kwargs):
        target = args[1] if call == "replace" else os.readlink(f"/proc/self/fd/{args[0]}")
        if Path(os.fspath(target)).name.startswith((".last.pt.tmp-", "last.pt",
                                                     ".best.pt.tmp-", "best.pt")):
            raise OSError(error, os.strerror(error))
        return real(*args, **kwargs)

    return fake


@pytest.mark.parametrize("how, reason", [
    ("dev-full", "no space left on device"),  # a real ENOSPC from the kernel
    ("replace-enospc", "no space left on device"),
    ("fsync-eio", "input/output error"),
])
def test_write_failure_keeps_the_previous_checkpoint_and_fails_the_run(
        tmp_path, isolated_run_root, how, reason):
    args = run_flags(vectors_file(tmp_path), epochs=3)
    assert cli("train", "--run-name", "reference", *args).exit_code == 0
    run = isolated_run_root / "full"

    def inject(monkeypatch):
        if how == "dev-full":  # the temp files' names, pointing at a device that is always full
            for name in ("best.pt", "last.pt"):  # the first one a save writes fails
                (run / f".{name}.tmp-{os.getpid()}").symlink_to("/dev/full")
        elif how == "replace-enospc":
            monkeypatch.setattr(checkpoint.os, "replace", injected("replace", errno.ENOSPC))
        else:
            monkeypatch.setattr(checkpoint.os, "fsync", injected("fsync", errno.EIO))

    with pytest.MonkeyPatch.context() as monkeypatch:  # undone before the resume below
        before = fail_at_third_save(monkeypatch, run, lambda: inject(monkeypatch))
        result = cli("train", "--run-name", "full", *args)

    # A save writes best.pt first when val/loss improved, else last.pt: that write fails.
    written = re.compile(f"{reason} while writing (best|last)\\.pt")
    assert result.exit_code == 1
    assert written.search(error_line(result.stderr))
    assert set(before) == {"best.pt", "last.pt"} and snapshot(run) == before, "a checkpoint changed"
    assert not [p for p in run.glob(".*.tmp-*") if not p.is_symlink()], "temp file left behind"
    status = run_json(run)
    assert status["status"] == "failed"
    assert written.search(status["error"]["message"])
    assert not (run / "run.lock").exists()

    resumed = cli("resume", "full")  # space is back: continue from what was kept
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_state(load(isolated_run_root / "reference" / "last.pt"), load(run / "last.pt"))
    assert metrics_rows(run) == metrics_rows(isolated_run_root / "reference")


def test_folder_at_the_temp_paths_of_a_running_process_fails_it_cleanly(
        tmp_path, isolated_run_root, flowctl):
    """No injection at all: a real process, and a real EISDIR on its next checkpoint write.

    Folders take the names of both temp files (.last.pt.tmp-PID, .best.pt.tmp-PID), each once
    no write of that name is in flight, so the snapshot below is a state the process left
    and no file can change after it."""
    run = isolated_run_root / "blocked"
    child = flowctl("train", "--run-name", "blocked", *run_flags(vectors_file(tmp_path), epochs=30))
    wait_for(lambda: (run / "best.pt").exists(), process=child, what="the first best.pt")
    blockers = [run / f".{name}.tmp-{child.pid}" for name in ("last.pt", "best.pt")]
    wait_for(lambda: all(folder.is_dir() or _made(folder) for folder in blockers),
             process=child, what="folders at the temp paths")
    before = snapshot(run)
    assert child.wait(60) == 1
    line = error_line(child.stderr)
    assert re.search(r"is a directory while writing (last|best)\.pt", line), line
    assert snapshot(run) == before and checkpoint_problems(run) == []
    status = run_json(run)
    assert status["status"] == "failed" and "is a directory" in status["error"]["message"]


def _made(folder: Path) -> bool:
    try:
        folder.mkdir()
    except FileExistsError:  # the process is writing that temp file right now: try again
        return False
    return True


def test_a_run_folder_turned_read_only_mid_run_reports_the_write_that_failed(
        tmp_path, isolated_run_root):
    """The folder refuses every new file, rename and removal from the third save on (as a
    read-only remount does; open files still take appends): the error is the checkpoint write
    that failed, never the lock file that could not be removed afterwards, and no temp file
    is left."""
    run = isolated_run_root / "ro"
    real_open, real_replace, real_unlink = open, os.replace, os.unlink

    def refused(path) -> bool:
        return Path(os.fspath(path)).resolve().parent == run.resolve()

    def ro_open(path, mode="r", *args, **kwargs):
        if refused(path) and any(flag in mode for flag in "wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *args, **kwargs)

    def ro_replace(src, dst, *args, **kwargs):
        if refused(dst):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    def ro_unlink(path, *args, **kwargs):
        if refused(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_unlink(path, *args, **kwargs)

    def read_only(monkeypatch):
        monkeypatch.setattr(checkpoint, "open", ro_open, raising=False)
        monkeypatch.setattr(os, "replace", ro_replace)
        monkeypatch.setattr(os, "unlink", ro_unlink)

    with pytest.MonkeyPatch.context() as monkeypatch:
        before = fail_at_third_save(monkeypatch, run, lambda: read_only(monkeypatch))
        result = cli("train", "--run-name", "ro", *run_flags(vectors_file(tmp_path), epochs=3))
    line = error_line(result.stderr)
    assert result.exit_code == 1
    assert re.search(r"read-only file system while writing (best|last)\.pt", line), line
    assert "run.lock" not in line
    assert snapshot(run) == before and list(run.glob(".*.tmp-*")) == []


def test_a_full_disk_at_the_first_run_json_leaves_no_temp_file(tmp_path, isolated_run_root):
    """A real ENOSPC (run.json's temp file is /dev/full) at the very first write of run.json."""
    run = isolated_run_root / "full"
    real_write = checkpoint.write_atomic

    def write_atomic(path, data, **kwargs):
        if Path(path).name == "run.json":  # after the start removed stale temp files
            Path(path).with_name(f".run.json.tmp-{os.getpid()}").symlink_to("/dev/full")
        return real_write(path, data, **kwargs)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(status, "write_atomic", write_atomic)  # run.json's writer
        result = cli("train", "--run-name", "full", *run_flags(vectors_file(tmp_path), epochs=1))
    line = error_line(result.stderr)
    assert result.exit_code == 1 and "no space left on device while writing run.json" in line
    assert list(run.glob(".*.tmp-*")) == [] and not (run / "run.lock").exists()
    assert not (run / "run.json").exists()
