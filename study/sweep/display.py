"""What a person watching a sweep sees: a live rich table on a terminal, plain lines elsewhere.

The table (point, state, epoch, loss, best val, ETA) is redrawn from the points' run.json
files; plain mode prints one line per event (started, finished, failed, ...) so a log file
or CI output stays short. No torch.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from study.runs.display import eta_seconds as estimate_eta
from study.runs.display import format_age, printable
from study.sweep.state import PointState

if TYPE_CHECKING:
    from rich.table import Table

STATE_STYLES = {"running": "blue", "finished": "green", "early_stopped": "cyan",
                "failed": "red", "preempted": "yellow", "crashed": "magenta", "pending": "dim",
                "conflict": "bold red"}
MAX_TABLE_ROWS = 30  # above this, the live table shows the active and failed points only


def eta_seconds(state: PointState) -> float | None:
    """Time left from run.json: seconds per completed epoch times the epochs left."""
    run = state.run
    if state.state != "running" or run is None:
        return None
    return estimate_eta(epochs_done=run.epoch, elapsed_s=run.elapsed_s,
                        total_epochs=run.total_epochs or state.point.config.epochs)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def shown_text(value: str):
    """A cell holding data from files: a rich Text (never parsed as markup), controls shown
    as `?` (study.runs.display.printable)."""
    from rich.text import Text

    return Text(printable(str(value)))


def render_table(states: list[PointState], title: str) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for column in ("point", "state", "epoch", "loss", "best val", "ETA"):
        table.add_column(column, justify="left" if column in ("point", "state") else "right")
    shown = states
    if len(states) > MAX_TABLE_ROWS:
        shown = [s for s in states if s.state in ("running", "failed")][:MAX_TABLE_ROWS]
    for state in shown:
        run = state.run
        epoch = f"{run.epoch or 0}/{run.total_epochs or state.point.config.epochs}" if run else ""
        eta = eta_seconds(state)
        style = STATE_STYLES.get(state.state, "")
        table.add_row(shown_text(state.point.name), Text(state.state, style=style),
                      epoch, _number(run.train_loss if run else None),
                      _number(run.best_val_loss if run else None),
                      format_age(eta) if eta is not None else "")
    return table


class SweepDisplay:
    """`event()` for things that happen, `refresh()` for the live table; `close()` at the end."""

    def __init__(self, *, plain: bool = False, title: str = "sweep"):
        self.interactive = sys.stdout.isatty() and not plain
        self.title = title
        self._live = None

    def start(self) -> None:
        if self.interactive:
            from rich.live import Live

            self._live = Live(refresh_per_second=2, transient=False)
            self._live.start()

    def event(self, text: str) -> None:
        if self._live is not None:
            from rich.text import Text

            # A Text, not markup=False: print's options would also reach the live table.
            self._live.console.print(Text(printable(text)))
        else:
            print(printable(text), flush=True)

    def refresh(self, states: list[PointState], summary: str) -> None:
        if self._live is not None:
            self._live.update(render_table(states, f"{self.title}: {summary}"))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


STATUS_COLUMNS = ("point", "state", "epoch", "best val", "eval w2", "eval mmd", "error / detail")
RIGHT_ALIGNED = {2, 3, 4, 5}


def status_lines(states: list[PointState], title: str) -> list[str]:
    """`flowctl sweep status` as plain aligned lines: state, progress, best val loss, eval
    W2/MMD, then the error or detail, never cut (the last column is not padded). Laid out by
    hand: a rich Table measures every cell (25 s for a 10,000-point grid; this takes ~30 ms)."""
    rows = []
    for state in states:
        run, evaluation = state.run, state.eval or {}
        epoch = f"{run.epoch or 0}/{run.total_epochs or state.point.config.epochs}" if run else ""
        rows.append((printable(state.point.name), state.state, epoch,
                     _number(run.best_val_loss if run else None), _number(evaluation.get("w2")),
                     _number(evaluation.get("mmd")), printable(state.error or state.detail or "")))
    widths = [max(len(header), *(len(row[i]) for row in rows)) if rows else len(header)
              for i, header in enumerate(STATUS_COLUMNS)]

    def line(cells) -> str:
        padded = [cell.rjust(width) if i in RIGHT_ALIGNED else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(cells[:-1], widths, strict=False))]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return [title, line(STATUS_COLUMNS), "  ".join("-" * width for width in widths),
            *(line(row) for row in rows)]
