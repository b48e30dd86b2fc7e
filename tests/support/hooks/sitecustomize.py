"""A test hook for real processes: with this folder on PYTHONPATH and $FLOWCTL_SAMPLE_LOG set
to a folder, every process (each torchrun worker too) appends the global row ids its rank
trains, one line per optimizer step, to rank{RANK}.txt there (tests/test_distributed.py).

Python imports `sitecustomize` at start-up; this one waits for study.flow_matching.batches to
be imported and wraps `BatchMaker.draw`, so flowctl itself carries no test hook.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

TARGET = "study.flow_matching.batches"


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


class PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real module with the other finders
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_and_patch(module) -> None:
            execute(module)
            record_rows(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("FLOWCTL_SAMPLE_LOG"):
    sys.meta_path.insert(0, PatchOnImport())
