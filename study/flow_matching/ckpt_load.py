"""Open a checkpoint file safely: the one loader every command uses.

Loading is always `weights_only=True`: a checkpoint that needs arbitrary code to unpickle
is refused before any of it runs (and the file's first bytes are checked before torch
sees them). New (zipfile) checkpoints are memory-mapped, so opening a 1 GB file reads its
small entries and not its big tensors' bytes. torch is imported inside the function, so
`FORMAT_VERSION` can be imported for free.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

from study.errors import UsageError

# Bumped when the checkpoint dict changes incompatibly; a reader refuses newer ones.
FORMAT_VERSION = 1

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save(..., _use_new_zipfile_serialization=False) starts with this pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at `path`, loaded on CPU; UsageError (one line) for anything else."""
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
    version = ckpt.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UsageError(f"{path} is not a flowctl checkpoint (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise UsageError(
            f"{path} was written by a newer flowctl (format {version} > {FORMAT_VERSION}); upgrade flowctl"
        )
    return ckpt


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
