"""Checkpoint files: one plain dict of tensors and primitives, written atomically, read safely.

Writing (`write_atomic`, flowctl's one atomic file writer: checkpoints, run.json, eval.json,
sweep point files, sbatch scripts, caches): write a temp file in the same folder, flush +
fsync, `os.replace` over the target and fsync the folder. A crash at any instant leaves
either the previous complete file or the new complete one, never a partial file.

Reading (`read_checkpoint`, the one loader every command uses): always `weights_only=True`,
so a checkpoint that needs arbitrary code to unpickle is refused before any of it runs (and
the file's first bytes are checked before torch sees them). Zipfile checkpoints are
memory-mapped: opening a 1 GB file reads its small entries, not its big tensors' bytes.
torch is imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from study.errors import RunFailed, UsageError
from study.runs.safe_read import check_structure

# Bumped when the checkpoint dict changes incompatibly; a reader refuses newer ones.
FORMAT_VERSION = 1
TEMP_MARK = ".tmp-"

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save(..., _use_new_zipfile_serialization=False) starts with this pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at `path`, loaded on CPU (memory-mapped, weights_only); UsageError
    (one line naming the file) for anything that is not a readable flowctl checkpoint."""
    path = Path(path)
    header = _read_header(path)
    if header.startswith(_ZIP_MAGIC):
        use_mmap = True
    elif header.startswith(_LEGACY_MAGIC):
        use_mmap = False  # mmap needs the zipfile format
    else:
        raise UsageError(f"{path} {_describe_non_checkpoint(header)}")

    import torch
    from torch.torch_version import TorchVersion

    try:
        # torch.__version__ is a TorchVersion (a str subclass), and checkpoints that stored it
        # as is would otherwise be refused; allowing it runs no code.
        with warnings.catch_warnings(), _allow_globals(torch, [TorchVersion]):
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes would break one-line output
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UsageError(_explain_unpickling_error(path, str(err))) from None
    except (PermissionError, FileNotFoundError) as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as err:
        # A cut-short zip makes torch's reader seek past the end: OSError(EINVAL), not EOF.
        raise UsageError(f"{path} is not a torch checkpoint (truncated or corrupt)") from err

    if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
        holds = f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else "a dict without model_state_dict"
        raise UsageError(f"{path} is not a flowctl checkpoint (it holds {holds})")
    check_structure(ckpt, path)
    version = ckpt.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UsageError(f"{path} is not a flowctl checkpoint (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise UsageError(
            f"{path} was written by a newer flowctl (format {version} > {FORMAT_VERSION}); upgrade flowctl"
        )
    return ckpt


def serialize_into(payload: dict[str, Any], handle: BinaryIO) -> None:
    """`torch.save` of `payload` straight into an open file: each tensor's bytes go from its
    memory to the file, with no copy of the whole checkpoint in between (for a 67 MB state,
    124 ms to serialise, write and fsync instead of 212 ms through an in-memory buffer)."""
    import torch

    torch.save(payload, handle)


def snapshot(payload: Any) -> Any:
    """A copy of `payload` (nested dicts, lists, tensors, primitives) whose tensors are CPU
    copies: it stays as it is while training goes on and can be written on another thread."""
    if isinstance(payload, dict):
        return {key: snapshot(value) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return type(payload)(snapshot(value) for value in payload)
    if hasattr(payload, "detach") and hasattr(payload, "clone"):
        return payload.detach().to("cpu", copy=True)
    return payload


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], None], *,
                 also: tuple[Path, ...] = ()) -> None:
    """Write `data` (bytes, or a function that writes into the open file) to `path` (and to
    each path in `also`, same folder) so that readers only ever see complete files.

    The bytes are serialised once; each extra name gets its own copy of the new file (never
    a hard link: best.pt and last.pt are two files, so damaging one in place, a shell
    redirect, cannot destroy the other), fsynced and put in place with its own
    `os.replace`, then one fsync of the folder. An OSError (disk full, permission denied, folder
    deleted) removes the temp files, leaves the previous files untouched and is raised as
    RunFailed naming the file; any other error (from a writing function) removes them too.
    """
    path = Path(path)
    current = path
    temps = [p.with_name(f".{p.name}{TEMP_MARK}{os.getpid()}") for p in (path, *also)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temps[0], "wb") as handle:
            data(handle) if callable(data) else handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temps[0], path)
        for current, temp in zip(also, temps[1:], strict=True):
            current = Path(current)
            shutil.copyfile(path, temp)
            _fsync_file(temp)
            os.replace(temp, current)
        _fsync_dir(path.parent)
    except BaseException as err:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else err.__cause__ or err.__context__
        if not isinstance(cause, OSError):
            raise
        reason = (cause.strerror or str(cause)).lower()
        raise RunFailed(f"{reason} while writing {current.name} ({current.parent})") from err
    for written in (path, *also):
        if not Path(written).is_file() or Path(written).stat().st_size == 0:
            raise RunFailed(f"{written} is missing or empty right after writing it")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_snapshots(folder: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` epoch-numbered snapshots in `folder`."""
    from study.runs.paths import SNAPSHOT_GLOB

    snapshots = sorted(Path(folder).glob(SNAPSHOT_GLOB))
    removed = snapshots[:-keep] if keep > 0 else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temp files a killed writer left behind; returns what was removed."""
    removed = []
    if folder.is_dir():
        for leftover in folder.glob(f".*{TEMP_MARK}*"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def checkpoint_metadata() -> dict[str, Any]:
    """Who wrote a checkpoint and when: format, versions, host, time (primitives only)."""
    import platform
    from datetime import datetime, timezone

    import torch

    import study
    from study.install import install_mode

    return {"format_version": FORMAT_VERSION, "torch_version": str(torch.__version__),
            "flowctl_version": study.__version__, "flowctl_install": install_mode(),
            "host": platform.node(),
            "saved_at": datetime.now(timezone.utc).isoformat()}


def restore_modules(payload: dict[str, Any], path: str | os.PathLike, model, ema=None,
                    optimizer=None) -> None:
    """Load model -> EMA -> optimizer from a read checkpoint (anything with load_state_dict);
    a checkpoint that does not fit is one UsageError line naming the first mismatch."""
    try:
        model.load_state_dict(payload["model_state_dict"])
        if ema is not None and payload.get("ema_shadow"):
            ema.load_state_dict(payload["ema_shadow"])
        if optimizer is not None and payload.get("optimizer_state_dict"):
            optimizer.load_state_dict(payload["optimizer_state_dict"])
    except (RuntimeError, KeyError, ValueError) as err:
        lines = str(err).strip().splitlines()
        detail = next((line.strip() for line in lines if "size mismatch" in line or "Missing" in line
                       or "Unexpected" in line), lines[0] if lines else type(err).__name__)
        raise UsageError(f"checkpoint {path} does not fit the model: {detail}") from None


def _allow_globals(torch, allowed: list) -> contextlib.AbstractContextManager:
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals(allowed) if safe_globals else contextlib.nullcontext()


def _read_header(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            header = handle.read(64)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path} does not exist; see `flowctl list-runs`") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a checkpoint file") from None
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    if not header:
        raise UsageError(f"{path} is empty (0 bytes): not a torch checkpoint")
    return header


def _describe_non_checkpoint(header: bytes) -> str:
    if header[:1] == b"\x80" and 2 <= header[1] <= 5:
        return "is a plain pickle, not a torch checkpoint (refusing to unpickle it)"
    try:
        text = header.decode("utf-8").lstrip()
    except UnicodeDecodeError:
        text = ""
    if text.startswith(("{", "[")):
        return "is a JSON file, not a torch checkpoint"
    if text and text.isprintable():
        return "is a text file, not a torch checkpoint"
    return "is not a torch checkpoint (truncated or corrupt)"


def _explain_unpickling_error(path: Path, message: str) -> str:
    """torch's weights_only refusal -> our one line; a torch global that does not exist
    means the pickle was cut mid-name (truncated file), not a hostile one."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    name = found.group(1) if found else None
    if name is None or (name.startswith("torch.") and not _torch_has(name)):
        return f"{path} is not a torch checkpoint (truncated or corrupt)"
    return (
        f"refusing to load {path}: the file needs arbitrary code to unpickle "
        f"(not a plain-tensor checkpoint; it references {name})"
    )


def _torch_has(dotted: str) -> bool:
    """Whether torch (already imported) has this attribute path; never imports anything."""
    import torch

    target: Any = torch
    for part in dotted.split(".")[1:]:
        if not hasattr(target, part):
            return False
        target = getattr(target, part)
    return True
