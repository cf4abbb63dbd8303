"""What a model's outputs mean: the task of the prediction head and the map to the targets' units."""

from __future__ import annotations

from torch import Tensor

#: ``regression``: real-valued targets, outputs on the normalised scale (y = out · std + mean).
#: ``classification``: binary targets (0/1), outputs are logits and predictions probabilities of class 1.
TASKS = ("regression", "classification")
#: Map applied to regression targets before normalisation: ``none``, or ``log`` (targets > 0; the model learns
#: (log y − mean)/std, and predictions are exp(out · std + mean), e.g. for heavy-tailed positive energies).
TARGET_TRANSFORMS = ("none", "log")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


def to_target_units(out: Tensor, mean: Tensor, std: Tensor, task: str = "regression",
                    transform: str = "none") -> Tensor:
    """(B, n_targets) head outputs → predictions: values in the targets' units, or probabilities.

    ``transform`` is the model's target transform (:data:`TARGET_TRANSFORMS`), undone after the normalisation.
    """
    if task == "classification":
        return out.sigmoid()
    y = out * std + mean
    return y.exp() if transform == "log" else y
