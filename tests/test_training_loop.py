"""The training loop's options: schedules, EMA warm-up, gradient accumulation, mixed
precision, evaluation during training, snapshots, and what run.json reports."""

from __future__ import annotations

import math

import pytest
import torch

from study.data.training_data import TrainingData
from study.flow_matching.config import SchedulerConfig, TrainingConfig
from study.flow_matching.config_load import load_config
from study.flow_matching.optim import EMAModel
from study.flow_matching.schedule import LRSchedule
from study.flow_matching.stages import plan_stages
from tests.support.helpers import load, metrics_rows, run_json
from tests.support.trainers import trainer

STEPS_PER_EPOCH = 512 // 64


def tiny(**overrides) -> TrainingConfig:
    base = dict(epochs=3, batch_size=64, width=16, depth=2, warmup_steps=5, log_every=4,
                checkpoint_interval=0,
                patience=0, run_name="loop")
    return TrainingConfig(**{**base, **overrides}).validate()


# -- schedules -----------------------------------------------------------------------------

def closed_form(kind: str, step: int, *, total: int, warmup: int = 5, final: float = 0.0,
                gamma: float = 0.1, step_size: int = 10) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return {"cosine": final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)),
            "linear": 1 - (1 - final) * progress,
            "step": gamma ** ((step // STEPS_PER_EPOCH) // step_size),
            "constant": 1.0}[kind]


@pytest.mark.parametrize("scheduler", [
    {"type": "cosine"}, {"type": "cosine", "final_lr_scale": 0.1},
    {"type": "linear", "final_lr_scale": 0.2}, {"type": "step", "gamma": 0.5, "step_size": 1},
    {"type": "constant"},
])
def test_every_step_trains_at_the_closed_form_lr(scheduler, isolated_run_root):
    config = tiny(scheduler=scheduler, lr=2e-3)
    run = trainer(config, isolated_run_root)
    seen = []
    original = run.learning_rate.apply

    def record(optimizer, step: int) -> None:
        original(optimizer, step)
        seen.append((step, run.optimizer.param_groups[0]["lr"]))

    run.learning_rate.apply = record
    run.train()
    total = 3 * STEPS_PER_EPOCH
    params = {k: v for k, v in scheduler.items() if k != "type"}
    renamed = {"final": params.get("final_lr_scale", 0.0), "gamma": params.get("gamma", 0.1),
               "step_size": params.get("step_size", 10)}
    assert [s for s, _ in seen] == list(range(1, total + 1))
    for step, lr in seen:
        expected = 2e-3 * closed_form(scheduler["type"], step, total=total, **renamed)
        assert lr == pytest.approx(expected, rel=1e-12), (step, lr, expected)


def test_yaml_scheduler_mapping_as_in_the_seed_and_a_flag_overrides_one_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("scheduler: {type: linear, final_lr_scale: 0.2}\n")
    assert load_config(path).scheduler == SchedulerConfig(type="linear", final_lr_scale=0.2)
    both = load_config(path, {"scheduler": {"final_lr_scale": 0.5}})
    assert both.scheduler == SchedulerConfig(type="linear", final_lr_scale=0.5)


def test_extension_replans_linear_from_the_current_step():
    short, longer = tiny(scheduler={"type": "linear"}), tiny(scheduler={"type": "linear"}, epochs=6)
    old = LRSchedule(short, plan_stages(short), STEPS_PER_EPOCH)
    new = LRSchedule(longer, plan_stages(longer), STEPS_PER_EPOCH)
    assert old(24) == pytest.approx(0.0, abs=1e-12)  # the 3-epoch plan ends at 0
    assert new(24) == pytest.approx(longer.lr * (1 - 19 / 43))  # the 6-epoch plan, no new warm-up


# -- EMA warm-up ---------------------------------------------------------------------------

def test_ema_warmup_decay_follows_the_rule_and_caps_at_decay():
    ema = EMAModel(torch.nn.Linear(2, 2), decay=0.999, warmup=True)
    assert [ema.decay_at(n) for n in (0, 1, 90)] == [0.1, 2 / 11, 91 / 100]
    assert ema.decay_at(100_000) == 0.999
    assert EMAModel(torch.nn.Linear(2, 2), decay=0.999).decay_at(0) == 0.999


def test_a_short_runs_ema_is_not_dominated_by_the_initialisation():
    """The shadow starts at the initial weights; the model then sits at new weights for
    300 updates. Without warm-up 0.999^300 = 74% of the start remains; with it, ~0%."""
    for warmup, left in ((False, 0.999**300), (True, 0.0)):
        model = torch.nn.Linear(2, 2, bias=False)
        torch.nn.init.zeros_(model.weight)
        ema = EMAModel(model, decay=0.999, warmup=warmup)
        with torch.no_grad():
            model.weight.fill_(1.0)
        for n in range(300):
            ema.update(model, n=n)
        remaining = 1.0 - ema.shadow["weight"].mean().item()
        assert remaining == pytest.approx(left, abs=1e-4), (warmup, remaining)


# -- gradient accumulation -----------------------------------------------------------------

@pytest.mark.parametrize("flow", ["icfm", "otcfm"])
def test_accumulated_step_equals_one_step_on_the_whole_batch(flow, isolated_run_root):
    """Same draws (OT pairs over the whole step's batch), 4 micro-batches: same update."""
    whole = trainer(tiny(flow=flow, epochs=1, run_name="whole"), isolated_run_root)
    parts = trainer(tiny(flow=flow, epochs=1, run_name="parts", grad_accum=4), isolated_run_root)
    whole.train()
    parts.train()
    for name, tensor in whole.model.state_dict().items():
        torch.testing.assert_close(parts.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
    assert parts.global_step == whole.global_step == STEPS_PER_EPOCH
    assert [r["step"] for r in metrics_rows(isolated_run_root / "parts")] == ["4", "8"]


def test_batch_size_must_split_into_equal_micro_batches():
    from study.errors import UsageError

    with pytest.raises(UsageError, match="not a multiple of grad_accum"):
        tiny(grad_accum=3)


# -- mixed precision -----------------------------------------------------------------------

def test_bf16_on_cpu_trains_with_fp32_weights_and_ema(isolated_run_root):
    run = trainer(tiny(precision="bf16", run_name="bf16"), isolated_run_root)
    result = run.train()
    assert math.isfinite(result["best_val_loss"])
    best = load(isolated_run_root / "bf16" / "best.pt")
    assert all(t.dtype == torch.float32 for t in best["model_state_dict"].values())
    assert all(t.dtype == torch.float32 for t in best["ema_shadow"].values())
    fp32 = trainer(tiny(run_name="fp32"), isolated_run_root).train()
    assert result["best_val_loss"] == pytest.approx(fp32["best_val_loss"], rel=0.1)
    assert result["best_val_loss"] != fp32["best_val_loss"], "bf16 must really change the math"


def test_fp16_without_cuda_is_a_one_line_usage_error(isolated_run_root):
    from study.errors import UsageError

    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        trainer(tiny(precision="fp16"), isolated_run_root)


# -- evaluation during training, best.pt by eval W2, snapshots -----------------------------

def test_eval_every_logs_w2_and_mmd_and_best_follows_eval_w2(isolated_run_root):
    config = tiny(epochs=4, eval_every=2, eval_samples=100, select_by="eval_w2", lr=3e-3)
    trainer(config, isolated_run_root).train()
    rows = [r for r in metrics_rows(isolated_run_root / "loop") if r["val/loss"]]
    evaluated = [r for r in rows if r["eval/w2"]]
    assert [int(r["epoch"]) for r in evaluated] == [1, 3]
    assert all(float(r["eval/w2"]) > 0 and float(r["eval/mmd"]) >= 0 for r in evaluated)
    best = min(evaluated, key=lambda r: float(r["eval/w2"]))
    assert load(isolated_run_root / "loop" / "best.pt")["epoch"] == int(best["epoch"])


def test_keep_snapshots_keeps_the_newest_k_epoch_files(isolated_run_root):
    trainer(tiny(epochs=4, keep_snapshots=2), isolated_run_root).train()
    snapshots = sorted(p.name for p in (isolated_run_root / "loop").glob("epoch-*.pt"))
    assert snapshots == ["epoch-0003.pt", "epoch-0004.pt"]
    assert load(isolated_run_root / "loop" / "epoch-0004.pt")["global_step"] == 4 * STEPS_PER_EPOCH


def test_run_json_and_metrics_report_schedule_lr_data_and_epoch_times(isolated_run_root):
    config = tiny(scheduler={"type": "constant"})
    result = trainer(config, isolated_run_root).train()
    status = run_json(isolated_run_root / "loop")
    assert status["scheduler"] == result["scheduler"] == "constant"
    assert status["lr"] == result["lrs"][0] == config.lr
    assert status["dataset"]["rows"] == {"train": 512, "val": 128}
    import csv

    with open(isolated_run_root / "loop" / "metrics.csv", newline="") as handle:
        times = [float(r["epoch_time_s"]) for r in csv.DictReader(handle) if r["epoch_time_s"]]
    assert len(times) == 3 and all(t > 0 for t in times)


# -- normalisation -------------------------------------------------------------------------

def test_normalize_none_trains_in_data_units_and_records_identity_stats(isolated_run_root):
    x = torch.randn(640, 2, generator=torch.Generator().manual_seed(0)) * 3 + 5
    none = TrainingData.prepare(x[:512], x[512:], normalize="none")
    assert torch.equal(none.train, x[:512])
    trainer(tiny(normalize="none", run_name="raw"), isolated_run_root, none).train()
    best = load(isolated_run_root / "raw" / "best.pt")
    assert best["config"]["normalize"] == "none"
    assert torch.equal(best["normalization_stats"]["mean"], torch.zeros(2))
    assert torch.equal(best["normalization_stats"]["std"], torch.ones(2))


def test_sampling_undoes_exactly_what_training_did(isolated_run_root):
    """generate() maps the ODE's end point back with the checkpoint's own stats."""
    from study.data.normalize import denormalize
    from study.flow_matching.evaluate import generate, load_flow_model
    from study.flow_matching.solvers import integrate

    x = torch.randn(640, 2, generator=torch.Generator().manual_seed(0)) * 3 + 5
    for mode in ("none", "standard"):
        config = tiny(normalize=mode, run_name=mode, epochs=1)
        trainer(config, isolated_run_root, TrainingData.prepare(x[:512], x[512:], normalize=mode)).train()
        loaded = load_flow_model(isolated_run_root / mode / "best.pt")
        samples, info = generate(loaded, 50, solver="euler", steps=10, seed=3)
        raw = integrate(loaded.model, info.x_0, solver="euler", steps=10).x_1
        torch.testing.assert_close(samples, denormalize(raw, loaded.stats), rtol=0, atol=0)


def test_checkpoints_written_before_a_key_existed_keep_their_behaviour():
    from study.flow_matching.config_load import config_from_checkpoint

    old = config_from_checkpoint({"flow": "icfm", "epochs": 3}, source="old.pt")
    assert old.ema_warmup is False and old.normalize == "standard"
    assert old.scheduler == SchedulerConfig()
    assert TrainingConfig().ema_warmup is True


# -- data larger than memory ---------------------------------------------------------------

def test_a_memory_mapped_split_trains_batch_by_batch_and_bit_identically(tmp_path, isolated_run_root):
    """A float32 .npy split stays a mapping (never normalised or copied whole); each batch is
    gathered, normalised and moved per step, with the in-memory path's exact numbers."""
    import numpy as np

    from study.data.matrix import is_memory_mapped
    from study.data.readers import load_vectors

    x = torch.randn(640, 2, generator=torch.Generator().manual_seed(0)) * 2 + 1
    np.save(tmp_path / "train.npy", x[:512].numpy())
    mapped = load_vectors(tmp_path / "train.npy")
    assert is_memory_mapped(mapped)
    from_file = TrainingData.prepare(mapped, x[512:])
    in_memory = TrainingData.prepare(mapped.clone(), x[512:])
    assert from_file.mapped and from_file.train.data_ptr() == mapped.data_ptr()
    assert not in_memory.mapped
    for name, data in (("mapped", from_file), ("memory", in_memory)):
        trainer(tiny(flow="otcfm", run_name=name), isolated_run_root, data).train()
    a, b = (load(isolated_run_root / name / "last.pt") for name in ("mapped", "memory"))
    for key in ("model_state_dict", "ema_shadow"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), name
