"""Plug-ins by import path: a user's network or metric is `pkg.module:Name`.

`resolve_target` is the one place flowctl turns such a string into a Python object. It
imports the module, looks the name up and checks what it found *before* anything is
called: a network must be an `nn.Module` subclass, a function a plain Python function
(`def`), so `os:system`, `builtins:eval` or any other callable is refused with one line.
Importing a module runs its top-level code, so only commands that build a model or call a
metric resolve targets; listing and inspecting runs never do (a checkpoint or run.json
may come from someone else). No torch at import.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
from typing import Any

from study.errors import UsageError

# dotted.module.path:Name (the Name may be nested: pkg.mod:Outer.Inner is not supported)
TARGET_PATTERN = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
KINDS = {"network": "an nn.Module subclass", "function": "a plain Python function (def)"}
SCRIPT_MODULE = "__main__"


def is_target(text: Any) -> bool:
    """True for a string shaped like `pkg.module:Name` (nothing is imported)."""
    return isinstance(text, str) and TARGET_PATTERN.fullmatch(text) is not None


def check_target(text: Any, *, what: str) -> None:
    """UsageError unless `text` is shaped like `pkg.module:Name` (nothing is imported)."""
    if not is_target(text):
        raise UsageError(f"{what} {text!r} is not an import path; write it as pkg.module:Name")


def resolve_target(target: str, *, kind: str, what: str | None = None) -> Any:
    """Import `pkg.module` and return its `Name`, checked to be of `kind` ("network": an
    nn.Module subclass; "function": a plain function). Nothing found is called.

    UsageError (one line naming the target and the fix) when the module cannot be
    imported, has no such name, or the name is of another kind.
    """
    what = what or kind
    check_target(target, what=what)
    module_name, name = target.split(":")
    if module_name == SCRIPT_MODULE:  # the current script is not the one that defined it
        raise UsageError(f"{what} {target} was defined in a script (__main__), which no other "
                         f"process can import; move {name} into a module and use "
                         f"pkg.module:{name}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"cannot import {what} {target} ({err}); install the package that "
                         "provides it, or add its folder to PYTHONPATH") from None
    except Exception as err:  # the user's module failed while importing
        raise UsageError(f"importing {what} {target} failed: {type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None
    found = getattr(module, name, None)
    if found is None:
        raise UsageError(f"{what} {target}: module {module_name} has no {name!r}; check the "
                         "spelling, or install the version of the package that provides it")
    if not _is_kind(found, kind):
        raise UsageError(f"{what} {target} is {_describe(found)}, not {KINDS[kind]}; refusing "
                         "to use it")
    return found


def _is_kind(found: Any, kind: str) -> bool:
    if kind == "network":
        from torch import nn

        return isinstance(found, type) and issubclass(found, nn.Module)
    if kind == "function":
        return inspect.isfunction(found)
    raise ValueError(f"expected kind in {sorted(KINDS)}, got {kind!r}")


def _describe(found: Any) -> str:
    if isinstance(found, type):
        return f"the class {found.__module__}.{found.__qualname__}"
    if inspect.isbuiltin(found):
        return "a builtin"
    if inspect.ismodule(found):
        return "a module"
    return f"a {type(found).__name__}"


def target_of(cls_or_function: Any) -> str | None:
    """`module:Name` for a class or function that resolve_target would find again (the
    same object), `__main__:Name` for one defined in a script, else None (a nested or
    local definition). Importing its module is not needed: it already is imported."""
    module_name = getattr(cls_or_function, "__module__", None)
    name = getattr(cls_or_function, "__qualname__", "")
    if not module_name or "." in name or "<" in name:
        return None
    target = f"{module_name}:{name}"
    if module_name == SCRIPT_MODULE:
        return target
    module = sys.modules.get(module_name)
    if module is None or getattr(module, name, None) is not cls_or_function:
        return None
    return target if is_target(target) else None


def source_sha256(found: Any) -> str | None:
    """sha256 of the file that defines `found` (a class or function); None if it has none."""
    try:
        path = inspect.getsourcefile(found)
    except TypeError:
        return None
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None
