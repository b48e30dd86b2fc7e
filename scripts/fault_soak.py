"""Kill a real training process at random moments, resume it, and check nothing was lost.

Each round starts `flowctl train` (later `flowctl resume`) as a real child process with
`--save-every 1` (a checkpoint write is almost always in progress), sends SIGKILL after a
random delay drawn from a seeded `random.Random`, and then checks that every .pt in the run
folder loads with `torch.load(weights_only=True)` and that the killed process's temp files
are gone once the next process has started. After the last kill the run is resumed to the
end and compared with an uninterrupted reference run: weights, EMA and optimizer state
bitwise, best.pt, and metrics.csv row for row.

The children are forked from a "zygote": one Python process that has already imported torch,
POT and the CLI and forks a fresh child per command (its own pid, process group, stdio
files and environment; nothing has run in the zygote but imports). That makes a restart
cost milliseconds instead of the ~8 s of `import torch, ot`, which is what lets 100 kills
run in minutes. tests/faults uses the same machinery (`Zygote`, `kill_resume_loop`).

Usage: python scripts/fault_soak.py --kills 100 [--seed 0] [--config icfm|otcfm] [--save-every 1]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The tests' TINY flags: 640 rows at batch 64 -> 9 steps per epoch.
TINY = ["--batch-size", "64", "--width", "16", "--depth", "2", "--warmup-steps", "5",
        "--wandb-mode", "disabled", "--plain"]
TEMP_MARK = ".tmp-"


# -- the zygote: a pre-imported interpreter that forks one child per command ---------------
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
            [sys.executable, "-c", "from scripts.fault_soak import serve; serve()"],
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


# -- the kill / resume loop -------------------------------------------------------------------
@dataclass
class LoopReport:
    kills: int = 0
    resumes: int = 0
    restarts: int = 0  # `train` again: the kill came before the first checkpoint existed
    kills_before_first_save: int = 0  # killed during start-up, before writing anything
    temps_left_by_kills: int = 0  # kills that left a .*.tmp-PID file (killed mid-write)
    temps_not_removed: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    steps_at_kill: list[int] = field(default_factory=list)
    final_returncode: int | None = None
    final_stderr: str = ""


def checkpoint_problems(run: Path) -> list[str]:
    """Every .pt in `run` that does not load with weights_only=True (or is incomplete)."""
    import torch

    problems = []
    for path in sorted(run.glob("*.pt")):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or "model_state_dict" not in payload:
                problems.append(f"{path.name}: not a checkpoint dict")
        except Exception as err:  # any failure to load is what we are counting
            problems.append(f"{path.name}: {type(err).__name__}: {str(err)[:200]}")
    return problems


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _temps_of(run: Path, pid: int) -> list[Path]:
    return sorted(run.glob(f".*{TEMP_MARK}{pid}")) if run.is_dir() else []


def _wait_until(condition, child: Child, timeout: float) -> bool:
    """Poll until `condition()`; False if the child exited first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {child.pid} made no progress in {timeout:.0f} s")
        time.sleep(0.002)
    return True


def kill_resume_loop(zygote: Zygote, run: Path, train_argv: list[str], *, kills: int,
                     rng: random.Random, env: dict | None = None, max_delay_s: float = 0.25,
                     early_kill_share: float = 0.2, timeout: float = 120.0) -> LoopReport:
    """Start `flowctl TRAIN_ARGV` (which must write to `run`), SIGKILL it `kills` times at
    random moments, resuming with `flowctl resume RUN` each time, then resume to the end.

    Most kills wait for the segment's first own checkpoint write (last.pt gets a new inode)
    and then a random `uniform(0, max_delay_s)`; a share `early_kill_share` are sent at a
    random moment of start-up instead (reading the checkpoint, taking the lock, ...).
    After every kill each .pt must load; once the next segment has written a checkpoint, the
    killed pid's temp files must be gone.
    """
    report = LoopReport()
    last = run / "last.pt"
    argv = list(train_argv)
    pending_temps: list[Path] = []  # left by killed writers; the next start removes them
    while report.kills < kills:
        child = zygote.run(*argv, env=env)
        early = rng.random() < early_kill_share
        delay = rng.uniform(0, max_delay_s)
        before = _inode(last)
        if early:
            time.sleep(delay)
        else:
            wrote = _wait_until(lambda before=before: _inode(last) not in (None, before),
                                child, timeout)
            if wrote:  # this segment has started properly: earlier temp files must be gone
                report.temps_not_removed += [str(p) for p in pending_temps if p.exists()]
                pending_temps = []
            else:
                break  # finished before its first save: the run is too short for more kills
            time.sleep(delay)
        if child.poll() is not None:
            break  # it finished within the delay: nothing left to kill
        child.kill()
        code = child.wait(timeout)
        if code == 0:
            break  # it finished just before the signal landed
        if code != -signal.SIGKILL:
            raise RuntimeError(f"pid {child.pid} ended with {code}, not by SIGKILL: {child.stderr}")
        report.kills += 1
        report.kills_before_first_save += _inode(last) == before
        left = _temps_of(run, child.pid)
        report.temps_left_by_kills += bool(left)
        pending_temps += left
        report.corrupted += [f"after kill {report.kills}: {p}" for p in checkpoint_problems(run)]
        if last.exists():
            with contextlib.suppress(Exception):
                import torch

                report.steps_at_kill.append(int(torch.load(last, weights_only=True)["global_step"]))
        has_checkpoint = last.exists() or (run / "best.pt").exists()
        if has_checkpoint:
            argv = ["resume", str(run), *_resume_flags(train_argv)]
            report.resumes += 1
        else:
            argv = list(train_argv)
            report.restarts += 1
    final = zygote.run(*(argv if argv[0] == "resume" else train_argv), env=env)
    report.final_returncode = final.wait(timeout)
    report.final_stderr = final.stderr
    if pending_temps:
        report.temps_not_removed += [str(p) for p in pending_temps if p.exists()]
    report.corrupted += [f"at the end: {p}" for p in checkpoint_problems(run)]
    return report


def _resume_flags(train_argv: list[str]) -> list[str]:
    """Flags that are not part of the run's config and must be repeated on resume."""
    flags = []
    for name in ("--wandb-mode", "--ckpt-dir"):
        if name in train_argv:
            flags += [name, train_argv[train_argv.index(name) + 1]]
    return flags + (["--plain"] if "--plain" in train_argv else [])


def state_differences(reference: dict, resumed: dict) -> list[str]:
    """Where two checkpoints' step, weights, EMA or optimizer state differ (bitwise)."""
    import torch

    if reference.get("global_step") != resumed.get("global_step"):
        return [f"global_step {reference.get('global_step')} vs {resumed.get('global_step')}"]
    differences = []
    for key in ("model_state_dict", "ema_shadow"):
        for name, tensor in reference[key].items():
            if not torch.equal(tensor, resumed[key][name]):
                differences.append(f"{key}[{name}]")
    opt_a, opt_b = reference["optimizer_state_dict"], resumed["optimizer_state_dict"]
    if opt_a["param_groups"] != opt_b["param_groups"]:
        differences.append("optimizer param_groups")
    for index, state in opt_a["state"].items():
        for name, tensor in state.items():
            if not torch.equal(tensor, opt_b["state"][index][name]):
                differences.append(f"optimizer state {index}.{name}")
    return differences


def metrics_without_clock(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(handle)]


def run_differences(reference: Path, resumed: Path) -> list[str]:
    """What differs between the reference run folder and the killed-and-resumed one."""
    import torch

    differences = []
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(folder / name, weights_only=True) for folder in (reference, resumed))
        differences += [f"{name}: {d}" for d in state_differences(a, b)]
    if metrics_without_clock(reference) != metrics_without_clock(resumed):
        differences.append("metrics.csv rows differ")
    return differences


# -- the command ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs in total")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--config", choices=("icfm", "otcfm"), default="icfm", help="--flow")
    parser.add_argument("--save-every", type=int, default=1)
    parser.add_argument("--kills-per-run", type=int, default=10,
                        help="kills before a run is resumed to the end and compared")
    parser.add_argument("--epochs", type=int, default=40, help="9 steps each")
    parser.add_argument("--max-delay", type=float, default=0.25, help="seconds after a save")
    parser.add_argument("--fresh", action="store_true",
                        help="start every process as a new interpreter instead of forking")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fault-soak-"))
    root = work / "checkpoints"
    import torch

    data = work / "vectors-640x2.pt"
    generator = torch.Generator().manual_seed(0)
    torch.save(torch.randn(640, 2, generator=generator) * 2 + 1, data)
    env = {**os.environ, "FLOWCTL_CKPT_DIR": str(root), "WANDB_SILENT": "true"}
    flags = ["--dataset", str(data), "--epochs", str(args.epochs), "--patience", "0",
             "--flow", args.config, "--save-every", str(args.save_every), *TINY]
    rng = random.Random(args.seed)
    zygote = (FreshProcesses if args.fresh else Zygote)(work / "logs", env=env)
    totals = LoopReport()
    runs = differing = 0
    try:
        reference = zygote.run("train", "--run-name", "reference", *flags, env=env)
        if reference.wait(300) != 0:
            print(reference.stderr, file=sys.stderr)
            return 1
        while totals.kills < args.kills:
            runs += 1
            name = f"soak-{runs:03d}"
            wanted = min(args.kills_per_run, args.kills - totals.kills)
            report = kill_resume_loop(zygote, root / name, ["train", "--run-name", name, *flags],
                                      kills=wanted, rng=rng, env=env, max_delay_s=args.max_delay,
                                      timeout=300 if args.fresh else 120)
            problems = run_differences(root / "reference", root / name)
            if report.final_returncode != 0:
                problems.append(f"final resume exited {report.final_returncode}: "
                                f"{report.final_stderr.strip().splitlines()[-1:]}")
            differing += bool(problems)
            for key in ("kills", "resumes", "restarts", "kills_before_first_save",
                        "temps_left_by_kills"):
                setattr(totals, key, getattr(totals, key) + getattr(report, key))
            totals.corrupted += report.corrupted
            totals.temps_not_removed += report.temps_not_removed
            print(f"{name}: {report.kills} kills (steps {report.steps_at_kill}), "
                  f"{report.resumes} resumes, {len(report.corrupted)} corrupted, "
                  f"{'differs: ' + '; '.join(problems[:3]) if problems else 'identical'}",
                  flush=True)
            if report.kills == 0:
                print("the run finished before any kill: use more --epochs", file=sys.stderr)
                break
    finally:
        zygote.close()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - started
    print(f"\nkills {totals.kills} (during start-up {totals.kills_before_first_save}, "
          f"mid-write with a temp file left {totals.temps_left_by_kills}), "
          f"resumes {totals.resumes}, restarts {totals.restarts}, runs {runs}")
    print(f"corrupted checkpoints {len(totals.corrupted)}, temp files not removed "
          f"{len(totals.temps_not_removed)}, runs differing from the reference {differing}")
    print(f"wall time {wall:.1f} s (--kills {args.kills} --seed {args.seed} --config "
          f"{args.config} --save-every {args.save_every}{' --fresh' if args.fresh else ''})")
    for problem in (totals.corrupted + totals.temps_not_removed)[:10]:
        print(f"  {problem}")
    return 0 if not (totals.corrupted or totals.temps_not_removed or differing) else 1


if __name__ == "__main__":
    sys.exit(main())
