"""`flowctl train --nproc N`: run the same command under torchrun, one process per rank.

flowctl starts `python -m torch.distributed.run --standalone` in a session of its own, so a
Ctrl-C in the terminal reaches the workers once (through flowctl and torchrun's agent), not
twice (a second signal means "stop now"). The agent forwards SIGTERM, SIGINT, SIGUSR1 and
SIGUSR2 to the workers (`--signals-to-handle`; by default a SIGUSR1 would kill the agent
and orphan them) and gives them `--shutdown-timeout` seconds to save. Only rank 0's output
is shown. The exit code is the run's: 0 finished, 1 failed, 128 + signal preempted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
SHUTDOWN_TIMEOUT_S = 120  # a checkpoint write of a large model takes seconds, not minutes
# torchrun's own lines: its logging prefix (W1129 13:45:00.123 ...) and its error report.
AGENT_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|^\*{5}|^Setting OMP_NUM_THREADS")
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
            f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}", "--local-ranks-filter=0",
            "-m", "study.flow_matching.train", *args]


def run_under_torchrun(args: list[str], *, nproc: int, max_restarts: int,
                       run_folder: Path) -> int:
    """Run `python -m study.flow_matching.train ARGS` on `nproc` ranks; returns the exit code."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    agent = subprocess.Popen(torchrun_command(args, nproc=nproc, max_restarts=max_restarts),
                             env=env, stderr=subprocess.PIPE, text=True, bufsize=1,
                             start_new_session=True)
    received: list[int] = []
    started = time.time()

    def forward(signum, frame) -> None:
        received.append(signum)
        agent.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        _pass_through(agent.stderr)
        agent.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _exit_code(agent.returncode, run_folder, received, started)


def _pass_through(stream) -> None:
    """Copy rank 0's lines to stderr; drop the agent's log lines and its failure report."""
    in_report = False
    for line in stream:
        if line.startswith("Traceback") or "ChildFailedError" in line or line.startswith("===="):
            in_report = True
        if in_report or AGENT_LINE.match(line):
            if os.environ.get("FLOWCTL_DEBUG"):
                sys.stderr.write(line)
            continue
        sys.stderr.write(line)


def _exit_code(returncode: int, run_folder: Path, received: list[int], started: float) -> int:
    from study.runs.paths import RUN_JSON
    from study.runs.status import parse_time, read_run

    if returncode == 0:
        return 0
    run = read_run(run_folder)
    if (parse_time(run.updated_at) or 0) < started:  # the workers stopped before training
        return 128 + received[0] if received else 2
    status = run.status
    if status == "preempted":  # the workers' own code: 143, 130, or 138 for a requeue signal
        saved = json.loads((run_folder / RUN_JSON).read_text()).get("exit_code")
        return saved if isinstance(saved, int) else 128 + (received[0] if received else signal.SIGTERM)
    return 0 if status in ("finished", "early_stopped") else 1
