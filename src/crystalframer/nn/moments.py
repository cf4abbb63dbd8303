"""Moment sums of the angular basis over flat lists of image slots: the hot loop of the frame models.

For slots s (grouped by their row r, e.g. the atom they belong to), heads h and frame axes k, with
x = (c_shk + 1)/ι the position of the cosine in units of the centre spacing, j = ⌊x + ½⌋ its nearest centre
and u = x − j ∈ [−½, ½]:

    acc[h, r, k, j, p] = Σ_(s in row r, nearest centre j) ω_sh u^p,        p < P

(see :class:`crystalframer.nn.basis.AngleBasis` for why these moments give the basis sums). Two
implementations of one autograd function:

- a Numba kernel (CPU, used when ``numba`` is installed: ``pip install "crystalframer[fast]"``), which
  computes every (slot, head, axis) element once, keeps each row's accumulator in cache and runs the rows
  in parallel on torch's thread count. It is 4–5× faster than the scatter path on CPU.
- ``index_add_`` scatters in PyTorch (any device; the reference for the kernel in the tests).

Set the environment variable ``CRYSTALFRAMER_NUMBA=0`` to force the PyTorch path.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch
from torch import Tensor

try:  # optional: the fast CPU kernel
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

_LOCK = threading.Lock()  # numba's workqueue threading layer must not be entered from two threads at once


def numba_enabled() -> bool:
    """Whether the Numba kernel serves CPU tensors (installed and not disabled by CRYSTALFRAMER_NUMBA=0)."""
    return numba is not None and os.environ.get("CRYSTALFRAMER_NUMBA", "1") != "0"


if numba is not None:

    # Scalars arrive in the arrays' dtype (scale = (D − 1)/2, half = ½, top = D − 1) so that float32 data
    # is computed in float32: numba promotes float32 op int to float64.
    @njit(parallel=True, cache=True)
    def _forward_kernel(weight, cos, start, scale, half, top, n_pow, acc):  # pragma: no cover - jitted
        # weight (S, H), cos (S, H, K), start (R + 1,) slot offsets of the rows, acc (H, R, K, D, P)
        H = weight.shape[1]
        K = cos.shape[2]
        for r in prange(start.shape[0] - 1):
            for h in range(H):
                a = acc[h, r]
                a[...] = 0
                for s in range(start[r], start[r + 1]):
                    t0 = weight[s, h]
                    for k in range(K):
                        x = cos[s, h, k] * scale + scale
                        jf = np.floor(x + half)  # nearest centre; NaN (never valid input) goes to 0
                        if not jf >= 0:
                            jf = half - half
                        if jf > top:
                            jf = top
                        u = x - jf
                        j = int(jf)
                        t = t0
                        for p in range(n_pow):
                            a[k, j, p] += t
                            t *= u
        return acc

    @njit(parallel=True, cache=True)
    def _backward_kernel(weight, cos, start, scale, half, top, n_pow, grad, need_cos, g_weight,
                         g_cos):  # pragma: no cover - jitted
        H = weight.shape[1]
        K = cos.shape[2]
        for r in prange(start.shape[0] - 1):
            for h in range(H):
                g = grad[h, r]
                for s in range(start[r], start[r + 1]):
                    gw = half - half
                    for k in range(K):
                        x = cos[s, h, k] * scale + scale
                        jf = np.floor(x + half)
                        if not jf >= 0:
                            jf = half - half
                        if jf > top:
                            jf = top
                        u = x - jf
                        j = int(jf)
                        poly = g[k, j, n_pow - 1]  # Σ_p g_p u^p and Σ_p p g_p u^(p−1) by Horner
                        dpoly = half - half
                        for p in range(n_pow - 2, -1, -1):
                            dpoly = dpoly * u + poly
                            poly = poly * u + g[k, j, p]
                        gw += poly
                        if need_cos:
                            g_cos[s, h, k] = weight[s, h] * dpoly * scale
                    g_weight[s, h] = gw


def _scalars(bins: int, dtype: torch.dtype) -> tuple:
    """(scale, half, top) of the kernels in the numpy type of ``dtype``."""
    t = np.float32 if dtype == torch.float32 else np.float64
    return t((bins - 1) / 2), t(0.5), t(bins - 1)


def _run_numba(kernel, *args) -> None:
    with _LOCK:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        kernel(*args)


def use_numba(x: Tensor) -> bool:
    """Whether :class:`SlotMoments` runs the Numba kernel for tensors like ``x``."""
    return numba_enabled() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


class SlotMoments(torch.autograd.Function):
    """The moments above from weight (S, H), cos (S, H, K) and ``start`` (R + 1,), the offsets of each
    row's slots (slots sorted by row). Differentiable in weight and cos.

    Returns acc as (H, R, K, D, P) with the Numba kernel (``fast=True``, CPU only) and as (P, H, R, K, D)
    with the scatters, each the layout its implementation writes without copies.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, cos: Tensor, start: Tensor, bins: int, n_pow: int, fast: bool) -> Tensor:
        S, H, K = cos.shape
        R = start.shape[0] - 1
        weight, cos = weight.contiguous(), cos.contiguous()
        ctx.save_for_backward(weight, cos, start)
        ctx.bins, ctx.n_pow, ctx.fast = bins, n_pow, fast
        if fast:
            acc = cos.new_empty(H, R, K, bins, n_pow)
            _run_numba(_forward_kernel, weight.detach().numpy(), cos.detach().numpy(), start.numpy(),
                       *_scalars(bins, cos.dtype), n_pow, acc.numpy())
            return acc
        index, u = _scatter_index(cos, start, bins)
        term = weight[:, :, None].expand(S, H, K).reshape(-1).clone()
        acc = cos.new_zeros(n_pow, H * R * K * bins)
        for p in range(n_pow):  # one 1-D scatter per power: faster than any interleaved layout
            acc[p].index_add_(0, index, term)
            if p + 1 < n_pow:
                term.mul_(u)
        return acc.view(n_pow, H, R, K, bins)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, cos, start = ctx.saved_tensors
        bins, P = ctx.bins, ctx.n_pow
        S, H, K = cos.shape
        need_cos = ctx.needs_input_grad[1]
        if ctx.fast:
            g_weight, g_cos = torch.empty_like(weight), torch.empty_like(cos)
            _run_numba(_backward_kernel, weight.detach().numpy(), cos.detach().numpy(), start.numpy(),
                       *_scalars(bins, cos.dtype), P, grad.contiguous().numpy(), need_cos, g_weight.numpy(),
                       g_cos.numpy())
            return g_weight, (g_cos if need_cos else None), None, None, None, None
        index, u = _scatter_index(cos, start, bins)
        g = grad.reshape(P, -1)
        gp = [g[p].index_select(0, index) for p in range(P)]
        poly = gp[P - 1].clone()  # Σ_p g_p u^p by Horner
        for p in range(P - 2, -1, -1):
            poly.mul_(u).add_(gp[p])
        g_weight = poly.view(S, H, K).sum(-1)
        g_cos = None
        if need_cos:
            dpoly = gp[P - 1] * (P - 1)  # Σ_p p g_p u^(p−1)
            for p in range(P - 2, 0, -1):
                dpoly.mul_(u).add_(gp[p], alpha=p)
            g_cos = weight[:, :, None] * dpoly.view(S, H, K) * ((bins - 1) / 2)
        return g_weight, g_cos, None, None, None, None


def _scatter_index(cos: Tensor, start: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Flat index into (H, R, K, D) and offset u of every (slot, head, axis) element, (S·H·K,) each; the
    nearest-centre rule of the kernel."""
    S, H, K = cos.shape
    R, dev = start.shape[0] - 1, cos.device
    x = cos * ((bins - 1) / 2) + (bins - 1) / 2  # as the kernel rounds it
    j = torch.floor(x + 0.5).clamp_(0, bins - 1)
    row = torch.repeat_interleave(torch.arange(R, device=dev), start.diff(), output_size=S)
    index = ((torch.arange(H, device=dev) * R + row[:, None]) * K)[:, :, None] + torch.arange(K, device=dev)
    return (index * bins + j.long()).reshape(-1), (x - j).reshape(-1)
