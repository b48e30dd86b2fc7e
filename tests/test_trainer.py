"""FlowTrainer end to end on tiny CPU runs: every flow, every arch, the result contract."""

from __future__ import annotations

import math

import pytest
import torch

from study.errors import RunFailed
from study.flow_matching.config import FLOW_NAMES, TrainingConfig
from study.flow_matching.flows import FLOWS
from study.flow_matching.models import MODELS, build_model
from study.flow_matching.trainer import FlowTrainer
from study.flow_matching.utils import get_checkpoint_path
from tests.support.helpers import LinearVelocity, load, metrics_rows, run_json

RESULT_KEYS = {"epochs_run", "best_val_loss", "checkpoint_path", "final_epoch", "global_step",
               "elapsed_s"}


def tiny_config(**overrides) -> TrainingConfig:
    base = dict(epochs=2, batch_size=64, width=16, depth=2, warmup_steps=5, log_every=4,
                checkpoint_interval=0,
                patience=0, run_name="tiny")
    return TrainingConfig(**{**base, **overrides})


def data(rows: int = 640, dim: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=generator) * 2 + 1
    return x[: rows - 128], x[rows - 128:]


def trainer_for(config: TrainingConfig, **kwargs) -> FlowTrainer:
    train_x, val_x = data(dim=kwargs.pop("dim", 2))
    torch.manual_seed(config.seed)
    model = build_model(config.arch, train_x.shape[1], width=config.width, depth=config.depth,
                        activation=config.activation)
    return FlowTrainer(model, config, train_x, val_x, "cpu", wandb_mode="disabled", **kwargs)


@pytest.mark.parametrize("flow", sorted(set(FLOW_NAMES) & set(FLOWS) - {"reflow"}))
def test_every_flow_trains_and_writes_checkpoints(flow):
    config = tiny_config(flow=flow, run_name=f"tiny-{flow}")
    result = trainer_for(config).train()
    assert RESULT_KEYS <= set(result)
    assert result["epochs_run"] == 2 and result["final_epoch"] == 1
    assert result["global_step"] == 2 * (512 // 64)
    assert math.isfinite(result["best_val_loss"])
    best = load(get_checkpoint_path(config.name))
    assert best["config"]["flow"] == flow
    assert str(get_checkpoint_path(config.name)) == result["checkpoint_path"]


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_arch_trains(arch):
    config = tiny_config(arch=arch, run_name=f"tiny-{arch}")
    trainer = trainer_for(config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "weights never changed"
    assert math.isfinite(result["best_val_loss"])


def test_training_reduces_validation_loss_on_real_signal():
    from study.data.toy import moons

    x = moons(1152, torch.Generator().manual_seed(0))
    config = tiny_config(epochs=10, lr=3e-3, width=64, ema_decay=0.9)
    torch.manual_seed(0)
    model = build_model("mlp", 2, width=64, depth=2, activation="selu")
    trainer = FlowTrainer(model, config, x[:1024], x[1024:], "cpu", wandb_mode="disabled")
    initial = trainer.validate()
    result = trainer.train()
    assert result["best_val_loss"] < 0.92 * initial, (initial, result["best_val_loss"])


def test_custom_model_with_any_arch_name():
    config = tiny_config(arch="test", run_name=None).validate(check_arch=False)
    train_x, val_x = data()
    result = FlowTrainer(LinearVelocity(), config, train_x, val_x, "cpu", wandb_mode="disabled").train()
    assert result["checkpoint_path"].endswith("test-icfm-moons-none/best.pt")


def test_log_rows_and_validation_rows_match_the_step_axis(isolated_run_root):
    config = tiny_config(epochs=3)
    trainer_for(config).train()
    rows = metrics_rows(isolated_run_root / "tiny")
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)), "one row per step, increasing"
    train_steps = [int(r["step"]) for r in rows if r["train/loss"]]
    val_steps = [int(r["step"]) for r in rows if r["val/loss"]]
    assert train_steps == list(range(4, 25, 4))
    assert val_steps == [8, 16, 24]
    assert {r["stage_id"] for r in rows} == {"0"}
    status = run_json(isolated_run_root / "tiny")
    assert status["status"] == "finished" and status["epoch"] == 3 and status["global_step"] == 24


def test_validation_is_deterministic_and_uses_ema_weights():
    trainer = trainer_for(tiny_config())
    first, second = trainer.validate(), trainer.validate()
    assert first == second, "fixed validation noise must give the same loss twice"
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)  # live weights change, EMA shadow does not
    assert trainer.validate() == first


def test_early_stopping_after_patience(isolated_run_root):
    config = tiny_config(epochs=30, lr=1e-9, warmup_steps=1, patience=2)
    result = trainer_for(config).train()
    assert result["status"] == "early_stopped"
    assert result["epochs_run"] < 30
    assert run_json(isolated_run_root / "tiny")["status"] == "early_stopped"


def test_best_checkpoint_is_the_lowest_validation_loss(isolated_run_root):
    config = tiny_config(epochs=4, lr=3e-3)
    result = trainer_for(config).train()
    rows = metrics_rows(isolated_run_root / "tiny")
    val = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    best = load(isolated_run_root / "tiny" / "best.pt")
    assert best["best_loss"] == min(val) == result["best_val_loss"]
    assert best["epoch"] == val.index(min(val))


def test_val_every_validates_every_kth_epoch_and_the_last_and_best_pt_is_among_them(
        isolated_run_root):
    """The runner's check_val_every_n_epoch: epochs 3, 6 and 7 (the last) of 7 are validated;
    best.pt is one of them, and patience counts validations, not epochs."""
    config = tiny_config(epochs=7, lr=3e-3, val_every=3)
    result = trainer_for(config).train()
    rows = metrics_rows(isolated_run_root / "tiny")
    validated = {int(r["epoch"]): float(r["val/loss"]) for r in rows if r["val/loss"]}
    assert sorted(validated) == [2, 5, 6]
    best = load(isolated_run_root / "tiny" / "best.pt")
    assert best["epoch"] == min(validated, key=validated.get)
    assert best["best_loss"] == min(validated.values()) == result["best_val_loss"]

    stalled = tiny_config(epochs=30, lr=1e-9, warmup_steps=1, patience=2, val_every=4,
                          run_name="stalled")
    result = trainer_for(stalled).train()
    assert result["status"] == "early_stopped" and result["epochs_run"] % 4 == 0
    assert result["epochs_run"] >= 12, "two validations without improvement after the first"


def test_non_finite_loss_fails_the_run_and_keeps_good_checkpoints(isolated_run_root):
    config = tiny_config(arch="test", epochs=4).validate(check_arch=False)
    train_x, val_x = data()
    explode_after_8 = LinearVelocity(fault=lambda call, out: out * math.inf if call > 8 else out)
    trainer = FlowTrainer(explode_after_8, config, train_x, val_x, "cpu", wandb_mode="disabled")
    with pytest.raises(RunFailed, match=r"non-finite loss at step 12"):
        trainer.train()
    status = run_json(isolated_run_root / "tiny")
    assert status["status"] == "failed"
    assert status["error"]["message"] == "non-finite loss at step 12"
    assert load(isolated_run_root / "tiny" / "last.pt")["global_step"] == 8


def test_the_studys_seven_argument_call_resumes_and_checkpoints_hold_no_lambdalr_fields(
        isolated_run_root):
    """`FlowTrainer(model, config, train_ds, val_ds, device, wandb_project, resume_path)`, all
    positional, continues a run; the checkpoint's scheduler entry is the schedule's own (type,
    step, LR), and the study's loader still takes the step from it into a LambdaLR."""
    from study.flow_matching.utils import get_cosine_schedule_with_warmup, load_checkpoint

    config = tiny_config(epochs=1, run_name="study-call")
    trainer_for(config).train()
    last = isolated_run_root / "study-call" / "last.pt"
    scheduler_state = load(last)["scheduler_state_dict"]
    assert scheduler_state == {"type": "cosine", "last_epoch": 8,
                               "last_lr": [load(last)["optimizer_state_dict"]["param_groups"][0]["lr"]]}
    train_x, val_x = data()
    torch.manual_seed(config.seed)
    model = build_model(config.arch, 2, width=config.width, depth=config.depth,
                        activation=config.activation)
    longer = tiny_config(epochs=2, run_name="study-call")
    resumed = FlowTrainer(model, longer, train_x, val_x, "cpu", "a-project", str(last))
    assert (resumed.global_step, resumed.recorder.wandb_project) == (8, "a-project")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 5, 16)
    assert load_checkpoint(last, model, None, optimizer, scheduler, "cpu")[0] == 1
    assert scheduler.last_epoch == 8
    with pytest.raises(TypeError, match="unexpected arguments"):
        FlowTrainer(model, config, resumed.data, resumed.recorder, "cpu", "a-project")
