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
run in minutes. The machinery lives in tests/support (`zygote.py`, `kill_loop.py`), which
tests/faults uses too; this file is the command.

Usage: python scripts/fault_soak.py --kills 100 [--seed 0] [--config icfm|otcfm] [--save-every 1]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # tests.support, when run as `python scripts/fault_soak.py`

from tests.support.kill_loop import LoopReport, kill_resume_loop, run_differences  # noqa: E402
from tests.support.zygote import FreshProcesses, Zygote  # noqa: E402

# The tests' TINY flags: 640 rows at batch 64 -> 9 steps per epoch.
TINY = ["--batch-size", "64", "--width", "16", "--depth", "2", "--warmup-steps", "5",
        "--wandb-mode", "disabled", "--plain"]


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
