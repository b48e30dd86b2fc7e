"""Epoch-end validation overlapped with the next epoch (study/flow_matching/overlap.py)
changes when the loss is computed, never what the run does: the same val losses, the same
metrics.csv rows in the same order, the same best.pt and last.pt, bit for bit, and an exact
resume from a stop that lands while a validation is still pending."""

from __future__ import annotations

import pytest
import torch

from study.runs.checkpoint import read_checkpoint
from study.signals import GracefulStop, TrainingStopped
from tests.helpers import StepWatch, assert_same_state, load, metrics_rows
from tests.test_resume_inprocess import stop_after, trainer

SELECTION = ("best_loss", "best_score", "epochs_without_improvement", "global_step")
CASES = {
    "budget": {"checkpoint_interval": 3600.0},
    "patience": {"checkpoint_interval": 3600.0, "patience": 2, "epochs": 8, "lr": 0.05},
    # best at epoch 5 of 8, an overlapped epoch: best.pt is that epoch's snapshot
    "best-overlapped": {"checkpoint_interval": 3600.0, "epochs": 8, "lr": 0.05},
    "eval-every-2": {"checkpoint_interval": 3600.0, "eval_every": 2, "eval_samples": 64,
                     "select_by": "eval_w2"},
    "save-every": {"checkpoint_interval": 3600.0, "save_every": 5},
    "every-epoch": {"checkpoint_interval": 0},
}


def run(root, name: str, monkeypatch, overlap: bool, options: dict, flow: str = "icfm"):
    monkeypatch.setenv("FLOWCTL_OVERLAP_VALIDATION", "1" if overlap else "0")
    job = trainer(flow, root, name, options=options)
    result = job.train()
    return job, result


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_overlapped_validation_gives_the_same_run_as_validation_in_line(
        tmp_path, monkeypatch, options):
    inline, inline_result = run(tmp_path, "inline", monkeypatch, False, options)
    overlapped, result = run(tmp_path, "overlap", monkeypatch, True, options)
    assert inline.overlap.shadow_model is None
    if options["checkpoint_interval"]:  # epoch ends not written at once are overlapped
        assert overlapped.overlap.overlapped > 0, "expected some epoch to overlap"
    assert overlapped.overlap.shared > 0, "expected the last epoch's pass split between threads"
    assert result["status"] == inline_result["status"]
    assert result["best_val_loss"] == inline_result["best_val_loss"]
    assert metrics_rows(tmp_path / "overlap") == metrics_rows(tmp_path / "inline")
    for name in ("last.pt", "best.pt"):
        inline_state, state = load(tmp_path / "inline" / name), load(tmp_path / "overlap" / name)
        assert_same_state(inline_state, state)
        assert {key: state[key] for key in SELECTION} == {key: inline_state[key] for key in SELECTION}
        for generator, rng in inline_state["rng_states"].items():
            assert torch.equal(rng, state["rng_states"][generator]) if torch.is_tensor(rng) \
                else rng == state["rng_states"][generator]


def test_patience_is_honoured_at_the_same_epoch(tmp_path, monkeypatch):
    # lr 0.05 on tiny data stops improving quickly: early stopping must fire at the same
    # epoch whether or not validation overlaps (it is never overlapped where it could stop).
    options = CASES["patience"]
    _, inline = run(tmp_path, "inline", monkeypatch, False, options)
    _, overlapped = run(tmp_path, "overlap", monkeypatch, True, options)
    assert inline["status"] == "early_stopped", "expected this recipe to stop early"
    assert overlapped["final_epoch"] == inline["final_epoch"] < options["epochs"] - 1


def test_a_stop_while_a_validation_is_pending_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCTL_OVERLAP_VALIDATION", "1")
    options = {"checkpoint_interval": 3600.0, "epochs": 4}
    trainer("icfm", tmp_path, "a", options=options).train()

    stop = GracefulStop()
    interrupted = trainer("icfm", tmp_path, "b", stop=stop, options=options)
    stop_after(interrupted.model, 10, stop)  # epoch 1 ends at step 8; its validation pending
    with pytest.raises(TrainingStopped):
        interrupted.train()
    stopped_at = load(tmp_path / "b" / "last.pt")
    assert stopped_at["global_step"] == 10
    assert stopped_at["best_loss"] < float("inf"), "expected epoch 1's validation collected"
    assert (tmp_path / "b" / "best.pt").exists() and load(tmp_path / "b" / "best.pt")["global_step"] == 8

    resumed = trainer("icfm", tmp_path, "b", options=options,
                      resume=read_checkpoint(tmp_path / "b" / "last.pt"))
    resumed.train()
    assert_same_state(load(tmp_path / "a" / "last.pt"), load(tmp_path / "b" / "last.pt"))
    assert_same_state(load(tmp_path / "a" / "best.pt"), load(tmp_path / "b" / "best.pt"))
    assert metrics_rows(tmp_path / "b") == metrics_rows(tmp_path / "a")


def test_a_failure_after_an_overlapped_epoch_still_logs_its_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCTL_OVERLAP_VALIDATION", "1")
    job = trainer("icfm", tmp_path, "f", options={"checkpoint_interval": 3600.0, "log_every": 100})
    calls = 0

    def fail_in_epoch_two(module, inputs, output):
        nonlocal calls
        if module.training:  # the validation copy (eval mode, another thread) shares the hook
            calls += 1
            if calls == 10:
                raise RuntimeError("boom")

    job.model.register_forward_hook(fail_in_epoch_two)
    with pytest.raises(RuntimeError, match="boom"):
        job.train()
    rows = metrics_rows(tmp_path / "f")
    assert [row["step"] for row in rows if row["val/loss"]] == ["8"]
    assert torch.isfinite(torch.tensor(float(rows[0]["val/loss"])))


def test_overlap_only_for_large_models_on_one_process_with_a_core_to_spare(monkeypatch):
    from study.flow_matching.device import spare_core_pays

    def overlap_pays(device, world_size, parameters):
        return spare_core_pays(device, world_size, parameters, "FLOWCTL_OVERLAP_VALIDATION")

    monkeypatch.delenv("FLOWCTL_OVERLAP_VALIDATION", raising=False)
    monkeypatch.delenv("FLOWCTL_CPU_SHARE", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    cpu, big, small = torch.device("cpu"), 3_000_000, 5_000
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert overlap_pays(cpu, 1, big)
    assert not overlap_pays(cpu, 1, small), "tiny ops: a second Python thread costs the steps"
    assert not overlap_pays(cpu, 2, big), "under torchrun each rank validates in line"
    assert not overlap_pays(torch.device("meta"), 1, big)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert not overlap_pays(cpu, 1, big), "no core to spare"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setenv("FLOWCTL_CPU_SHARE", "1")
    assert not overlap_pays(cpu, 1, big), "a sweep point's share is one core: none to spare"
    monkeypatch.setenv("FLOWCTL_CPU_SHARE", "2")
    assert overlap_pays(cpu, 1, big)
    monkeypatch.setenv("FLOWCTL_CPU_SHARE", "two")
    assert overlap_pays(cpu, 1, big), "a share that is not a positive integer is ignored"
    monkeypatch.setenv("FLOWCTL_OVERLAP_VALIDATION", "1")
    assert overlap_pays(cpu, 1, small)


def test_the_next_optimizer_step_waits_for_the_workers_copy_of_the_state(tmp_path, monkeypatch):
    """The worker copies the EMA weights and the state while the next step's forward and
    backward run; the optimizer step must wait for it. The worker here copies only once the
    training thread has arrived at its barrier (or, were the barrier missing, at the
    optimizer step itself), so a missing barrier is seen every time, not by chance."""
    import study.flow_matching.overlap as overlap_module

    monkeypatch.setenv("FLOWCTL_OVERLAP_VALIDATION", "1")
    job = trainer("icfm", tmp_path, "w", options={"checkpoint_interval": 3600.0})
    watch = StepWatch(job.optimizer, pending=lambda: job.overlap.copying is not None)
    monkeypatch.setattr(job.overlap, "wait_for_copies", watch.waiting(job.overlap.wait_for_copies))
    real_snapshot, seen = overlap_module.snapshot, []

    def snapshot_once_the_trainer_arrives(state):
        watch.hold()
        seen.append((state["global_step"], watch.steps))
        return real_snapshot(state)

    monkeypatch.setattr(overlap_module, "snapshot", snapshot_once_the_trainer_arrives)
    job.train()
    assert seen, "expected an overlapped epoch end"
    assert all(epoch_end_step == steps_taken for epoch_end_step, steps_taken in seen), seen


def test_a_model_with_buffers_is_copied_on_the_training_thread(tmp_path, monkeypatch):
    """A forward may change buffers (BatchNorm statistics), so their copy cannot wait for the
    optimizer step: such a model is copied before the next step starts, and the run is the
    same as validating in line."""
    options = CASES["best-overlapped"]
    results = {}

    def count_training_forwards(module, inputs):
        if module.training:  # the validation copy, in eval mode, leaves it alone
            module.forward_count.add_(1)
    for name, overlap in (("inline", False), ("overlap", True)):
        monkeypatch.setenv("FLOWCTL_OVERLAP_VALIDATION", "1" if overlap else "0")
        job = trainer("icfm", tmp_path, name, options=options)
        job.model.register_buffer("forward_count", torch.zeros(()))
        job.model.register_forward_pre_hook(count_training_forwards)
        results[name] = job.train()
        if overlap:
            assert job.overlap.shadow_model is not None and not job.overlap.copy_on_worker
            assert job.overlap.shared == 0, "a pass with buffers is never split"
    assert results["overlap"]["best_val_loss"] == results["inline"]["best_val_loss"]
    for name in ("last.pt", "best.pt"):
        inline_state, state = load(tmp_path / "inline" / name), load(tmp_path / "overlap" / name)
        assert_same_state(inline_state, state)
        assert torch.equal(state["model_state_dict"]["forward_count"],
                           inline_state["model_state_dict"]["forward_count"])


@pytest.mark.parametrize("flow", ["icfm", "vp", "otcfm"])
def test_a_validation_pass_split_between_threads_is_the_in_line_number(tmp_path, monkeypatch, flow):
    """8 validation batches: the worker passes the first 4 on the shadow model, the training
    thread the rest; the terms are added in batch order, so the loss is bitwise the one
    pass on the training thread. OT flows (a pairing generator through every batch) stay
    in line, and so does every pass once the trainer has closed the worker."""
    monkeypatch.setenv("FLOWCTL_OVERLAP_VALIDATION", "1")
    job = trainer(flow, tmp_path, "split", options={"batch_size": 16, "epochs": 1})
    assert len(job.validator.batches) == 8
    stage = job.stages[0]
    in_line = job.validator.loss(job.model, job.ema, stage)
    assert job.validate(stage) == in_line
    assert job.overlap.shared == (flow != "otcfm")
    job.overlap.close()
    assert job.validate(stage) == in_line and job.overlap.shared == (flow != "otcfm")
