"""Build a fixture's files once per test session, shared by every pytest-xdist worker.

A session fixture runs once per worker; `built_once` makes the first worker that asks build
the folder (under the session's shared base temp folder, holding a lock) while the others
wait and then read what it built. A build that failed half-way is started again by the next
worker that asks (and fails its tests too, with its own error).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

DONE = "built"  # written into the folder once `build` has returned


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], None]) -> Path:
    """The session's folder `name`, filled by `build(folder)` exactly once."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder every worker of this session has its base temp in
    folder = base / name
    with FileLock(f"{folder}.lock"):
        if not (folder / DONE).exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / DONE).touch()
    return folder
