"""Which flowctl is running, and the environment of the Python processes it starts.

`study` must mean flowctl in every process, however flowctl was installed and whatever folder
it runs from. Two things make that hold:

- The install. flowctl builds with hatchling, whose editable install (`pip install -e .`,
  `uv pip install -e .`, `make install`) is a plain path entry naming the checkout; a wheel
  install puts the package in site-packages. Either way `study` is a regular package on
  sys.path, and a regular package wins over a `study/` folder without `__init__.py` in the
  working directory (every experiment folder has one: `study/checkpoints/`).
- The children. A Python process started with `python -m` puts its working folder first on
  sys.path, ahead of everything installed. `child_env()` sets PYTHONSAFEPATH=1 (Python 3.11+)
  for the processes flowctl starts (sweep points, torchrun and its workers, Slurm jobs), so
  even a `study.py` or a `study/__init__.py` there cannot stand in for flowctl: they see
  sys.path as the `flowctl` command itself does (the user's modules come from PYTHONPATH).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping

SAFE_PATH_ENV = "PYTHONSAFEPATH"


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) plus PYTHONSAFEPATH=1, for a Python child of flowctl."""
    return {**(os.environ if base is None else base), SAFE_PATH_ENV: "1"}


@functools.cache  # read once per process: every checkpoint and run.json records it
def install_mode() -> str:
    """How the running flowctl is installed: `editable PATH` (pip/uv -e, make install),
    `wheel` (pip install .), or `not installed` (a checkout on PYTHONPATH)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution("flowctl")
    except metadata.PackageNotFoundError:
        return "not installed"
    try:
        direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
    except (OSError, ValueError):
        direct_url = {}
    if isinstance(direct_url, dict) and (direct_url.get("dir_info") or {}).get("editable"):
        url = str(direct_url.get("url", ""))
        return "editable " + url.removeprefix("file://")
    return "wheel"
