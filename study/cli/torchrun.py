"""`flowctl train --nproc N`: run the same command under torchrun, one process per rank.

flowctl starts `python -m torch.distributed.run --standalone` in a session of its own, so a
Ctrl-C in the terminal reaches the workers once (through flowctl and torchrun's agent), not
twice (a second signal means "stop now"). The agent forwards SIGTERM, SIGINT, SIGUSR1 and
SIGUSR2 to the workers (`--signals-to-handle`; by default a SIGUSR1 would kill the agent
and orphan them) and gives them `--shutdown-timeout` seconds to save. Only rank 0's output
is shown (FLOWCTL_DEBUG=1: every rank's, and torchrun's own lines). The exit code is rank
0's own (0 finished, 2 bad input, 1 failed, 128 + signal stopped), which it leaves in a file
for the launcher (`exit_code_recorded`), unless another rank failed and took rank 0 down
with it (the agent stopped or killed it, or its collective failed): then exit 1, with a line
naming that rank, read from torchrun's failure report.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from study.install import child_env
from study.runtime.cores import cpu_share
from study.signals import ended_by, killed_by

EXIT_FILE_ENV = "FLOWCTL_EXIT_FILE"  # where rank 0 leaves its exit code for the launcher
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
SHUTDOWN_TIMEOUT_S = 120  # a checkpoint write of a large model takes seconds, not minutes
# torchrun's own lines: its logging prefix (W1129 13:45:00.123 ...) and its error report.
AGENT_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|^\*{5}|^Setting OMP_NUM_THREADS")
REPORT_FIELD = re.compile(r"^\s*(rank|exitcode)\s*:\s*(-?\d+)")  # "  rank      : 1 (local_rank: 1)"
LAUNCHER_OPTIONS = ("nproc", "max_restarts")  # read by flowctl itself, not by the workers


def worker_args(ctx) -> list[str]:
    """The options of the current command as `flowctl train` arguments for the workers:
    every option given a non-default value, minus the launcher's own."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name != "option" or param.name in LAUNCHER_OPTIONS:
            continue
        if value is None or value == param.default or (param.multiple and not value):
            continue
        if param.multiple:  # a repeatable option: once per value
            args += [item for each in value for item in (param.opts[0], str(each))]
        elif param.is_flag:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args


def torchrun_command(args: list[str], *, nproc: int, max_restarts: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
            "--signals-to-handle=" + ",".join(sig.name for sig in FORWARDED),
            f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
            *([] if os.environ.get("FLOWCTL_DEBUG") else ["--local-ranks-filter=0"]),
            "-m", "study.cli.app", "train", *args]


def run_under_torchrun(args: list[str], *, nproc: int, max_restarts: int) -> int:
    """Run `python -m study.cli.app train ARGS` on `nproc` ranks; returns the exit code."""
    env = child_env()
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_share() // nproc)))
    exit_file = Path(tempfile.mkdtemp(prefix="flowctl-exit-")) / "rank0"
    env[EXIT_FILE_ENV] = str(exit_file)
    agent = subprocess.Popen(torchrun_command(args, nproc=nproc, max_restarts=max_restarts),
                             env=env, stderr=subprocess.PIPE, text=True, bufsize=1,
                             start_new_session=True)
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        agent.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        report = _pass_through(agent.stderr)
        agent.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        return exit_code_of(agent.returncode, exit_file, received, report)
    finally:
        shutil.rmtree(exit_file.parent, ignore_errors=True)


def _pass_through(stream) -> list[str]:
    """Copy rank 0's lines to stderr; drop the agent's log lines and its failure report,
    which it returns."""
    in_report, report = False, []
    for line in stream:
        if line.startswith("Traceback") or "ChildFailedError" in line or line.startswith("===="):
            in_report = True
        if in_report:
            report.append(line)
        if in_report or AGENT_LINE.match(line):
            if os.environ.get("FLOWCTL_DEBUG"):
                sys.stderr.write(line)
            continue
        sys.stderr.write(line)
    return report


def _rank_failures(report: list[str]) -> dict[int, int]:
    """{rank: exit code} of the failed workers listed in torchrun's failure report."""
    failures: dict[int, int] = {}
    rank = None
    for line in report:
        match = REPORT_FIELD.match(line)
        if match and match[1] == "rank":
            rank = int(match[2])
        elif match and rank is not None:
            failures.setdefault(rank, int(match[2]))
    return failures


def _is_a_stop(code: int) -> bool:
    """A rank that left because it was asked to stop (by a signal flowctl forwards)."""
    return any(ended_by(code, sig) for sig in FORWARDED)




@contextlib.contextmanager
def exit_code_recorded() -> Iterator[None]:
    """In a worker started by `run_under_torchrun`: rank 0 writes the exit code it leaves
    with (2 bad input, 1 failed, 143/130/138 stopped) where the launcher reads it."""
    path = os.environ.get(EXIT_FILE_ENV)
    if not path or os.environ.get("RANK", "0") != "0":
        yield
        return
    code = 1
    try:
        yield
        code = 0
    except SystemExit as done:  # typer.Exit is raised as click's Exit, a SystemExit here or not
        code = done.code if isinstance(done.code, int) else 1
        raise
    except BaseException as exit_:
        code = getattr(exit_, "exit_code", 1)
        raise
    finally:
        with contextlib.suppress(OSError):
            Path(path).write_text(str(code))


def exit_code_of(returncode: int, exit_file: Path, received: list[int], report: list[str]) -> int:
    """Rank 0's exit code, or 1 when another rank failed first and took rank 0 down with it
    (the agent stopped or killed it, or its collective failed); else what the signal implies."""
    if returncode == 0:
        return 0
    try:
        recorded = int(exit_file.read_text())
    except (OSError, ValueError):
        recorded = None
    others = {r: code for r, code in _rank_failures(report).items() if r and not _is_a_stop(code)}
    rank, code = min(others.items(), key=lambda item: (item[1] >= 0, item[0]), default=(0, 0))
    if rank and (recorded is None  # the agent killed rank 0
                 or (_is_a_stop(recorded) and not received)  # the agent stopped it, not flowctl
                 or (recorded == 1 and code != 1)):  # its collective failed: the other end went
        how = killed_by(code) if code < 0 else f"exit code {code}"
        print(f"error: rank {rank} failed ({how}), which ended the run; "
              "FLOWCTL_DEBUG=1 shows every rank's output", file=sys.stderr)
        return 1
    if recorded is not None:
        return recorded
    return 128 + received[0] if received else 1
