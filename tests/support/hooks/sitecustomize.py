"""Test hooks for real processes (tests/test_distributed.py), with this folder on PYTHONPATH:

- $FLOWCTL_SAMPLE_LOG (a folder): every process (each torchrun worker too) appends the global
  row ids its rank trains, one line per optimizer step, to rank{RANK}.txt there;
- $FLOWCTL_THREADS_LOG (a folder): every torchrun worker writes the names of its threads
  as `study.runtime.distributed.shutdown()` starts to threads-before-rank{RANK}.txt, and those
  still alive when it returns to threads-rank{RANK}.txt.

Python imports `sitecustomize` at start-up; this one waits for the flowctl module to be
imported and wraps its function, so flowctl itself carries no test hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path


def record_rows(module) -> None:
    draw = module.BatchMaker.draw
    log = Path(os.environ["FLOWCTL_SAMPLE_LOG"]) / f"rank{os.environ.get('RANK', '0')}.txt"

    def draw_and_record(self, batch_index, stage, flow):
        size = self.batch_size
        rows = self.permutation[batch_index * size:(batch_index + 1) * size][self.rank_rows]
        with open(log, "a") as handle:
            handle.write(" ".join(map(str, rows.tolist())) + "\n")
        return draw(self, batch_index, stage, flow)

    module.BatchMaker.draw = draw_and_record


def record_threads(module) -> None:
    shutdown = module.shutdown
    folder, rank = Path(os.environ["FLOWCTL_THREADS_LOG"]), os.environ["RANK"]

    def thread_names() -> str:
        tasks = Path("/proc/self/task")
        return "".join((tasks / tid / "comm").read_text() for tid in os.listdir(tasks))

    def shutdown_and_record() -> None:
        (folder / f"threads-before-rank{rank}.txt").write_text(thread_names())
        shutdown()
        (folder / f"threads-rank{rank}.txt").write_text(thread_names())

    module.shutdown = shutdown_and_record


class PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, target: str, patch) -> None:
        self.target, self.patch = target, patch

    def find_spec(self, name, path, target=None):
        if name != self.target:
            return None
        sys.meta_path.remove(self)  # find the real module with the other finders
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_and_patch(module) -> None:
            execute(module)
            self.patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("FLOWCTL_SAMPLE_LOG"):
    sys.meta_path.insert(0, PatchOnImport("study.flow_matching.batches", record_rows))
if os.environ.get("FLOWCTL_THREADS_LOG") and "RANK" in os.environ:  # torchrun's workers
    sys.meta_path.insert(0, PatchOnImport("study.runtime.distributed", record_threads))
