"""How run facts read for people: ages, sizes, and text from files made safe to print.
No torch import."""

from __future__ import annotations

import re

# What a terminal would obey rather than show: C0 controls (ESC starts colour, screen-clear
# and window-title sequences; CR, BS and BEL rewrite or ring), DEL and the C1 controls (CSI
# U+009B is an escape sequence by itself), the line and paragraph separators, and the bidi
# overrides and isolates that reorder what follows them.
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every control character (UNPRINTABLE) shown as `?`, one for one, so column
    widths stay true. Every command that prints data from a file (run.json, eval.json,
    metrics.csv, a checkpoint) passes it through this first."""
    return UNPRINTABLE.sub("?", text) if isinstance(text, str) else text


def format_age(seconds: float) -> str:
    """A duration as the largest whole unit: 12s, 5m, 3h, 2d."""
    seconds = max(0, int(seconds))
    for unit, width in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= width:
            return f"{seconds // width}{unit}"
    return f"{seconds}s"


def eta_seconds(*, epochs_done: int | None, total_epochs: int | None, elapsed_s: float | None,
                age_s: float = 0.0) -> float | None:
    """Seconds left for a run at its mean pace per completed epoch; None before the first
    epoch is complete. `epochs_done` is run.json's `epoch` (the trainer writes the number of
    completed epochs); `age_s`: how long ago run.json (its `elapsed_s`) was written."""
    if not epochs_done or epochs_done < 1 or not total_epochs or not elapsed_s:
        return None
    left = elapsed_s / epochs_done * max(0, total_epochs - epochs_done) - (age_s or 0.0)
    return max(0.0, left)


def format_size(size_bytes: int) -> str:
    """Decimal units as `du --si` and most file browsers show them: 532 B, 1.2 MB, 3.0 GB."""
    if size_bytes < 1000:
        return f"{size_bytes} B"
    value = float(size_bytes)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 999.95 or unit == "PB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def printable_tree(value, depth: int = 0):
    """A copy of `value` (dicts, lists, strings, scalars: a summary read from a file) with
    every string and key passed through `printable`. Containers nested deeper than 64 levels
    are shown as "..." (the readers refuse deeper files; this bounds the walk anyway)."""
    if depth > 64:
        return "..."
    if isinstance(value, dict):
        return {printable(key) if isinstance(key, str) else key: printable_tree(item, depth + 1)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_tree(item, depth + 1) for item in value]
    return printable(value) if isinstance(value, str) else value
