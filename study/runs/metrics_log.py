"""metrics.csv: one row per log event, the run's local metric history. No torch import.

Append-only, each row flushed, so a second terminal or a crash sees every row written so
far. The header holds METRIC_COLUMNS from the first row; a key seen for the first time (a
user metric `eval/NAME`, a stage's `train/loss/STAGE`) adds a column at the end: the file
is rewritten once, atomically, with that column blank in the earlier rows, so no key is
ever dropped. On resume the rows past the checkpoint are dropped first, so the file of a
resumed run equals the file of a run that never stopped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from study.runs.paths import METRICS_CSV

METRIC_COLUMNS = ("step", "epoch", "stage_id", "train/loss", "train/grad_norm", "train/lr",
                  "val/loss", "val/best_loss", "eval/w2", "eval/mmd", "epoch_time_s",
                  "elapsed_s")
# Wall-clock columns differ between two runs of the same computation; the rest do not.
WALL_CLOCK_COLUMNS = ("epoch_time_s", "elapsed_s")
# Columns that are the row's coordinates or local bookkeeping, not tracker metrics.
NOT_REPLAYED = ("step", "epoch", "stage_id", "elapsed_s")
# Row keys stored under another column (the trackers' `metrics/stage_id` is `stage_id`).
NOT_COLUMNS = ("metrics/stage_id",)


class MetricsLog:
    """metrics.csv: one row per log event; METRIC_COLUMNS first, then any other key in the
    order it was first logged."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_CSV
        self._handle = None  # kept open while the run logs; each row is flushed
        self.columns: list[str] | None = None  # the header; None: not read yet

    def truncate_after(self, step: int) -> tuple[int, int]:
        """Drop rows with step > `step` (logged before a crash, about to be recomputed) and
        damaged lines (see read_metrics_checked).

        A file written by an older flowctl gets today's header (new columns empty).
        Returns (the largest step the file held before truncation (-1 if none), the number
        of damaged lines dropped).
        """
        self.close()
        if not self.path.exists():
            return -1, 0
        header, rows, damaged = read_metrics_checked(self.path)
        last_logged = max((int(row["step"]) for row in rows), default=-1)
        kept = [row for row in rows if int(row["step"]) <= step]
        self.columns = [*METRIC_COLUMNS, *(c for c in header if c not in METRIC_COLUMNS)]
        if len(kept) != len(rows) or damaged or list(header) != self.columns:
            self._rewrite(kept)
        return last_logged, damaged

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the file with `rows` under today's header, atomically."""
        from study.runs.checkpoint import write_atomic

        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path, text.getvalue().encode())

    def rows_as_metrics(self, after_step: int, through_step: int) -> list[tuple[int, dict[str, Any]]]:
        """(step, {wandb key: value}) for rows with after_step < step <= through_step."""
        if not self.path.exists():
            return []
        replay = []
        for row in read_metrics(self.path):
            step = int(row["step"])
            if after_step < step <= through_step:
                metrics = {key: float(value) for key, value in row.items()
                           if key not in NOT_REPLAYED and value not in ("", None)}
                metrics["epoch"] = int(row["epoch"])
                metrics["metrics/stage_id"] = int(row["stage_id"])
                replay.append((step, metrics))
        return replay

    def reset(self) -> None:
        self.close()
        self.columns = None
        self.path.unlink(missing_ok=True)

    def append(self, row: dict[str, Any]) -> None:
        """Add one row; a key seen for the first time becomes a new column first."""
        if self.columns is None:
            self.columns = (list(read_header(self.path)) if self.path.exists()
                            else list(METRIC_COLUMNS))
        new = [key for key in row if key not in self.columns and key not in NOT_COLUMNS]
        if new:
            self.close()
            earlier = read_metrics(self.path) if self.path.exists() else []
            self.columns += new
            self._rewrite(earlier)
        if self._handle is None:
            new_file = not self.path.exists()
            self._handle = open(self.path, "a", newline="")  # noqa: SIM115 (closed by close())
            self._writer = csv.DictWriter(self._handle, fieldnames=self.columns,
                                          extrasaction="ignore")
            if new_file:
                self._writer.writeheader()
        self._writer.writerow({key: _cell(row.get(key)) for key in self.columns})
        self._handle.flush()  # a second terminal (or a crash) sees every row written so far

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def read_header(path: Path) -> list[str]:
    """metrics.csv's column names (today's METRIC_COLUMNS for an empty file)."""
    with open(path, newline="") as handle:
        return next(csv.reader(handle), None) or list(METRIC_COLUMNS)


def read_metrics(path: Path) -> list[dict[str, str]]:
    """metrics.csv's rows as {column: text}, damaged lines left out (read_metrics_checked)."""
    return read_metrics_checked(path)[1]


# A metrics row is a dozen numbers; a longer line is damage (csv refuses fields over 128 KiB).
MAX_LINE_BYTES = 64 * 1024
INTEGER_COLUMNS = ("step", "epoch", "stage_id")


def read_metrics_checked(path: Path) -> tuple[list[str], list[dict[str, str]], int]:
    """(header, rows, damaged lines) of a metrics.csv that may be damaged: a line that is not
    UTF-8, longer than MAX_LINE_BYTES, refused by csv, without an integer `step`, or with a
    cell that is not a number (integers for step, epoch, stage_id) is counted and left out;
    every other row is kept. Never raises for the file's content (OSError for the file)."""
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    header = _cells(lines[0]) or []
    rows, damaged = [], 0
    for line in lines[1:]:
        if not line.strip():
            continue
        cells = _cells(line)
        row = dict(zip(header, cells, strict=False)) if cells is not None else None
        if row is None or not _numeric(row):
            damaged += 1
            continue
        rows.append({column: row.get(column, "") for column in header})
    return header, rows, damaged


def _cells(line: bytes) -> list[str] | None:
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        return next(csv.reader([line.decode("utf-8").rstrip("\r")]), [])
    except (UnicodeDecodeError, csv.Error):
        return None


def _numeric(row: dict[str, str]) -> bool:
    """Whether every cell is empty or a number of its column's kind, and step is given."""
    try:
        int(row.get("step") or "x")
        for column, cell in row.items():
            if cell:
                int(cell) if column in INTEGER_COLUMNS else float(cell)
    except ValueError:
        return False
    return True
