"""Reading what may be hostile without trusting it: the small JSON files of a run folder
(run.json, eval.json, a sweep point's record), the YAML files people pass (configs, grids),
and the structure of a loaded checkpoint (`check_structure`). No torch import.

One reader for all of them, so every command answers a hostile file the same way: as a
one-line problem that costs that file's row, never an exception. A file is read only when it
resolves (symlinks followed) inside its own folder: a `run.json -> /etc/...` link, or one to
another user's files, is refused unread. A document nested deeper than MAX_DEPTH (a JSON
bomb of brackets: json.loads raises RecursionError, and even a loadable one would overflow
every recursive walk after it: masking, printing, the dashboard's encoder) is refused too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# Far deeper than anything flowctl writes (run.json's config is 3 levels), far below the
# interpreter's recursion limit (1,000 frames, part of them already used by the caller).
MAX_DEPTH = 64


def inside(parent_real: str, path: str) -> bool:
    """Whether `path`, with symlinks resolved, lies strictly inside `parent_real` (a realpath)."""
    real = os.path.realpath(path)
    return real != parent_real and os.path.commonpath([parent_real, real]) == parent_real


def confined_path(path: str | os.PathLike) -> str | None:
    """`path` resolved, when it lies inside its own folder (resolved); None when a symlink
    (the file's own or one inside the folder) leads out of it."""
    path = os.fspath(path)
    folder_real = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    if not inside(folder_real, path):
        return None
    return os.path.realpath(path)


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` (parsed JSON, a loaded checkpoint) nests dicts, lists or tuples deeper
    than `limit`; iterative, so a deep value cannot overflow the check itself."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def load_json_object(path: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
    """(the object in the JSON file `path`, "") or (None, why not, in one line naming the
    file): missing, a symlink out of its folder, unreadable, not JSON, nested too deeply, or
    not an object. Never raises for the file's content."""
    name = os.path.basename(os.fspath(path))
    real = confined_path(path)
    if real is None:
        return None, f"{name} is a symlink out of its run folder (not read)"
    try:
        with open(real, "rb") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None, f"{name} missing"
    except OSError as err:
        return None, f"{name} unreadable: {err.strerror or err}"
    try:
        value = json.loads(text)
    except RecursionError:
        return None, f"{name} is nested too deeply (over {MAX_DEPTH} levels)"
    except (ValueError, UnicodeDecodeError):
        return None, f"{name} is not valid JSON"
    if not isinstance(value, dict):
        return None, f"{name} holds a {type(value).__name__}, not an object"
    if depth_exceeds(value):
        return None, f"{name} is nested too deeply (over {MAX_DEPTH} levels)"
    return value, ""


def read_json_object(path: str | os.PathLike) -> dict[str, Any] | None:
    """The object in the JSON file `path`; None when load_json_object finds a problem (for the
    advisory files: eval.json, a sweep's point record)."""
    return load_json_object(path)[0]


# A YAML document (a config, a grid) holds at most this many values once its aliases are
# expanded: a real grid of 10,000 explicit points is ~10,000; a 1 KB alias bomb is billions.
MAX_YAML_VALUES = 100_000


def expanded_size(value: Any) -> float:
    """How many values `value` holds counting every repeat of a shared object (what a walk
    over it, a copy or a repr would visit); inf when it contains itself (a YAML anchor used
    inside its own node). Linear in the distinct objects, iterative."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, closing = stack.pop()
        if not isinstance(node, (dict, list, tuple)):
            continue
        children = list(node.values()) if isinstance(node, dict) else list(node)
        key = id(node)
        if closing:
            sizes[key] = 1 + sum(sizes.get(id(child), 1) for child in children)
            open_nodes.discard(key)
        elif key in open_nodes:
            return math.inf
        elif key not in sizes:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return sizes.get(id(value), 1)


def load_yaml_file(path: str | os.PathLike, *, what: str) -> Any:
    """`yaml.safe_load` of the file at `path`, refused (UsageError, one line naming `what` and
    the file) when it cannot be read, is not YAML, or expands beyond MAX_YAML_VALUES values
    (an alias bomb grows past any memory once walked) or refers to itself."""
    import yaml

    from study.errors import UsageError

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = "it is not UTF-8 text" if isinstance(err, UnicodeDecodeError) else err.strerror or err
        raise UsageError(f"cannot read {what} {path}: {reason}") from None
    try:
        loaded = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{what} {path} is not valid YAML{where}") from None
    size = expanded_size(loaded)
    if size == math.inf:
        raise UsageError(f"{what} {path} refers to itself (a YAML anchor used inside its own "
                         "value); write the values out")
    if size > MAX_YAML_VALUES:
        raise UsageError(f"{what} {path} expands to {size:,} values, more than "
                         f"{MAX_YAML_VALUES:,} (YAML aliases repeating whole structures?); "
                         "write the values out")
    return loaded


# Fields whose type a reader relies on: (kind, bounds). A field that is absent (an older
# checkpoint) or None is not checked; one that is there must be of its kind.
INT_FIELDS = {"epoch": (-1, 10**9), "global_step": (0, 10**15), "batch_in_epoch": (0, 10**12),
              "world_size": (1, 10**6), "steps_per_epoch": (0, 10**12),
              "epochs_without_improvement": (0, 10**9)}
MAPPING_FIELDS = ("config", "optimizer_state_dict", "scheduler_state_dict", "rng_states")
TENSOR_MAPPINGS = ("model_state_dict", "ema_shadow")


def check_structure(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """UsageError (one line naming the field) for a checkpoint that loaded but cannot be a
    flowctl checkpoint: containers nested deeper than any flowctl writes (every recursive
    walk after loading would overflow), or a field of the wrong type or an absurd value
    (INT_FIELDS, MAPPING_FIELDS; model_state_dict and ema_shadow map names to tensors)."""
    from study.errors import UsageError

    if depth_exceeds(ckpt):
        raise UsageError(f"{path} is not a flowctl checkpoint (containers nested deeper than "
                         f"{MAX_DEPTH} levels)")
    for key, (low, high) in INT_FIELDS.items():
        value = ckpt.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not low <= value <= high):
            raise UsageError(f"{path} is not a usable flowctl checkpoint: {key} is {value!r:.60}, "
                             f"expected an integer from {low} to {high}")
    for key in MAPPING_FIELDS:
        value = ckpt.get(key)
        if value is not None and not isinstance(value, dict):
            raise UsageError(f"{path} is not a usable flowctl checkpoint: {key} is a "
                             f"{type(value).__name__}, expected a mapping")
    for key in TENSOR_MAPPINGS:
        value = ckpt.get(key)
        if value is None and key != "model_state_dict":
            continue
        if not isinstance(value, dict) or not all(
                isinstance(name, str) and hasattr(item, "shape") and hasattr(item, "dtype")
                for name, item in value.items()):
            raise UsageError(f"{path} is not a usable flowctl checkpoint: {key} must map "
                             "parameter names to tensors")
