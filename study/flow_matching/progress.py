"""What a person watching the terminal sees: a rich progress bar, or plain lines in logs.

The trainer calls `update` only at log steps (every `log_every` optimizer steps), so the
display costs nothing in the hot loop. `SilentProgress` is the default for library use.
"""

from __future__ import annotations

import sys
import time


class SilentProgress:
    def start(self, *, total_steps: int, initial_step: int, run_name: str) -> None: ...

    def update(self, *, step: int, epoch: int, total_epochs: int, loss: float | None,
               val_loss: float | None = None) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


class ConsoleProgress(SilentProgress):
    """Rich bar on a terminal; otherwise one plain line at most every `interval_s` seconds."""

    def __init__(self, *, interval_s: float = 5.0, force_plain: bool = False):
        self.interactive = sys.stdout.isatty() and not force_plain
        self.interval_s = interval_s
        self._bar = None
        self._task = None
        self._last_line = 0.0
        self._start_time = 0.0
        self._initial_step = 0
        self._total_steps = 0

    def start(self, *, total_steps: int, initial_step: int, run_name: str) -> None:
        self._start_time = time.perf_counter()
        self._initial_step, self._total_steps = initial_step, total_steps
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task(run_name, total=total_steps, completed=initial_step,
                                            status="")
        else:
            print(f"training {run_name}: step {initial_step}/{total_steps}", flush=True)

    def update(self, *, step: int, epoch: int, total_epochs: int, loss: float | None,
               val_loss: float | None = None) -> None:
        elapsed = time.perf_counter() - self._start_time
        rate = (step - self._initial_step) / elapsed if elapsed > 0 else 0.0
        parts = [f"epoch {epoch + 1}/{total_epochs}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if val_loss is not None:
            parts.append(f"val {val_loss:.4f}")
        parts.append(f"{rate:,.0f} steps/s")
        status = "  ".join(parts)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, status=status)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval_s or val_loss is not None:
            self._last_line = now
            remaining = (self._total_steps - step) / rate if rate > 0 else float("nan")
            print(f"step {step}/{self._total_steps}  {status}  eta {remaining:.0f}s", flush=True)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
