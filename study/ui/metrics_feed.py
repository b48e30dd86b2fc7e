"""metrics.csv for a live page: parsed once, then only the bytes appended since the last read.

A page polls every 2 s; a long run's file holds 100,000 rows, so re-reading it all per poll
would cost the server far more than the new rows are worth. Each file keeps its parsed rows
and the byte offset reached. The file is re-read from the start when it is replaced or cut
(a resume drops the rows past its checkpoint; `--overwrite` starts a new file): detected by
a new inode, a smaller size, or a changed first line block. Only complete lines are taken,
so a row being written is picked up at the next poll, never half. Rows are kept as JSON
text, encoded once: answering 100,000 rows is then a join, not 100,000 json.dumps calls.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any

INTEGER_COLUMNS = ("step", "epoch", "stage_id")
# Bytes compared at every read to notice a file rewritten in place under the same inode.
PREFIX_BYTES = 256
# A metrics row is a few dozen numbers; a longer line is damage (csv refuses fields over 128 KiB).
MAX_LINE = 64 * 1024


@dataclass
class ParsedFile:
    """One metrics.csv as far as it has been read."""

    inode: int
    prefix: bytes = b""
    offset: int = 0
    columns: list[str] = field(default_factory=list)
    rows: list[bytes] = field(default_factory=list)  # each row as a JSON object
    steps: list[int] = field(default_factory=list)  # rows' steps, non-decreasing, for bisect


class MetricsFeed:
    """Thread-safe cache of parsed metrics.csv files, keyed by path."""

    def __init__(self) -> None:
        self._files: dict[str, ParsedFile] = {}
        self._lock = threading.Lock()

    def rows_after(self, path: str, since: int) -> tuple[list[str], list[bytes], int]:
        """(columns, rows with step > since as JSON objects, largest step in the file or -1).

        A row is an object of the file's columns; empty cells are left out, numbers are int
        (step, epoch, stage_id) or float, and a non-finite float becomes null.
        A missing file gives ([], [], -1).
        """
        with self._lock:
            parsed = self._refresh(path)
            if parsed is None:
                return [], [], -1
            start = bisect.bisect_right(parsed.steps, since)
            last_step = parsed.steps[-1] if parsed.steps else -1
            return list(parsed.columns), parsed.rows[start:], last_step

    def _refresh(self, path: str) -> ParsedFile | None:
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                parsed = self._files.get(path)
                if parsed is None or self._replaced(parsed, handle, stat):
                    parsed = ParsedFile(inode=stat.st_ino)
                    self._files[path] = parsed
                if stat.st_size > parsed.offset:
                    handle.seek(parsed.offset)
                    self._consume(parsed, handle.read(stat.st_size - parsed.offset))
        except FileNotFoundError:
            self._files.pop(path, None)
            return None
        except OSError:
            return self._files.get(path)  # unreadable for a moment: what we had
        return parsed

    @staticmethod
    def _replaced(parsed: ParsedFile, handle, stat: os.stat_result) -> bool:
        if stat.st_ino != parsed.inode or stat.st_size < parsed.offset:
            return True
        handle.seek(0)
        return handle.read(len(parsed.prefix)) != parsed.prefix

    @staticmethod
    def _consume(parsed: ParsedFile, chunk: bytes) -> None:
        end = chunk.rfind(b"\n")
        if end < 0:
            return  # no complete line yet
        complete = chunk[:end + 1]
        if parsed.offset < PREFIX_BYTES:
            parsed.prefix = (parsed.prefix + complete)[:PREFIX_BYTES]
        parsed.offset += end + 1
        lines = complete.decode("utf-8", errors="replace").splitlines()
        if not parsed.columns and lines:
            parsed.columns = split_line(lines.pop(0)) or []
        for line in lines:
            cells = split_line(line)
            row = parse_row(parsed.columns, cells) if cells is not None else None
            if row is None:  # a damaged line costs itself, never the rows after it
                continue
            if parsed.steps and row["step"] < parsed.steps[-1]:
                continue  # out of order: keep the steps sorted for bisect
            parsed.rows.append(json.dumps(row, separators=(",", ":")).encode())
            parsed.steps.append(row["step"])


def split_line(line: str) -> list[str] | None:
    """One metrics.csv line -> its cells; None for a line no metrics row can be (longer than
    MAX_LINE characters: csv's own field limit would raise on it) or that csv refuses."""
    if len(line) > MAX_LINE:
        return None
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return None


def parse_row(columns: list[str], cells: list[str]) -> dict[str, Any] | None:
    """One CSV row -> {column: number}; None if it has no integer step (a damaged line)."""
    row: dict[str, Any] = {}
    for column, cell in zip(columns, cells, strict=False):
        if cell == "":
            continue
        try:
            if column in INTEGER_COLUMNS:
                row[column] = int(cell)
            else:
                value = float(cell)
                row[column] = value if math.isfinite(value) else None
        except ValueError:
            continue
    return row if isinstance(row.get("step"), int) else None
