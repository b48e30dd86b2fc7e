"""Exact resume for every flow, in-process: stop a run after k steps as a signal would (last.pt
written mid-epoch, mid log window), restore the checkpoint into a freshly built trainer,
finish, and compare bitwise with a run that never stopped. The real-signal, real-process
versions of this live in test_resume.py and tests/faults/."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from study.data.training_data import TrainingData
from study.flow_matching.config import TrainingConfig
from study.flow_matching.models import build_model
from study.flow_matching.trainer import FlowTrainer
from study.runs.checkpoint import read_checkpoint
from study.runs.recorder import RunRecorder
from study.signals import GracefulStop, TrainingStopped
from tests.support.helpers import assert_same_state, load, metrics_rows

FLOWS = ["icfm", "otcfm", "otcfm-sampled", "fm", "vp", "sbcfm", "reflow"]
STOP_AT_STEP = 11  # epoch 2 of 8-step epochs, between two log rows (log_every 3)


def config_for(flow: str, name: str, **options) -> TrainingConfig:
    base = dict(flow=flow, run_name=name, epochs=3, batch_size=64, width=16, depth=2,
                checkpoint_interval=0, warmup_steps=5, log_every=3, patience=0, ema_decay=0.9,
                teacher="teacher.pt" if flow == "reflow" else None)
    return TrainingConfig(**{**base, **options})


def training_data(flow: str) -> TrainingData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(640, 2, generator=generator) * 2 + 1
    x0 = torch.randn(640, 2, generator=generator) if flow == "reflow" else None
    return TrainingData.prepare(x[:512], x[512:], train_x0=None if x0 is None else x0[:512],
                                val_x0=None if x0 is None else x0[512:])


def trainer(flow: str, root: Path, name: str, *, stop: GracefulStop | None = None,
            resume: dict | None = None, options: dict | None = None,
            pairing_workers: int = 0) -> FlowTrainer:
    config = config_for(flow, name, **(options or {}))
    torch.manual_seed(config.seed)
    model = build_model("mlp", 2, width=16, depth=2, activation="selu")
    recorder = RunRecorder(root / name, name, wandb_project="test", wandb_mode="disabled")
    return FlowTrainer(model, config, training_data(flow), recorder, "cpu",
                                  resume=resume, stop=stop, pairing_workers=pairing_workers,
                                  warn=lambda message: None)


def stop_after(model: torch.nn.Module, steps: int, stop: GracefulStop, *,
               forwards_per_step: int = 1) -> None:
    """Request a graceful stop, as SIGTERM would, during optimizer step number `steps`."""
    calls = 0

    def count(module, inputs, output):
        nonlocal calls
        if module.training:
            calls += 1
            if calls == steps * forwards_per_step:
                stop.signum = signal.SIGTERM

    model.register_forward_hook(count)


OPTIONS = {  # every option that adds state or draws: each must resume exactly too
    "bf16+accum": {"precision": "bf16", "grad_accum": 4},
    "checkpoint-budget": {"checkpoint_interval": 3600.0},
    "val-every-2": {"val_every": 2},
    "eval+linear+noise": {"eval_every": 1, "eval_samples": 64, "select_by": "eval_w2",
                          "scheduler": {"type": "linear", "final_lr_scale": 0.1},
                          "aug": "noise", "normalize": "none"},
}
CASES = [(flow, {}) for flow in FLOWS] + [("otcfm", options) for options in OPTIONS.values()]


@pytest.mark.parametrize("flow, options", CASES,
                         ids=FLOWS + [f"otcfm-{name}" for name in OPTIONS])
def test_stop_and_restore_ends_bitwise_identical(flow, options, isolated_run_root):
    trainer(flow, isolated_run_root, "whole", options=options).train()

    stop = GracefulStop()
    interrupted = trainer(flow, isolated_run_root, "split", stop=stop, options=options)
    stop_after(interrupted.model, STOP_AT_STEP, stop,
               forwards_per_step=options.get("grad_accum", 1))
    with pytest.raises(TrainingStopped):
        interrupted.train()
    stopped = load(isolated_run_root / "split" / "last.pt")
    assert stopped["global_step"] == STOP_AT_STEP and stopped["batch_in_epoch"] == 3
    assert stopped["log_window"]["steps"] == 2, "the stop lands between two log rows"

    payload = read_checkpoint(isolated_run_root / "split" / "last.pt")
    result = trainer(flow, isolated_run_root, "split", resume=payload, options=options).train()
    assert result["global_step"] == 3 * 8
    assert_same_state(load(isolated_run_root / "whole" / "last.pt"),
                      load(isolated_run_root / "split" / "last.pt"))
    assert metrics_rows(isolated_run_root / "split") == metrics_rows(isolated_run_root / "whole")


def test_state_dict_round_trips_into_a_fresh_trainer(isolated_run_root):
    """load_state_dict(state_dict()) restores every counter, generator and the LR."""
    source = trainer("otcfm", isolated_run_root, "source")
    stop = GracefulStop()
    stop_after(source.model, 5, stop)
    source.stop = stop
    with pytest.raises(TrainingStopped):
        source.train()
    restored = trainer("otcfm", isolated_run_root, "copy", resume=source.state_dict())
    for name in ("epoch", "global_step", "batch_in_epoch", "best_loss", "last_train_loss"):
        assert getattr(restored, name) == getattr(source, name), name
    for name, generator in source.batches.generators.items():
        assert torch.equal(restored.batches.generators[name].get_state(), generator.get_state()), name
    assert restored.optimizer.param_groups[0]["lr"] == source.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("flow", ["otcfm", "sbcfm"])
def test_pairing_ahead_on_workers_gives_the_same_run_and_resumes_exactly(flow, isolated_run_root):
    """Plans solved ahead on 2 threads: bitwise the run paired on the critical path, also
    when the stop lands while batches drawn ahead are waiting (they are drawn again)."""
    trainer(flow, isolated_run_root, "inline").train()
    stop = GracefulStop()
    ahead = trainer(flow, isolated_run_root, "ahead", stop=stop, pairing_workers=2)
    stop_after(ahead.model, STOP_AT_STEP, stop)
    with pytest.raises(TrainingStopped):
        ahead.train()
    assert ahead.batches.ahead, "the stop must land with batches drawn ahead"
    payload = read_checkpoint(isolated_run_root / "ahead" / "last.pt")
    trainer(flow, isolated_run_root, "ahead", resume=payload, pairing_workers=2).train()
    assert_same_state(load(isolated_run_root / "inline" / "last.pt"),
                      load(isolated_run_root / "ahead" / "last.pt"))
