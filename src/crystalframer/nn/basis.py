"""Gaussian basis functions of distances (Å) and direction cosines, with the published evaluation windows.

Spec §3.5 and §3.6. The paper's definition evaluates every basis function; the official frame kernel
evaluates only a window of consecutive functions around each value (9 of 64 for distances, 33 of 64 for
cosines) and treats the rest as 0. ``window=True`` reproduces that (needed for numerical parity with the
released models); the default ``False`` is the paper's definition.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Width of the evaluation window in units of σ on each side (the kernels' CUT_SIGMA).
CUT_SIGMA = 4.0


class DistanceBasis:
    """K Gaussians with centres μ_k = (k+1)Δ, Δ = r_max/K, width σ_d = s·Δ (Å)."""

    def __init__(self, bins: int = 64, r_max: float = 14.0, width: float = 1.0, window: bool = False):
        self.bins, self.r_max, self.width = bins, r_max, width
        self.delta = r_max / bins
        self.sigma = width * self.delta
        lr = math.ceil(2 * width * CUT_SIGMA + 1)
        self.win = lr if (window and bins - lr > 8) else None

    def __call__(self, d: Tensor) -> Tensor:
        """(...,) distances in Å → (..., K) basis values."""
        k = torch.arange(self.bins, device=d.device)
        mu = (k + 1).to(d.dtype) * self.delta
        out = torch.exp(-((d[..., None] - mu) ** 2) / (2 * self.sigma**2))
        if self.win is not None:
            start = torch.trunc((d - CUT_SIGMA * self.sigma) / self.delta - 1).clamp(0, self.bins - self.win)
            start = start.long()[..., None]
            out = out * ((k >= start) & (k < start + self.win)).to(out.dtype)
        return out


class AngleBasis:
    """D Gaussians on cosines in [−1, 1]: μ_m = −1 + 2m/(D−1), σ_a = s·2/(D−1)."""

    def __init__(self, bins: int = 64, width: float = 4.0, window: bool = False):
        self.bins, self.width = bins, width
        self.step = 2.0 / (bins - 1)
        self.sigma = width * self.step
        ar = math.ceil(2 * width * CUT_SIGMA + 1)
        self.win = ar if (window and bins - ar > 8) else None

    def centers(self, device=None, dtype=None) -> Tensor:
        return -1.0 + torch.arange(self.bins, device=device, dtype=dtype) * self.step

    def window_mask(self, cos: Tensor) -> Tensor | None:
        """(...,) cosines → (..., D) 0/1 mask of evaluated functions, or None without a window."""
        if self.win is None:
            return None
        m = torch.arange(self.bins, device=cos.device)
        end = torch.trunc(torch.clamp((cos + 1 + CUT_SIGMA * self.sigma) / self.step + 1, max=self.bins))
        end = end.clamp(min=self.win).long()[..., None]
        return ((m >= end - self.win) & (m < end)).to(cos.dtype)

    def __call__(self, cos: Tensor) -> Tensor:
        """(...,) cosines → (..., D) basis values (window applied)."""
        mu = self.centers(cos.device, cos.dtype)
        out = torch.exp(-((cos[..., None] - mu) ** 2) / (2 * self.sigma**2))
        mask = self.window_mask(cos)
        return out if mask is None else out * mask


class _AngleHistogram(torch.autograd.Function):
    """hist[i, h, k, :] = Σ_m w[i, m, h] · basis(cos[i, m, h, k]), over chunks of atoms.

    Never holds the (N, M, H, 3, D) basis tensor: forward and backward recompute it chunk by chunk, so
    peak memory is bounded by ``chunk`` atoms. Gradients flow to the weights w and to the cosines
    (the latter only matter for frames that carry gradients, e.g. SPFrame).
    """

    @staticmethod
    def forward(ctx, w: Tensor, cos: Tensor, live: Tensor, basis: AngleBasis, chunk: int) -> Tensor:
        N, M, H = w.shape
        K = cos.shape[-1]
        out = w.new_zeros(N, H, K, basis.bins)
        for a in range(0, N, chunk):
            b = min(N, a + chunk)
            g = basis(cos[a:b]) * live[a:b, :, None, None, None]  # (c, M, H, K, D)
            out[a:b] = torch.einsum("cmh,cmhkd->chkd", w[a:b], g)
        ctx.save_for_backward(w, cos, live)
        ctx.basis, ctx.chunk = basis, chunk
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, cos, live = ctx.saved_tensors
        basis, chunk = ctx.basis, ctx.chunk
        need_w, need_cos = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gw = torch.zeros_like(w) if need_w else None
        gc = torch.zeros_like(cos) if need_cos else None
        mu = basis.centers(cos.device, cos.dtype)
        for a in range(0, w.shape[0], chunk):
            b = min(w.shape[0], a + chunk)
            g = basis(cos[a:b]) * live[a:b, :, None, None, None]  # (c, M, H, K, D)
            if need_w:
                gw[a:b] = torch.einsum("chkd,cmhkd->cmh", grad[a:b], g)
            if need_cos:
                # d/dcos exp(-(c-μ)²/2σ²) = -(c-μ)/σ² · value; the window edges are piecewise constant.
                dg = g * (mu - cos[a:b, ..., None]) / basis.sigma**2
                gc[a:b] = torch.einsum("chkd,cmh,cmhkd->cmhk", grad[a:b], w[a:b], dg)
        return gw, gc, None, None, None


def angle_histogram(w: Tensor, cos: Tensor, live: Tensor, basis: AngleBasis, budget: int = 4_000_000) -> Tensor:
    """Attention-weighted angular basis sums b̄ (spec §3.6, aggregated over every image of atom i).

    Args:
        w: (N, M, H) attention weight of each image slot.
        cos: (N, M, H, K) direction cosines e_k · r̂ of each slot for each frame axis.
        live: (N, M) 1 where the slot has a direction (non-self, valid), else 0.
        budget: basis values held at once (bounds peak memory to a few × budget × 4 bytes).
    Returns:
        (N, H, K, D).
    """
    N, M, H, K = cos.shape
    chunk = max(1, budget // max(1, M * H * K * basis.bins))
    return _AngleHistogram.apply(w, cos, live.to(w.dtype), basis, chunk)
