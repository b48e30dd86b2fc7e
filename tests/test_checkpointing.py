"""The checkpoint policy: a time budget for epoch-end writes, the pending best kept in memory
and written before last.pt, forced writes on save_every, stops and the end of training."""

from __future__ import annotations

from pathlib import Path

import torch

from study.flow_matching.checkpointing import Checkpointer
from study.flow_matching.config import TrainingConfig
from tests.support.helpers import load, metrics_rows


class FakeRecorder:
    """Records the (names, global_step) of each write instead of writing."""

    enabled = True
    run_dir = Path("run")

    def __init__(self):
        self.writes: list[list[tuple[list[str], int]]] = []

    def save_checkpoints(self, jobs, *, keep_snapshots=0):
        self.writes.append([([p.name for p in paths], payload["global_step"]) for payload, paths in jobs])


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_policy(events, *, interval_s=10.0, save_every=0, keep_snapshots=0):
    """events: (seconds passed, step, epoch_done, improved, stopping) -> the writes made."""
    recorder, clock, now = FakeRecorder(), Clock(), {"global_step": 0}
    policy = Checkpointer(recorder, state=lambda: dict(now), finite=lambda: torch.tensor(True),
                          save_every=save_every, keep_snapshots=keep_snapshots,
                          interval_s=interval_s, clock=clock)
    for seconds, step, epoch_done, improved, stopping in events:
        clock.now += seconds
        now["global_step"] = step
        policy.after_step(step=step, epoch=step // 10 - 1, epoch_done=epoch_done,
                          improved=improved, stopping=stopping)
    policy.finish(step=events[-1][1])
    return recorder.writes


def test_epoch_ends_inside_the_budget_are_not_written_and_the_best_waits_in_memory():
    writes = run_policy([(3, 10, True, True, False), (3, 20, True, False, False),
                         (3, 30, True, False, False), (3, 40, True, False, False)])
    # 12 s at step 40: the budget is spent, so last.pt, with the pending best (step 10) first.
    assert writes == [[(["best.pt"], 10), (["last.pt"], 40)]]


def test_an_improving_epoch_end_that_is_due_writes_best_as_a_link_of_last():
    writes = run_policy([(11, 10, True, True, False), (1, 15, False, False, False)])
    assert writes[0] == [(["best.pt", "last.pt"], 10)]
    assert writes[1] == [(["last.pt"], 15)]  # the end of training


def test_a_stop_and_save_every_force_a_write_with_the_pending_best():
    writes = run_policy([(1, 10, True, True, False), (1, 14, False, False, False),
                         (1, 16, False, False, True)], save_every=7)
    assert writes[0] == [(["best.pt"], 10), (["last.pt"], 14)]
    assert writes[1] == [(["last.pt"], 16)]
    assert len(writes) == 2, "nothing new at the end: step 16 is already on disk"


def test_a_pending_best_of_the_final_step_is_written_once_as_a_link_of_last():
    # The last epoch improved inside the budget: best and last are the same state, so the
    # end of training writes it once (best.pt a hard link), not twice.
    writes = run_policy([(1, 10, True, False, False), (1, 20, True, True, False)])
    assert writes == [[(["best.pt", "last.pt"], 20)]]


def test_the_last_steps_best_is_written_from_the_live_state_without_a_copy():
    """At the last step nothing changes the state before finish() writes it: the best is
    not copied (a 67 MB snapshot for the 1024-D workload), and the written payload holds
    the live tensors themselves."""
    recorder, clock = FakeRecorder(), Clock()
    handed = []
    recorder.save_checkpoints = lambda jobs, keep_snapshots=0: handed.extend(jobs)
    weights = torch.ones(3)
    policy = Checkpointer(recorder, state=lambda: {"global_step": 20, "weights": weights},
                          finite=lambda: torch.tensor(True), save_every=0, keep_snapshots=0,
                          interval_s=10.0, clock=clock)
    policy.after_step(step=20, epoch=1, epoch_done=True, improved=True, stopping=False,
                      last=True)
    assert policy.pending_best is None and handed == []
    policy.finish(step=20)
    [(payload, paths)] = handed
    assert [path.name for path in paths] == ["best.pt", "last.pt"]
    assert payload["weights"] is weights


def test_budget_zero_writes_every_epoch_as_before():
    writes = run_policy([(0, 10, True, True, False), (0, 20, True, False, False)], interval_s=0,
                        keep_snapshots=2)
    assert writes == [[(["best.pt", "last.pt", "epoch-0001.pt"], 10)],
                      [(["last.pt", "epoch-0002.pt"], 20)]]


def test_a_real_run_within_the_budget_writes_best_and_last_once_at_the_end(isolated_run_root):
    from tests.support.trainers import trainer

    config = TrainingConfig(epochs=4, batch_size=64, width=16, depth=2, warmup_steps=5,
                            patience=0, run_name="budget", lr=3e-3,
                            checkpoint_interval=3600.0).validate()
    result = trainer(config, isolated_run_root).train()
    run = isolated_run_root / "budget"
    val = [float(r["val/loss"]) for r in metrics_rows(run) if r["val/loss"]]
    best, last = load(run / "best.pt"), load(run / "last.pt")
    assert last["global_step"] == result["global_step"] == 4 * 8
    assert best["epoch"] == val.index(min(val)) and best["best_loss"] == min(val)


def test_a_real_run_whose_last_epoch_is_best_copies_best_from_last(isolated_run_root):
    from tests.support.trainers import trainer

    config = TrainingConfig(epochs=2, batch_size=64, width=16, depth=2, warmup_steps=0,
                            patience=0, run_name="linked", lr=3e-3,
                            checkpoint_interval=3600.0).validate()
    trainer(config, isolated_run_root).train()
    run = isolated_run_root / "linked"
    val = [float(r["val/loss"]) for r in metrics_rows(run) if r["val/loss"]]
    assert val[-1] < val[0], "expected the last epoch to be the best (lr 3e-3, 2 epochs)"
    assert (run / "best.pt").read_bytes() == (run / "last.pt").read_bytes()
    assert (run / "best.pt").stat().st_ino != (run / "last.pt").stat().st_ino, "two files"
