"""A FlowTrainer built in-process on tiny 2-D vectors, for tests that drive the loop directly."""

from __future__ import annotations

import torch

from study.data.training_data import TrainingData
from study.flow_matching.config import TrainingConfig
from study.flow_matching.models import build_model
from study.flow_matching.trainer import FlowTrainer
from study.runs.recorder import RunRecorder


def data(dim: int = 2) -> TrainingData:
    x = torch.randn(640, dim, generator=torch.Generator().manual_seed(0)) * 2 + 1
    return TrainingData.prepare(x[:512], x[512:])


def trainer(config: TrainingConfig, root, training_data: TrainingData | None = None) -> FlowTrainer:
    torch.manual_seed(config.seed)
    model = build_model("mlp", 2, width=config.width, depth=config.depth, activation="selu")
    recorder = RunRecorder(root / config.name, config.name, wandb_project="t", wandb_mode="disabled")
    return FlowTrainer(model, config, training_data or data(), recorder, "cpu",
                       warn=lambda message: None)
