"""The learning rate as a pure function of the optimizer step (as in nanoGPT).

lr(s) = config lr x the stage's LR scale x factor(s), s = 0, 1, ... the optimizer step:

    warm-up (s < W):  (s + 1) / W
    then, with p = (s - W) / (S - W) in [0, 1] (S: total steps = epochs x steps per epoch),
    f = final_lr_scale, g = gamma, k = step_size:
      cosine    f + (1 - f) (1 + cos(pi p)) / 2
      linear    1 - (1 - f) p
      step      g ** (epoch(s) // k)          epoch(s) = s // steps per epoch
      constant  1

Nothing here holds state: a resumed run gets its LR from the step alone. Extending a run
(a larger `--epochs` on resume) re-plans cosine and linear for the new total S from the
current step, without repeating the warm-up; step and constant do not depend on S.
"""

from __future__ import annotations

import math
from typing import Any

from study.flow_matching.config import TrainingConfig
from study.flow_matching.stages import Stage, stage_for_epoch


def warmup_decay_factor(step: int, *, kind: str, warmup_steps: int, total_steps: int,
                        steps_per_epoch: int, final_lr_scale: float = 0.0, gamma: float = 0.1,
                        step_size: int = 10) -> float:
    """The closed form above for one step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind == "step":
        return gamma ** ((step // steps_per_epoch) // step_size)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return 1.0 - (1.0 - final_lr_scale) * progress
    assert kind == "cosine", f"expected a scheduler type, got {kind!r}"
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cosine if final_lr_scale == 0 else final_lr_scale + (1.0 - final_lr_scale) * cosine


class LRSchedule:
    def __init__(self, config: TrainingConfig, stages: list[Stage], steps_per_epoch: int):
        self.base_lr = config.lr
        self.scheduler = config.scheduler
        self.warmup_steps = config.warmup_steps
        self.stages = stages
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = config.epochs * steps_per_epoch

    def factor(self, step: int) -> float:
        sched = self.scheduler
        return warmup_decay_factor(
            step, kind=sched.type, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch, final_lr_scale=sched.final_lr_scale,
            gamma=sched.gamma, step_size=sched.step_size)

    def __call__(self, step: int) -> float:
        """The LR of optimizer step `step` (0-based)."""
        stage = stage_for_epoch(self.stages, step // self.steps_per_epoch)
        return self.base_lr * (stage.lr_scale * self.factor(step))

    def apply(self, optimizer, step: int) -> None:
        """Give every parameter group of `optimizer` the LR of optimizer step `step`."""
        for group in optimizer.param_groups:
            group["lr"] = self(step)

    def state_dict(self, step: int) -> dict[str, Any]:
        """The checkpoint's `scheduler_state_dict`: the schedule's type, the optimizer step the
        LR was last derived for (`last_epoch`, the name torch's schedulers and `inspect-ckpt`
        use) and that LR. flowctl derives the LR from the step and reads none of it back."""
        return {"type": self.scheduler.type, "last_epoch": step, "last_lr": [self(step)]}
