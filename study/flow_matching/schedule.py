"""The learning rate as a pure function of the optimizer step (as in nanoGPT).

lr(step) = config lr x the stage's LR scale x the warm-up/decay factor. Nothing here holds
state: a resumed run gets its LR from the step alone, and an extended run (a larger
`--epochs`) re-plans the decay for the new horizon from the current step.
"""

from __future__ import annotations

from typing import Any

from study.flow_matching.config import TrainingConfig
from study.flow_matching.optim import cosine_warmup_factor
from study.flow_matching.stages import Stage, stage_for_epoch


class LRSchedule:
    def __init__(self, config: TrainingConfig, stages: list[Stage], steps_per_epoch: int):
        self.base_lr = config.lr
        self.warmup_steps = config.warmup_steps
        self.stages = stages
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = config.epochs * steps_per_epoch

    def __call__(self, step: int) -> float:
        """The LR of optimizer step `step` (0-based)."""
        stage = stage_for_epoch(self.stages, step // self.steps_per_epoch)
        return self.base_lr * (stage.lr_scale * cosine_warmup_factor(
            step, self.warmup_steps, self.total_steps))

    def state_dict(self, step: int) -> dict[str, Any]:
        """The checkpoint's `scheduler_state_dict`: torch LambdaLR's layout at `step`, so the
        study's helpers can still load it. flowctl itself derives the LR from the step."""
        return {"base_lrs": [self.base_lr], "last_epoch": step, "_step_count": step + 1,
                "_is_initial": False, "_get_lr_called_within_step": False,
                "_last_lr": [self(step)], "lr_lambdas": [None]}
