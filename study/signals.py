"""Graceful stop on SIGTERM / SIGINT (what SLURM, Kubernetes and Ctrl-C send).

The handler only sets a flag; the training loop checks it after each optimizer step,
writes last.pt, marks the run `preempted` and raises TrainingStopped, which the CLI turns
into exit code 128 + signal (143 for SIGTERM, 130 for SIGINT). Nothing is saved inside the
handler. A second signal while stopping restores the default action and re-sends itself,
so a second Ctrl-C exits at once.
"""

from __future__ import annotations

import os
import signal
import threading


class TrainingStopped(Exception):
    """Raised by the loop after a graceful stop; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; last.pt is saved, "
                         "continue with `flowctl resume`")


class GracefulStop:
    """`with stop:` handles SIGTERM, SIGINT (and `extra_signals`) inside the block; the loop
    polls `requested`. The previous handlers are put back on leaving it."""

    def __init__(self, extra_signals: tuple[int, ...] = ()):
        self.signals = (signal.SIGTERM, signal.SIGINT, *extra_signals)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __enter__(self) -> GracefulStop:
        self.install()
        return self

    def __exit__(self, *exc_info) -> None:
        self.uninstall()


def parse_signal(name: str | None) -> tuple[int, ...]:
    """`SIGUSR1` or `USR1` -> (signal.SIGUSR1,); None -> ()."""
    if not name:
        return ()
    from study.errors import UsageError

    key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
    if not hasattr(signal, key) or key in ("SIGKILL", "SIGSTOP"):
        raise UsageError(f"unknown or uncatchable signal {name!r}; try SIGUSR1")
    return (getattr(signal, key),)


def ended_by(code: int, sig: int) -> bool:
    """Whether a child's exit `code` came from `sig`: killed by it (-sig, as subprocess
    reports it) or stopped gracefully by it (128 + sig, flowctl's own exit code)."""
    return code in (-sig, 128 + sig)


def killed_by(code: int) -> str:
    """'killed by SIGKILL' for a negative exit `code` (a child ended by a signal)."""
    number = -code
    return f"killed by {signal.Signals(number).name}" if number in signal.valid_signals() \
        else f"killed by signal {number}"
