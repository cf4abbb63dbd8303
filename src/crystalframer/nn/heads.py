"""What a model's outputs mean: the task of the prediction head and the map to the targets' units."""

from __future__ import annotations

from torch import Tensor

#: ``regression``: real-valued targets, outputs on the normalised scale (y = out · std + mean).
#: ``classification``: binary targets (0/1), outputs are logits and predictions probabilities of class 1.
TASKS = ("regression", "classification")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


def to_target_units(out: Tensor, mean: Tensor, std: Tensor, task: str = "regression") -> Tensor:
    """(B, n_targets) head outputs → predictions: values in the targets' units, or probabilities."""
    if task == "classification":
        return out.sigmoid()
    return out * std + mean
