"""The checkpoint summary of one run page, computed on demand and cached per file version.

Read with the torch-free checkpoint reader (study.runs.checkpoint_summary), only when a run
page (or `/api/runs/{name}`) asks: the runs table never does. Each file version (inode,
size, mtime) is read and hashed once; a trainer replacing best.pt makes a new version.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from study.runs.paths import BEST_FIRST
from study.ui.resolve import file_in_run

TENSORS_SHOWN = 50  # the page lists the first tensors; a big model has thousands


class CheckpointSummaries:
    """Summaries of run checkpoints, keyed by file version. Thread-safe."""

    def __init__(self) -> None:
        self._cache: dict[tuple, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def summary(self, run_real: str) -> dict[str, Any] | None:
        """best.pt's summary (else last.pt's), {"error": ...} if unreadable, None if neither."""
        for name in BEST_FIRST:
            path = file_in_run(run_real, name)
            if path is None:
                continue
            try:
                stat = os.stat(path)
            except OSError:
                continue
            key = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            with self._lock:  # one load at a time: a second page waits for the first's result
                if key not in self._cache:
                    self._cache = {k: v for k, v in self._cache.items() if k[0] != path}
                    self._cache[key] = {"file": name, **load_summary(path)}
                return self._cache[key]
        return None


def load_summary(path: str) -> dict[str, Any]:
    """summarize_checkpoint of the file, tensors cut to TENSORS_SHOWN; {"error": one line}."""
    from study.errors import FlowctlError
    from study.runs.checkpoint_summary import (
        load_checkpoint_info,
        sha256_file,
        summarize_checkpoint,
    )

    try:  # the dashboard writes nothing: it reads inspect-ckpt's sha256 cache, never fills it
        summary = summarize_checkpoint(path, load_checkpoint_info(path),
                                       sha256=sha256_file(path, remember=False))
    except FlowctlError as err:
        return {"error": str(err)}
    except OSError as err:  # replaced or removed while being read
        return {"error": f"cannot read {path}: {err.strerror or err}"}
    tensors = summary.get("tensors") or []
    summary["tensor_count"] = len(tensors)
    summary["tensors"] = tensors[:TENSORS_SHOWN]
    return summary
