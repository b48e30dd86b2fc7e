"""How run facts read for people: ages and sizes. No torch import."""

from __future__ import annotations


def format_age(seconds: float) -> str:
    """A duration as the largest whole unit: 12s, 5m, 3h, 2d."""
    seconds = max(0, int(seconds))
    for unit, width in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= width:
            return f"{seconds // width}{unit}"
    return f"{seconds}s"


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
