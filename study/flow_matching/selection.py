"""Which epoch is the best (best.pt) and when to stop early.

The best validation loss is always tracked (val/best_loss). The selection metric, the one
best.pt and the patience counter follow, is the validation loss or, with `--select-by
eval_w2`, the W2 of evaluations during training (epochs without an evaluation then count
as not improving). Patience counts validations (every epoch unless `val_every` is set).
"""

from __future__ import annotations

import math
from typing import Any


class Selection:
    def __init__(self, select_by: str, patience: int):
        self.select_by, self.patience = select_by, patience
        self.best_loss = math.inf  # the best validation loss
        self.best_score = math.inf  # the best of the selection metric
        self.epochs_without_improvement = 0  # validations since the last improvement
        self.improved_last = False  # whether the latest epoch end improved the selection

    def update(self, val_loss: float, eval_w2: float | None) -> bool:
        """Record an epoch's validation (and evaluation); whether the selection improved."""
        self.best_loss = min(self.best_loss, val_loss)
        score = eval_w2 if self.select_by == "eval_w2" else val_loss
        improved = score is not None and score < self.best_score
        if improved:
            self.best_score, self.epochs_without_improvement = score, 0
        else:
            self.epochs_without_improvement += 1
        self.improved_last = improved
        return improved

    def skip(self) -> None:
        """An epoch end without validation: nothing improved, patience unchanged."""
        self.improved_last = False

    def should_stop(self) -> bool:
        return bool(self.patience) and self.epochs_without_improvement >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's selection fields."""
        return {"best_loss": float(self.best_loss), "best_score": float(self.best_score),
                "epochs_without_improvement": self.epochs_without_improvement}

    def load(self, payload: dict[str, Any]) -> None:
        """From a checkpoint (older ones have no best_score: it was the val loss)."""
        self.best_loss = float(payload["best_loss"])
        self.best_score = float(payload.get("best_score", self.best_loss))
        self.epochs_without_improvement = int(payload.get("epochs_without_improvement", 0))
