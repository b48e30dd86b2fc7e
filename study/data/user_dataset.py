"""`--dataset pkg.module:function`: a user's own data, made by their code.

The function is resolved by study.plugins (a plain function; nothing else is called) and
called as `function(seed=seed, **dataset_args)`. It returns the splits as a mapping
`{"train": Tensor [N, D], "val": Tensor [M, D], "test": Tensor [K, D] (optional)}` or a
tuple `(train, val)` / `(train, val, test)`, in data units (numpy arrays are accepted). The
run records the target, its arguments and a sha256 of what it returned: a resume, `eval`
and a sweep call it again and a different answer is the usual "dataset changed" warning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from study.errors import UsageError

SPLITS = ("train", "val", "test")


def call_dataset_function(target: str, *, seed: int, args: Mapping[str, Any] | None = None
                          ) -> tuple[dict[str, Tensor | None], str]:
    """({"train", "val", "test" or None} as float32 CPU tensors, sha256 hex of them)."""
    from study.plugins import resolve_target

    function = resolve_target(target, kind="function", what="dataset")
    try:
        returned = function(seed=seed, **dict(args or {}))
    except Exception as err:  # the user's code: name it, one line
        raise UsageError(f"dataset {target} raised {type(err).__name__}: "
                         f"{' '.join(str(err).split())}") from None
    if isinstance(returned, Mapping):
        splits = {name: returned.get(name) for name in SPLITS}
    elif isinstance(returned, (tuple, list)) and len(returned) in (2, 3):
        splits = dict(zip(SPLITS, [*returned, None][:3], strict=True))
    else:
        raise UsageError(f"dataset {target} returned {type(returned).__name__}; expected "
                         "{'train': Tensor [N, D], 'val': Tensor [M, D], 'test'?: ...} or "
                         "(train, val[, test])")
    tensors = {name: _matrix(value, name, target) for name, value in splits.items()}
    if tensors["train"] is None or tensors["val"] is None:
        raise UsageError(f"dataset {target} returned no {'train' if tensors['train'] is None else 'val'} split")
    digest = hashlib.sha256(f"function:{target}\n".encode())
    for name in SPLITS:
        if tensors[name] is not None:
            digest.update(f"{name}:{tuple(tensors[name].shape)}\n".encode())
            digest.update(tensors[name].numpy().tobytes())
    return tensors, digest.hexdigest()


def _matrix(value: Any, name: str, target: str) -> Tensor | None:
    if value is None:
        return None
    try:
        matrix = torch.as_tensor(value).detach().to("cpu", torch.float32).contiguous()
    except (TypeError, ValueError, RuntimeError):
        raise UsageError(f"dataset {target}: its {name} split is a {type(value).__name__}, "
                         "not a tensor or array") from None
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise UsageError(f"dataset {target}: expected its {name} split of shape [N, D], got "
                         f"{tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise UsageError(f"dataset {target}: its {name} split holds NaN or inf")
    return matrix
