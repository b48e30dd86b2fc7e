"""Where runs live on disk, and the one way every command turns a name into a checkpoint.

Layout: {checkpoint root}/{run_name}/ holds best.pt, last.pt, run.json, metrics.csv, wandb/.
The root is `--ckpt-dir`, else $FLOWCTL_CKPT_DIR, else `study/checkpoints` (relative to the
working directory, as in the original study). No torch import: the fast commands use this.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from study.errors import UsageError
from study.runs.safe_read import confined_path, inside

DEFAULT_CKPT_ROOT = Path("study/checkpoints")
CKPT_ENV = "FLOWCTL_CKPT_DIR"
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
RUN_JSON = "run.json"
METRICS_CSV = "metrics.csv"
LOCK_NAME = "run.lock"
EVAL_JSON = "eval.json"  # written by `flowctl eval`
# What evaluation and inspection read first (the weights that validated best), and what a
# resume reads first (the newest full state). Each falls back to the other file.
BEST_FIRST = (BEST_NAME, LAST_NAME)
LAST_FIRST = (LAST_NAME, BEST_NAME)


SNAPSHOT_GLOB = "epoch-*.pt"
NAME_MAX_BYTES = 255  # NAME_MAX: the longest file name ext4, xfs, btrfs and tmpfs allow


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a run folder's name (one phrase), or None if it can: it must be
    one visible path component, a valid file name everywhere flowctl writes it (a folder, an
    #SBATCH line, a terminal): no '/', '\\', NUL or other control characters, no line or
    paragraph separators, no leading '.', at most NAME_MAX_BYTES bytes of UTF-8."""
    if not name or not name.strip():
        return "is empty"
    if name.startswith("."):
        return "starts with '.' (hidden, and '.'/'..' are not folders of their own)"
    if "/" in name or "\\" in name:
        return "holds a path separator ('/' or '\\')"
    odd = next((c for c in name if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")), None)
    if odd is not None:
        return f"holds the control character {odd!r}"
    size = len(name.encode("utf-8"))
    if size > NAME_MAX_BYTES:
        return f"is {size} bytes long, more than a file name may hold ({NAME_MAX_BYTES})"
    return None


def check_run_name(name: str, *, what: str = "--run-name") -> str:
    """`name` if it can name a run folder (or any folder flowctl makes from a name, e.g. a
    sweep's `.sweeps/{group}`); UsageError (one line, the fix) otherwise."""
    problem = name_problem(name)
    if problem is not None:
        shown = repr(name) if len(name) <= 80 else repr(name[:60]) + "..."
        raise UsageError(f"{what} {shown} {problem}; it must be a single folder name")
    return name


def snapshot_name(epoch: int) -> str:
    """`epoch-0007.pt`: the checkpoint kept after epoch 7 (1-based) by --keep-snapshots."""
    return f"epoch-{epoch + 1:04d}.pt"


def checkpoint_root(override: str | os.PathLike | None = None) -> Path:
    """The folder that holds one sub-folder per run."""
    if override:
        return Path(override)
    env = os.environ.get(CKPT_ENV)
    return Path(env) if env else DEFAULT_CKPT_ROOT


def run_dir(run_name: str, root: str | os.PathLike | None = None) -> Path:
    """{root}/{run_name}: the run's folder (it may not exist yet)."""
    return checkpoint_root(root) / run_name


def find_checkpoint(target: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None, *,
                    prefer: tuple[str, ...] = BEST_FIRST) -> Path:
    """A checkpoint file as given; a run folder or a run name under the root -> the first
    file of `prefer` that exists there. UsageError (one line, with the next step) otherwise.

    Every command resolves its TARGET here: inspect-ckpt, sample, eval and plot with
    BEST_FIRST (LAST_FIRST under `--last`), resume with LAST_FIRST, reflow's teacher with
    BEST_FIRST.
    """
    path = Path(target).expanduser()
    if path.is_file():
        return path
    root = checkpoint_root(ckpt_dir)
    folder = path if path.is_dir() else root / str(target)
    if folder != path and folder.is_symlink() and not inside(os.path.realpath(root), folder):
        raise UsageError(f"{folder} is a symlink out of the checkpoint root; flowctl does not "
                         "follow it (give the folder it points to)")
    if folder.is_dir():
        for name in prefer:
            if (folder / name).is_file():
                if confined_path(folder / name) is None:  # nothing outside the run is read
                    raise UsageError(f"{folder / name} is a symlink out of its run folder; "
                                     "flowctl does not follow it (give the file itself)")
                return folder / name
        raise UsageError(f"{folder} holds no checkpoint (no {' or '.join(prefer)}); "
                         "see `flowctl list-runs`")
    if folder.exists():
        raise UsageError(f"{folder} is a file, not a run folder (nor a checkpoint); "
                         "see `flowctl list-runs`")
    if path.suffix == ".pt" or len(path.parts) > 1:
        raise UsageError(f"checkpoint {target} does not exist; see `flowctl list-runs`")
    raise UsageError(f"no checkpoint or run named {str(target)!r} (looked under {root}); "
                     "see `flowctl list-runs`")
