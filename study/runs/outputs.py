"""Where a command may write a file a person named (`sample --out`, `compare --plot`).

One check before any work is done, so a bad path costs a line, not a run's files:
- only the formats that exist: the extension must be one the command writes;
- never a run's own file (best.pt, last.pt, run.json, metrics.csv, ... in a run folder), not
  even with --force: one `sample --out exp/last.pt` would destroy the run;
- an existing file only with --force; a folder, or a path through a file, never (missing
  folders are created).
No torch import.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from study.errors import UsageError
from study.runs.paths import (
    BEST_NAME,
    EVAL_JSON,
    LAST_NAME,
    LOCK_NAME,
    METRICS_CSV,
    NAME_MAX_BYTES,
    RUN_JSON,
    SNAPSHOT_GLOB,
)

# What a run folder holds that flowctl wrote and reads back (the sweep files included).
RUN_FILES = (BEST_NAME, LAST_NAME, RUN_JSON, METRICS_CSV, LOCK_NAME, EVAL_JSON,
             "sweep.yaml", "sweep.json")
# What the atomic writer adds to a file's name for its temp file: "." + ".tmp-" + a pid.
TEMP_NAME_EXTRA = 1 + 5 + 10
# A folder holding one of these is a run folder.
RUN_MARKERS = (RUN_JSON, BEST_NAME, LAST_NAME, METRICS_CSV)


def run_file_of(path: Path) -> str | None:
    """The run folder whose own file `path` (or the file it links to) is; None if it is none."""
    for candidate in (path, Path(os.path.realpath(path))):
        name = candidate.name
        if name in RUN_FILES or fnmatch.fnmatch(name, SNAPSHOT_GLOB):
            folder = candidate.parent
            if any((folder / marker).exists() for marker in RUN_MARKERS):
                return str(folder)
    return None


def check_output(path: Path, *, suffixes: tuple[str, ...], force: bool,
                 flag: str = "--out") -> None:
    """UsageError (one line, with the fix) unless `path` may be written: its extension is one of
    `suffixes` (".pt", ".npy"), it is no run's own file, its folder exists, and it is not
    there yet (or `force`)."""
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in path.parts),
                  default=0)
    if longest > NAME_MAX_BYTES - TEMP_NAME_EXTRA:
        raise UsageError(f"{flag} names a file or folder of {longest} bytes; a name may hold "
                         f"at most {NAME_MAX_BYTES - TEMP_NAME_EXTRA} here (the file system "
                         f"allows {NAME_MAX_BYTES}, and the atomic write adds a temp suffix)")
    folder = run_file_of(path)
    if folder is not None:
        raise UsageError(f"{flag} {path} is a file of the run folder {folder}; flowctl never "
                         f"overwrites a run's own files, even with --force: choose another {flag}")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name inside it")
    if path.suffix.lower() not in suffixes:
        shown = repr(path.suffix) if path.suffix else "no extension"
        raise UsageError(f"cannot write {path}: {shown} is not a format this command writes; "
                         f"name the file with one of {', '.join(suffixes)}")
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent  # missing folders are created by the writer
    if not ancestor.is_dir():
        raise UsageError(f"cannot write {path}: {ancestor} is a file, not a folder")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{flag} {path} already exists; pass --force to replace it, or "
                         f"choose another {flag}")
