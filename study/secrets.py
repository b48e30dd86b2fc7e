"""Mask values that look like credentials before flowctl prints or stores them.

A value is masked whole when its key names a secret (WANDB_API_KEY, *_TOKEN, *_SECRET,
*password*, api_key, ...). Inside any other text only the credential itself is replaced
("my key is sk-..." -> "my key is [SECRET]"): tokens shaped like OpenAI (sk-...), AWS (AKIA...,
ASIA...), Google (AIza...), GitHub (ghp_..., gho_..., github_pat_...), GitLab (glpat-...),
Hugging Face (hf_...) and Slack (xoxb-..., xoxp-...) keys, also glued to a name by `-` or `_`
(`team-ghp_...`), and the current $WANDB_API_KEY's value. Applied to configs, errors and notes before they reach the
console, run.json, wandb, list-runs and inspect-ckpt.

DISABLE_SECRET_FILTER=1 turns masking off (to debug a config), with one warning line on stderr
per process.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

MASK = "[SECRET]"
DISABLE_ENV = "DISABLE_SECRET_FILTER"
SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
# A token starts where no letter or digit precedes it: after a separator of any kind, `-` and
# `_` included ("team-ghp_...", "prod-AKIA...", "x-sk-..."), but not inside a word
# ("task-123..." holds no "sk-" key). Prefixes no word contains ("ghp_", "github_pat_",
# "glpat-", "hf_") need no boundary at all. A token ends where its alphabet ends.
SECRET_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])("
    r"sk-[A-Za-z0-9_\-]{16,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])"
    r"|AIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"
    r"|xox[abpre]-[A-Za-z0-9\-]{10,}"
    r")"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|glpat-[A-Za-z0-9_\-]{20,}"
    r"|hf_[A-Za-z0-9]{30,}"
)

_warned_disabled = False


def filter_enabled() -> bool:
    """False when $DISABLE_SECRET_FILTER is set to a true value; warns once per process then."""
    global _warned_disabled
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("", "0", "false", "no"):
        return True
    if not _warned_disabled:
        _warned_disabled = True
        print(f"warning: {DISABLE_ENV} is set: credentials are shown and stored unmasked",
              file=sys.stderr)
    return False


def mask_text(text: str) -> str:
    """`text` with every credential-shaped token (and $WANDB_API_KEY's value) replaced by MASK.

    The rest of the text is kept, so an error message stays readable.
    """
    return _mask_text(text, os.environ.get("WANDB_API_KEY")) if text and filter_enabled() else text


def _mask_text(text: str, api_key: str | None) -> str:
    masked = SECRET_TOKEN.sub(MASK, text)
    if api_key and api_key.strip():
        masked = masked.replace(api_key.strip(), MASK)
    return masked


def _looks_secret(key: str, value: Any, api_key: str | None) -> bool:
    """True when `value` should be shown as MASK as a whole: a secret key, or a bare token."""
    if value is None or isinstance(value, bool):
        return False
    if SECRET_KEY.search(str(key)):
        return True  # whatever sits under a secret-looking key, numbers included
    if not isinstance(value, str) or not value.strip():
        return False
    return _mask_text(value.strip(), api_key) == MASK


def mask_secrets(data: Any, key: str = "") -> Any:
    """A copy of `data` (dicts, lists, scalars) with secrets masked.

    Everything below a secret-looking key is masked, however deeply nested; a string that is
    one credential becomes MASK; a longer string keeps its text around the masked token.
    """
    if not filter_enabled():
        return _copy(data)
    return _mask(data, key, os.environ.get("WANDB_API_KEY"))


def _mask(data: Any, key: str, api_key: str | None) -> Any:
    if isinstance(data, dict):
        if key and SECRET_KEY.search(key):
            return {k: MASK for k in data}
        return {k: _mask(v, str(k), api_key) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_mask(v, key, api_key) for v in data]
    if _looks_secret(key, data, api_key):
        return MASK
    return _mask_text(data, api_key) if isinstance(data, str) and data else data


def _copy(data: Any) -> Any:
    """The same containers as mask_secrets returns, nothing masked."""
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_copy(v) for v in data]
    return data
