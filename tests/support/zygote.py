"""The zygote: real `flowctl` processes started in milliseconds.

A "zygote" is one Python process that has already imported torch, POT and the CLI and forks
a fresh child per command: its own pid, process group, stdio files and environment (nothing
has run in the zygote but imports), so SIGKILL, SIGTERM and SIGINT reach it exactly as they
reach a freshly started `flowctl`, but a start costs milliseconds instead of the ~8 s of
`import torch, ot`. `FreshProcesses` has the same interface with a new interpreter per command.

Used by tests/faults (the `zygote` and `flowctl` fixtures) and by scripts/fault_soak.py.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def serve() -> None:
    """Zygote side: read JSON requests on stdin, answer one JSON line each on stdout.

    {"op": "run", "argv": [...], "env": {...}, "cwd": ..., "stdout": path, "stderr": path,
     "setup": "module:function" (optional), "setup_args": {...}} -> {"pid": pid}
    {"op": "poll", "pid": pid} -> {"returncode": None | int (negative: killed by signal)}
    """
    import ot  # noqa: F401  the slow imports every child would otherwise repeat
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (imported lazily by the first optimizer step)

    import study.cli.app  # noqa: F401
    import study.data.dataset  # noqa: F401
    import study.flow_matching.launch  # noqa: F401
    import study.flow_matching.trainer  # noqa: F401

    reaped: dict[int, int] = {}
    _reply({"ready": os.getpid()})
    while True:
        line = sys.stdin.readline()
        if not line:
            return  # the parent is gone: so are we
        request = json.loads(line)
        if request["op"] == "run":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)  # never returns
            _reply({"pid": pid})
        elif request["op"] == "poll":
            pid = request["pid"]
            if pid not in reaped:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    reaped[pid] = os.waitstatus_to_exitcode(status)
            _reply({"returncode": reaped.get(pid)})


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _child(request: dict) -> None:
    """In the forked child: become a fresh `flowctl ARGV` process, then exit with its code."""
    code = 1
    try:
        os.setpgid(0, 0)  # its own process group, like a job started by a shell
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["flowctl", *request["argv"]]
        if request.get("setup"):
            import importlib

            module, function = request["setup"].split(":")
            getattr(importlib.import_module(module), function)(**request.get("setup_args", {}))
        from study.cli.app import app

        try:
            app(args=request["argv"], prog_name="flowctl")
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except KeyboardInterrupt:
            # What the interpreter does with an uncaught KeyboardInterrupt: die by SIGINT.
            traceback.print_exc()
            _flush_and_run_atexit()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    _flush_and_run_atexit()
    os._exit(code)


def _flush_and_run_atexit() -> None:
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()  # what a normal interpreter exit runs (wandb's teardown, ...)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


class Child:
    """A forked `flowctl` process, with the part of subprocess.Popen's interface we use."""

    def __init__(self, zygote: Zygote, pid: int, stdout_path: Path, stderr_path: Path):
        self.zygote, self.pid = zygote, pid
        self.stdout_path, self.stderr_path = stdout_path, stderr_path
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.ask(op="poll", pid=self.pid)["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"flowctl (pid {self.pid})", timeout)
            time.sleep(0.005)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # never signal a pid that has been reaped (and may be reused)
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout, self.stderr

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


class Zygote:
    """Parent side: start the zygote once, then `run(...)` forks a flowctl child per call."""

    def __init__(self, log_dir: Path, env: dict | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from tests.support.zygote import serve; serve()"],
            cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.ask()["ready"]

    def ask(self, **request) -> dict:
        if request:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited ({self.process.wait()})")
        return json.loads(line)

    def run(self, *argv, env: dict | None = None, setup: str | None = None,
            setup_args: dict | None = None) -> Child:
        """Fork `flowctl ARGV` with `env` (default: this process's environment).

        WANDB_SERVICE is dropped: wandb puts it in the environment of a process that started
        wandb-core (a test worker, say) so that its children share that service; a `flowctl`
        started from a shell has its own.
        """
        env = {k: v for k, v in (env or os.environ).items() if k != "WANDB_SERVICE"}
        index = len(self.children)
        stdout, stderr = self.log_dir / f"{index:04d}.out", self.log_dir / f"{index:04d}.err"
        pid = self.ask(op="run", argv=[str(a) for a in argv], env=env,
                       cwd=str(REPO_ROOT), stdout=str(stdout), stderr=str(stderr),
                       setup=setup, setup_args=setup_args or {})["pid"]
        child = Child(self, pid, stdout, stderr)
        self.children.append(child)
        return child

    def kill_children(self) -> None:
        """SIGKILL any child still running (only processes this zygote started)."""
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                if child.poll() is None:
                    child.kill()
                    child.wait(30)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.kill_children()
        with contextlib.suppress(Exception):
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class FreshChild(Child):
    """A `flowctl` started as a brand-new interpreter (subprocess.Popen)."""

    def __init__(self, process: subprocess.Popen, stdout_path: Path, stderr_path: Path):
        self.process, self.pid = process, process.pid
        self.stdout_path, self.stderr_path = stdout_path, stderr_path
        self.returncode = None

    def poll(self) -> int | None:
        self.returncode = self.process.poll()
        return self.returncode


class FreshProcesses(Zygote):
    """Zygote's interface, but every command is a fresh `python -m study.cli.app` (each pays
    the ~8 s of imports): the soak's `--fresh` check that forking hides nothing."""

    def __init__(self, log_dir: Path, env: dict | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children = []

    def run(self, *argv, env: dict | None = None, setup: str | None = None,
            setup_args: dict | None = None) -> Child:
        if setup is not None:
            raise ValueError("setup hooks need the zygote")
        index = len(self.children)
        stdout, stderr = self.log_dir / f"{index:04d}.out", self.log_dir / f"{index:04d}.err"
        with open(stdout, "w") as out, open(stderr, "w") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "study.cli.app", *map(str, argv)], cwd=REPO_ROOT,
                env={k: v for k, v in (env or os.environ).items() if k != "WANDB_SERVICE"},
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        child = FreshChild(process, stdout, stderr)
        self.children.append(child)
        return child

    def close(self) -> None:
        self.kill_children()
