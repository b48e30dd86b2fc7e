"""Mask values that look like credentials before flowctl prints or stores them.

A value is masked when its key names a secret (WANDB_API_KEY, *_TOKEN, *_SECRET, *password*,
api_key, ...) or the value itself has the shape of a well-known credential (sk-..., ghp_...,
AKIA..., a value equal to the current $WANDB_API_KEY). Applied to configs before they reach
the console, run.json, wandb's config and inspect-ckpt output.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "[SECRET]"
SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
SECRET_VALUE = re.compile(
    r"^(sk-[A-Za-z0-9_\-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|xox[abpr]-[A-Za-z0-9\-]{10,})$"
)


def looks_secret(key: str, value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    if SECRET_KEY.search(str(key)):
        return True  # whatever sits under a secret-looking key, numbers included
    if not isinstance(value, str) or not value:
        return False
    if SECRET_VALUE.match(value.strip()):
        return True
    api_key = os.environ.get("WANDB_API_KEY")
    return bool(api_key) and api_key in value


def mask_secrets(data: Any, key: str = "") -> Any:
    """A copy of `data` (dicts, lists, scalars) with secret-looking values replaced.

    Everything below a secret-looking key is masked, however deeply nested.
    """
    if isinstance(data, dict):
        if key and SECRET_KEY.search(key):
            return {k: MASK for k in data}
        return {k: mask_secrets(v, str(k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_secrets(v, key) for v in data]
    return MASK if looks_secret(key, data) else data
