"""The stage schedule: which flow, noise level, augmentation and LR scale each epoch uses.

A config without `stages` has one stage, `main`, covering every epoch. With stages, stage
i covers the epochs after stages 0..i-1; the last stage also covers any epochs beyond the
sum (so `--epochs` stays the total target). Pure functions of the epoch: a resumed run
lands in the same stage at the same stage step without replaying anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from study.flow_matching.config import TrainingConfig


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    start_epoch: int
    end_epoch: float  # exclusive; inf for the last stage
    flow: str
    sigma: float
    aug: str
    aug_std: float
    lr_scale: float  # stage lr / config lr
    teacher: str | None

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "start_epoch": self.start_epoch,
                "end_epoch": -1 if self.end_epoch == float("inf") else int(self.end_epoch),
                "flow": self.flow, "sigma": self.sigma, "aug": self.aug, "lr_scale": self.lr_scale}


def plan_stages(config: TrainingConfig) -> list[Stage]:
    raw = config.stages or []
    if not raw:
        return [Stage(0, "main", 0, float("inf"), config.flow, config.sigma, config.aug,
                      config.aug_std, 1.0, config.teacher)]
    stages, start = [], 0
    for index, stage in enumerate(raw):
        last = index == len(raw) - 1
        end = float("inf") if last else start + stage.epochs
        stages.append(Stage(
            index=index, name=stage.name, start_epoch=start, end_epoch=end,
            flow=stage.flow or config.flow,
            sigma=config.sigma if stage.sigma is None else stage.sigma,
            aug=stage.aug or config.aug,
            aug_std=config.aug_std if stage.aug_std is None else stage.aug_std,
            lr_scale=(stage.lr / config.lr) if stage.lr is not None else 1.0,
            teacher=stage.teacher or config.teacher,
        ))
        start += stage.epochs
    return stages


def stage_for_epoch(stages: list[Stage], epoch: int) -> Stage:
    for stage in stages:
        if stage.start_epoch <= epoch < stage.end_epoch:
            return stage
    return stages[-1]


def stage_state(stages: list[Stage], epoch: int, global_step: int, steps_per_epoch: int) -> dict:
    """The checkpoint's `stage`: the stage of the epoch after `epoch` (the one in progress or
    next), the optimizer steps taken in it, and the whole schedule."""
    stage = stage_for_epoch(stages, epoch + 1)
    return {"current_stage": stage.index, "stage_name": stage.name,
            "stage_step": global_step - stage.start_epoch * steps_per_epoch,
            "schedule": [s.to_dict() for s in stages]}
