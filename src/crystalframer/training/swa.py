"""Stochastic weight averaging with equal weights, kept outside the model.

The official code uses ``torch.optim.swa_utils.AveragedModel`` (equal-weight running mean, buffers not
averaged) and updates it after every optimizer step of the last ``swa_epochs`` epochs. This class keeps
the same running mean as plain tensors, not as a registered module, so that DDP never sees it as a
parameter and its state is a plain dict that goes into (and comes back from) the resume checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["WeightAverager"]


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


class WeightAverager:
    """Running equal-weight mean of a model's trainable parameters: avg_n = avg_{n−1} + (p − avg_{n−1}) / n.

    Buffers (e.g. target normalisation) are taken from the live model when the averaged model is built.
    """

    def __init__(self, model: torch.nn.Module):
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.avg: dict[str, torch.Tensor] = {}
        self.n_averaged = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Add the current weights of ``model`` to the average (equal weight for every call)."""
        params = dict(model.named_parameters())
        self.n_averaged += 1
        if self.n_averaged == 1:
            # Averaging happens in float64 (where the device has it) so that thousands of updates do not
            # accumulate rounding error.
            self.avg = {n: params[n].detach().to(_acc_dtype(params[n].device)).clone() for n in self.names}
            return
        for n in self.names:
            a = self.avg[n]
            a.add_(params[n].detach().to(a.device, a.dtype) - a, alpha=1.0 / self.n_averaged)

    def averaged_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A deep copy of ``model`` holding the averaged weights (the live weights if nothing was averaged)."""
        out = copy.deepcopy(model)
        self.copy_to(out)
        return out

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averaged weights into ``model`` in place (no-op before the first update)."""
        if not self.n_averaged:
            return
        params = dict(model.named_parameters())
        for n in self.names:
            params[n].copy_(self.avg[n].to(params[n].device, params[n].dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"n_averaged": int(self.n_averaged),
                "avg": {n: t.detach().cpu().clone() for n, t in self.avg.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_averaged = int(state.get("n_averaged", 0))
        self.avg = {n: t.clone().to(torch.float64) for n, t in (state.get("avg") or {}).items()}
        missing = [n for n in self.names if n not in self.avg] if self.n_averaged else []
        if missing:
            raise ValueError(f"SWA state lacks averaged weights for {missing[:5]}")
