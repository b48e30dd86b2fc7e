"""Checkpoint files for the reader tests: one as the trainer writes it (built in memory) and
hostile ones whose unpickling would run code."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from study.flow_matching.config import TrainingConfig
from study.runs.checkpoint import FORMAT_VERSION
from tests.support.helpers import CreatesMarker


def build_checkpoint(*, epoch: int = 2, original: bool = False) -> tuple[dict, dict]:
    """A checkpoint as the trainer writes it: nn.Linear + AdamW after one step + LambdaLR.

    Returns (checkpoint, expected values). `original=True` keeps only the original study's keys.
    """
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    loss = model(torch.randn(4, 2)).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    scheduler_state = scheduler.state_dict()
    scheduler_state.pop("lr_lambdas")
    config = TrainingConfig(epochs=20).to_dict()
    ckpt = {
        "epoch": epoch,
        "model_state_dict": model.state_dict(),
        "ema_shadow": {name: value.clone() for name, value in model.state_dict().items()},
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler_state,
        "best_loss": 0.125,
        "config": config,
        "normalization_stats": {"mean": torch.arange(10.0), "std": torch.ones(10)},
    }
    if not original:
        generator = torch.Generator().manual_seed(1)
        ckpt.update({
            "format_version": FORMAT_VERSION, "global_step": 80, "batch_in_epoch": 0,
            "optimizer_type": "AdamW", "epochs_without_improvement": 1,
            "dataset_checksum": "sha256:abc", "data_rng_state": generator.get_state(),
            "rng_states": {name: generator.get_state() for name in ("data", "t", "noise", "ot")},
            "stage": {"current_stage": 0, "stage_name": "main", "stage_step": 80,
                      "schedule": [{"name": "main", "epochs": 20}]},
            "log_window": {"loss_sum": 1.5, "count": 3}, "wandb_run_id": "abc123",
            "wandb_project": "flowctl", "torch_version": str(torch.__version__),
            "flowctl_version": "0.1.0", "saved_at": "2026-11-26T08:15:05.123456+00:00",
        })
    expected = {"lr": optimizer.param_groups[0]["lr"], "config": config}
    return ckpt, expected


class RunsShell:
    """Unpickling this calls os.system: code outside every allow-list."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def zip_with_pickle(path: Path, payload: bytes) -> Path:
    """A zip laid out like torch.save's, holding `payload` as its data.pkl."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("evil/data.pkl", payload)
        archive.writestr("evil/byteorder", "little")
        archive.writestr("evil/version", "3\n")
    return path


def hostile_files(folder: Path) -> dict[str, Path]:
    marker = folder / "marker"
    buffer = io.BytesIO()
    torch.save({"model_state_dict": {}, "epoch": CreatesMarker(marker)}, buffer)
    (folder / "torch-save.pt").write_bytes(buffer.getvalue())
    return {
        "torch-save": folder / "torch-save.pt",
        "os-system": zip_with_pickle(folder / "os-system.pt", pickle.dumps(
            {"model_state_dict": {}, "x": RunsShell(marker)}, protocol=2)),
        "eval": zip_with_pickle(folder / "eval.pt", b"cbuiltins\neval\n(Vopen('"
                                + str(marker).encode() + b"', 'w')\ntR."),
        "codecs": zip_with_pickle(folder / "codecs.pt", b"c_codecs\nencode\n(Vx\nVrot13\ntR."),
        "persistent-id": zip_with_pickle(folder / "pid.pt", b"(Vstorage\nVx\ntQ."),
    }
