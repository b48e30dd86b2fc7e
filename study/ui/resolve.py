"""Names that arrive in URLs -> paths under the checkpoint root, or None (the server's 404).

A run name is one path component naming a folder directly under the root; a file name is one
component naming a regular file directly in that run folder. Anything else is refused before
the file system is touched: `..`, `.` and hidden names, separators, NUL, and (after resolving
symlinks) any path that leaves the root or the run folder.
"""

from __future__ import annotations

import os

from study.runs.safe_read import inside

FORBIDDEN_CHARACTERS = ("/", "\\", "\0")


def plain_name(name: str) -> bool:
    """Whether `name` is a single, visible path component (no separators, not . or ..)."""
    return bool(name) and not name.startswith(".") and not any(
        character in name for character in FORBIDDEN_CHARACTERS)


def run_folder(root: str | os.PathLike, name: str) -> str | None:
    """The real path of run `name` under `root`, or None if it is not a run folder there."""
    if not plain_name(name):
        return None
    root_real = os.path.realpath(root)
    candidate = os.path.join(root_real, name)
    if not inside(root_real, candidate) or not os.path.isdir(candidate):
        return None
    return os.path.realpath(candidate)


def file_in_run(run_real: str, filename: str) -> str | None:
    """The real path of `filename` directly inside the run folder `run_real`, or None."""
    if not plain_name(filename):
        return None
    candidate = os.path.join(run_real, filename)
    if not inside(run_real, candidate) or not os.path.isfile(candidate):
        return None
    return os.path.realpath(candidate)


def links_outside(root_real: str, folder: str) -> bool:
    """Whether `folder` (a child of the root) is a symlink that resolves outside the root."""
    return os.path.islink(folder) and not inside(root_real, folder)
