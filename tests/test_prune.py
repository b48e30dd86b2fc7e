"""flowctl prune: retention rules on real run folders, deletion under the run lock."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from study.errors import UsageError
from study.runs.removal import remove_run
from study.runs.retention import PruneRules, parse_duration, parse_statuses, select_runs
from study.runs.status import read_run, scan_runs
from tests.support.helpers import (
    REPO_ROOT,
    cli,
    error_line,
    run_flags,
    run_json,
    spawn,
    vectors_file,
    wait_for,
)

DAY = 86400.0


def make_run(root, name: str, *, status: str = "finished", group: str = "g",
             best: float | None = None, age_s: float = 0.0, size: int = 1000,
             eval_w2: float | None = None, **fields) -> None:
    """A run folder as the trainer leaves it, for tests that are only about selection."""
    folder = root / name
    folder.mkdir(parents=True)
    updated = datetime.fromtimestamp(time.time() - age_s, timezone.utc).isoformat()
    (folder / "run.json").write_text(json.dumps({
        "run_name": name, "group": group, "status": status, "updated_at": updated,
        "best_val_loss": best, **fields}))
    (folder / "last.pt").write_bytes(b"\0" * size)
    if eval_w2 is not None:
        (folder / "eval.json").write_text(json.dumps({"w2": eval_w2}))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def prune_json(*args: str) -> dict:
    result = cli("prune", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def removed_names(plan) -> list[str]:
    return sorted(selected.run.run_name for selected in plan.remove)


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("12h", 43200), ("7d", 7 * DAY),
                                               ("2w", 14 * DAY), ("90s", 90), ("1.5D", 1.5 * DAY)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7", "d", "7x", "-1d", "7 days", ""])
def test_bad_durations_are_usage_errors(text):
    with pytest.raises(UsageError, match="give a number and a unit"):
        parse_duration(text)


def test_rules_are_checked():
    with pytest.raises(UsageError, match="prune needs a rule"):
        PruneRules(group="g").check()
    with pytest.raises(UsageError, match="add --group G"):
        PruneRules(keep_best=2).check()
    with pytest.raises(UsageError, match="unknown --by 'w2'"):
        PruneRules(keep_best=2, group="g", by="w2").check()
    with pytest.raises(UsageError, match="unknown status 'dead'"):
        parse_statuses("failed,dead")


def test_rules_combine_with_and(isolated_run_root):
    root = isolated_run_root
    make_run(root, "old-failed", status="failed", age_s=9 * DAY)
    make_run(root, "new-failed", status="failed", age_s=DAY)
    make_run(root, "old-finished", age_s=9 * DAY)
    make_run(root, "old-preempted-other", status="preempted", group="h", age_s=9 * DAY)
    make_run(root, "crashed", status="running", pid=dead_pid(), host=os.uname().nodename)
    (root / "not-a-run").mkdir()  # no run.json: `unknown`
    runs, now = scan_runs(root), time.time()

    def chosen(**rules) -> list[str]:
        return removed_names(select_runs(runs, PruneRules(**rules).check(), now=now))

    assert chosen(statuses=parse_statuses("failed")) == ["new-failed", "old-failed"]
    assert chosen(statuses=parse_statuses("failed"), older_than_s=7 * DAY) == ["old-failed"]
    assert chosen(older_than_s=7 * DAY) == ["old-failed", "old-finished", "old-preempted-other"]
    assert chosen(older_than_s=7 * DAY, group="h") == ["old-preempted-other"]
    assert chosen(statuses=parse_statuses("crashed,preempted")) == ["crashed", "old-preempted-other"]
    # A folder without run.json goes only when asked for by status.
    assert chosen(older_than_s=0) == sorted(r.run_name for r in runs if r.run_name != "not-a-run")
    assert chosen(statuses=parse_statuses("unknown")) == ["not-a-run"]


def test_keep_best_ranks_the_whole_group(isolated_run_root):
    root = isolated_run_root
    for name, loss, w2 in (("a", 0.30, 0.9), ("b", 0.10, 0.5), ("c", 0.20, 0.1), ("d", 0.40, None)):
        make_run(root, name, best=loss, eval_w2=w2)
    make_run(root, "no-score", status="failed")
    make_run(root, "other-group", group="h", best=0.99)
    runs, now = scan_runs(root), time.time()

    by_loss = select_runs(runs, PruneRules(keep_best=2, group="g").check(), now=now)
    assert removed_names(by_loss) == ["a", "d"]
    assert [run.run_name for run in by_loss.unranked] == ["no-score"], "no score: kept, listed"
    reasons = {s.run.run_name: s.reasons for s in by_loss.remove}
    assert reasons["d"] == ["best val loss 0.4 ranks 4 of 4 in group g"]
    by_w2 = select_runs(runs, PruneRules(keep_best=1, group="g", by="eval_w2").check(), now=now)
    assert removed_names(by_w2) == ["a", "b"]
    assert sorted(run.run_name for run in by_w2.unranked) == ["d", "no-score"]
    # The ranking spans the group; other rules then narrow what goes.
    old_only = select_runs(runs, PruneRules(keep_best=0, group="g",
                                            statuses=parse_statuses("failed")).check(), now=now)
    assert removed_names(old_only) == []


def test_dry_run_by_default_then_yes_deletes_and_reports_freed_bytes(isolated_run_root):
    make_run(isolated_run_root, "f1", status="failed", size=5000)
    make_run(isolated_run_root, "f2", status="failed", size=7000)
    make_run(isolated_run_root, "keep", size=3000)
    result = cli("prune", "--status", "failed")
    assert result.exit_code == 0, result.stderr
    assert "would remove" in result.stdout and "run again with --yes" in result.stdout
    assert all((isolated_run_root / name).exists() for name in ("f1", "f2", "keep"))
    plan = prune_json("--status", "failed")
    assert plan["dry_run"] and [r["action"] for r in plan["runs"]] == ["would_remove"] * 2
    sizes = {r["run_name"]: r["size_bytes"] for r in plan["runs"]}
    assert sizes["f1"] > 5000 and plan["would_free_bytes"] == sum(sizes.values())

    done = prune_json("--status", "failed", "--yes")
    assert not done["dry_run"] and [r["action"] for r in done["runs"]] == ["removed"] * 2
    assert done["freed_bytes"] == plan["would_free_bytes"]
    assert sorted(p.name for p in isolated_run_root.iterdir()) == ["keep"]
    assert prune_json("--status", "failed")["runs"] == []


def test_trained_runs_pruned_to_the_best_of_their_group(tmp_path, isolated_run_root):
    data = vectors_file(tmp_path)
    for lr in ("0.01", "0.001", "0.0001"):
        result = cli("train", "--run-name", f"lr{lr}", "--group", "sweep", "--lr", lr,
                     *run_flags(data, epochs=2))
        assert result.exit_code == 0, result.stderr
    losses = {f"lr{lr}": run_json(isolated_run_root / f"lr{lr}")["best_val_loss"]
              for lr in ("0.01", "0.001", "0.0001")}
    best = min(losses, key=losses.get)
    result = cli("prune", "--keep-best", "1", "--group", "sweep", "--yes")
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in isolated_run_root.iterdir()] == [best]
    assert "freed" in result.stdout.splitlines()[-1]


def test_a_live_process_holding_the_lock_is_never_removed(isolated_run_root):
    """A real process holds the run's lock (as a resumed trainer would) while run.json
    still says `failed`: prune skips it with the lock's own message."""
    make_run(isolated_run_root, "busy", status="failed")
    make_run(isolated_run_root, "idle", status="failed")
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; from pathlib import Path; from study.runs.lock import RunLock\n"
            f"lock = RunLock(Path({str(isolated_run_root / 'busy')!r}), 'busy'); lock.acquire()\n"
            "print('held', flush=True); sys.stdin.read()")],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = prune_json("--status", "failed", "--yes")
        actions = {r["run_name"]: (r["action"], r["note"]) for r in done["runs"]}
        assert actions["idle"] == ("removed", None)
        assert actions["busy"][0] == "skipped" and f"pid {holder.pid}" in actions["busy"][1]
        assert (isolated_run_root / "busy" / "last.pt").exists()
        assert (isolated_run_root / "busy" / "run.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (isolated_run_root / "idle").exists()


def test_a_run_that_changed_since_the_scan_is_skipped(isolated_run_root):
    make_run(isolated_run_root, "moving", status="failed")
    snapshot = read_run(isolated_run_root / "moving")
    status_file = isolated_run_root / "moving" / "run.json"
    resumed = {**json.loads(status_file.read_text()), "status": "finished",
               "updated_at": datetime.now(timezone.utc).isoformat()}
    status_file.write_text(json.dumps(resumed))  # resumed and finished meanwhile
    outcome = remove_run(snapshot)
    assert outcome.action == "skipped" and "changed since the scan" in outcome.note
    assert (isolated_run_root / "moving" / "last.pt").exists()


def test_bad_input_is_one_line_exit_2(isolated_run_root):
    error_line(cli("prune", "--older-than", "7x"), "bad --older-than '7x'", "30m, 12h, 7d")
    error_line(cli("prune", "--status", "dead"), "unknown status 'dead'")
    error_line(cli("prune", "--group", "g"), "prune needs a rule")
    error_line(cli("prune", "--keep-best", "2"), "add --group G")
    error_line(cli("prune", "--status", "failed", "--yes", "--dry-run"), "give one of them")


def test_terminal_confirmation(isolated_run_root):
    """On a terminal prune lists, asks, and deletes only after a yes (a real pty)."""
    make_run(isolated_run_root, "gone", status="failed")

    def answer(reply: bytes) -> str:
        leader, follower = pty.openpty()
        env = {**os.environ, "FLOWCTL_CKPT_DIR": str(isolated_run_root), "COLUMNS": "200"}
        process = subprocess.Popen([sys.executable, "-m", "study.cli.app", "prune", "--status",
                                    "failed"], cwd=REPO_ROOT, env=env, stdin=follower,
                                   stdout=follower, stderr=subprocess.PIPE)
        os.close(follower)
        screen, deadline = b"", time.monotonic() + 120
        while b"delete 1 run folder?" not in screen:
            assert time.monotonic() < deadline, screen
            if select.select([leader], [], [], 0.5)[0]:
                screen += os.read(leader, 4096)
        os.write(leader, reply)
        while process.poll() is None or select.select([leader], [], [], 0.1)[0]:
            assert time.monotonic() < deadline, screen
            try:
                screen += os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
        process.wait(timeout=30)
        os.close(leader)
        assert process.returncode == 0, process.stderr.read()
        return screen.decode()

    assert "nothing deleted" in answer(b"n\r")
    assert (isolated_run_root / "gone").exists()
    assert "removed" in answer(b"y\r")
    assert not (isolated_run_root / "gone").exists()


@pytest.mark.slow
def test_a_training_run_is_never_pruned_and_its_crash_is(tmp_path, isolated_run_root):
    process = spawn("train", "--run-name", "live", *run_flags(vectors_file(tmp_path), epochs=200))
    run_dir = isolated_run_root / "live"
    try:
        wait_for((run_dir / "last.pt").exists, process=process, what="the first last.pt")
        done = prune_json("--older-than", "0s", "--yes")
        (row,) = done["runs"]
        assert row["action"] == "skipped" and f"pid {process.pid}" in row["note"]
        assert (run_dir / "last.pt").exists() and process.poll() is None, "still training"
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    done = prune_json("--status", "crashed", "--yes")
    assert [(r["run_name"], r["action"]) for r in done["runs"]] == [("live", "removed")]
    assert not run_dir.exists()


def test_prune_imports_no_torch_wandb_or_mlflow(isolated_run_root):
    make_run(isolated_run_root, "f", status="failed")
    code = ("import sys\nfrom study.cli.app import app\n"
            "try:\n    app(args=['prune', '--status', 'failed', '--yes'])\n"
            "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
            "print([name for name in ('torch', 'wandb', 'mlflow') if name in sys.modules])\n")
    env = {**os.environ, "FLOWCTL_CKPT_DIR": str(isolated_run_root)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]" and not (isolated_run_root / "f").exists()
