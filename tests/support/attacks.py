"""What the attack tests (issue 24) share: a fingerprint of every file in a tree, to assert
that an attack changed nothing outside the run folder (or the output) it was allowed to touch."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path


def fingerprint(tree: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """{relative path: sha256 of the file, or `-> target` for a symlink} for everything under
    `tree` (links not followed), leaving out the folders in `skip`."""
    skipped = {os.path.abspath(path) for path in skip}
    found = {}
    for folder, dirs, files in os.walk(tree):
        dirs[:] = [name for name in dirs if os.path.join(folder, name) not in skipped]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            key = os.path.relpath(path, tree)
            if os.path.islink(path):
                found[key] = f"-> {os.readlink(path)}"
            else:
                found[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def make_run(root: Path, name: str, *, status: str = "finished", group: str = "g",
             best: float | None = None, run_name: str | None = None, **fields) -> Path:
    """A run folder as the trainer leaves it (run.json and a last.pt), for selection tests."""
    folder = root / name
    folder.mkdir(parents=True)
    updated = datetime.fromtimestamp(time.time(), timezone.utc).isoformat()
    (folder / "run.json").write_text(json.dumps({
        "run_name": run_name or name, "group": group, "status": status,
        "updated_at": updated, "best_val_loss": best, **fields}))
    (folder / "last.pt").write_bytes(b"\0" * 1000)
    return folder
