"""The uninterrupted runs on 1 and on 2 processes (`flowctl train --nproc 2`, torchrun with
gloo) that tests/test_distributed.py and tests/test_multinode.py compare against: built once
per test session (tests/support/once.py), with each rank's sample log (tests/support/hooks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.helpers import REPO_ROOT, run_flags, spawn, vectors_file
from tests.support.once import built_once

EPOCHS = 30  # 9 steps of 64 rows per epoch: 270 steps, ~2 s, time for a signal to land
HOOKS = REPO_ROOT / "tests" / "support" / "hooks"  # sitecustomize.py: the row ids each rank trains


def run_args(data: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    """The flags of every distributed test run. A constant LR (after warm-up), so that a
    shorter first segment (test_multinode's) trains exactly the reference's first steps."""
    return run_flags(data, "--log-every", "3", "--scheduler", "constant", *extra, epochs=epochs)


def with_hooks(**variables: Path) -> dict[str, str]:
    """The environment that turns on tests/support/hooks' logs (FLOWCTL_SAMPLE_LOG: the rows
    each rank trains; FLOWCTL_THREADS_LOG: each worker's threads once it left the group)."""
    path = [str(HOOKS), os.environ.get("PYTHONPATH", ""), str(REPO_ROOT)]
    return {**{k: str(v) for k, v in variables.items()}, "PYTHONPATH": os.pathsep.join(filter(None, path))}


def finish(process, timeout: float = 240) -> int:
    """Wait for `process`; its stderr text is then `process.stderr_text`."""
    _, process.stderr_text = process.communicate(timeout=timeout)
    return process.returncode


def reference_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{"root": runs "one" and "two" (`--nproc 2`), "data": their dataset file, "logs": each
    run's sample log folder}."""
    def build(root: Path) -> None:
        data = vectors_file(root)
        for name, extra in (("one", []), ("two", ["--nproc", "2"])):
            log = root / f"samples-{name}"
            log.mkdir()
            process = spawn("train", "--run-name", name, *run_args(data), *extra,
                            env={"FLOWCTL_CKPT_DIR": str(root / "runs"),
                                 **with_hooks(FLOWCTL_SAMPLE_LOG=log, FLOWCTL_THREADS_LOG=log)})
            assert finish(process) == 0, process.stderr_text

    root = built_once(tmp_path_factory, "distributed-references", build)
    return {"root": root / "runs", "data": next(root.glob("vectors-*.pt")),
            "logs": {name: root / f"samples-{name}" for name in ("one", "two")}}
