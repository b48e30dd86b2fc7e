"""One optimizer step: flow-matching loss on a batch, backward, clip, AdamW, EMA.

The batch is split into `grad_accum` equal micro-batches whose mean gradient is the whole
batch's (under DDP the gradients are all-reduced once, on the last one); the forward pass
runs under the precision's autocast and the loss is taken in fp32. The learning rate of the
next step is set from the schedule (a pure function of the step), then the EMA follows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.flow_matching.batches import FlowBatch
from study.flow_matching.distributed import gradient_sync
from study.flow_matching.optim import EMAModel
from study.flow_matching.precision import Precision
from study.flow_matching.schedule import LRSchedule


class Update:
    def __init__(self, *, train_model: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                 ema: EMAModel, precision: Precision, schedule: LRSchedule, grad_accum: int,
                 grad_clip: float):
        self.train_model, self.model, self.optimizer = train_model, model, optimizer
        self.ema, self.precision, self.schedule = ema, precision, schedule
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, batch: FlowBatch, flow, step: int) -> tuple[Tensor, Tensor]:
        """Optimizer step number `step` (0-based) on `batch`; (loss, grad norm) as device
        scalars, so nothing waits for the device here."""
        parts = self.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=batch.x_1.device)
        for index, part in enumerate(batch.split(parts)):
            x_t, u_t = flow.path(part.x_0, part.x_1, part.t, part.eps)
            with gradient_sync(self.train_model, index == parts - 1):
                with self.precision.autocast():
                    v_t = self.train_model(x_t, part.t)
                part_loss = F.mse_loss(v_t.float(), u_t) / parts
                self.precision.backward(part_loss)
            loss += part_loss.detach()
        grad_norm = self.precision.clip_and_step(self.optimizer, self.params, self.grad_clip)
        self.set_learning_rate(step + 1)  # for the next step
        self.ema.update(self.model, n=step)
        return loss, grad_norm

    def set_learning_rate(self, step: int) -> None:
        """Give every parameter group the schedule's LR for optimizer step `step`."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(step)
