"""Moment sums of the angular basis over image slots: the hot loop of the frame models.

For slots s (grouped by their row r, e.g. the atom they belong to), heads h and frame axes k, with
x = (c_shk + 1)/ι the position of the cosine in units of the centre spacing, j = ⌊x + ½⌋ its nearest centre
and u = x − j ∈ [−½, ½]:

    acc[h, r, k, j, p] = Σ_(s in row r, nearest centre j) ω_sh u^p,        p < P

(see :class:`crystalframer.nn.basis.AngleBasis` for why these moments give the basis sums).

- :class:`SlotMoments` takes a flat list of slots with their cosines, with two implementations: a Numba
  kernel (CPU, used when ``numba`` is installed: ``pip install "crystalframer[fast]"``) that computes every
  (slot, head, axis) element once, keeps each row's accumulator in cache and runs the rows in parallel on
  torch's thread count (4–5× faster than the scatters on CPU), and ``index_add_`` scatters in PyTorch (any
  device; the reference for the kernels in the tests).
- :class:`DenseMomentFeatures` (Numba only) takes the padded (atom, slot) layout of the attention with the
  directions and frame axes, forms the cosines itself, so no flat slot list is built, and applies the
  projection; its backward contracts the feature gradient with the projection inside the kernel.
- :class:`DirectionMoments` (Numba only) does the same for weighted sets of frames (tie averaging), one entry
  per (atom, head, axis, distinct direction).

Set the environment variable ``CRYSTALFRAMER_NUMBA=0`` to force the PyTorch path
(:mod:`crystalframer.numba_support`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from crystalframer.numba_support import njit, np_scalar, numba, prange, run_kernel

if numba is not None:

    # Scalars arrive in the arrays' dtype (scale = (D − 1)/2, half = ½, top = D − 1) so that float32 data
    # is computed in float32: numba promotes float32 op int to float64.
    @njit(inline="always")
    def _split(x, half, top):  # pragma: no cover - jitted
        """Nearest centre j and offset u of the scaled cosine x = (c + 1)·scale; NaN (never valid input)
        goes to centre 0."""
        jf = np.floor(x + half)
        if not jf >= 0:
            jf = half - half
        if jf > top:
            jf = top
        return int(jf), x - jf

    @njit(inline="always")
    def _nearest(c, scale, half, top):  # pragma: no cover - jitted
        """Nearest centre j and offset u of cosine c."""
        return _split(c * scale + scale, half, top)

    @njit(inline="always")
    def _accumulate(a, t, u, n_pow):  # pragma: no cover - jitted
        """a[p] += t u^p, the even and odd powers as two chains in u²: half the dependent products."""
        tu = t * u
        u2 = u * u
        a[0] += t
        if n_pow > 1:
            a[1] += tu
        for p in range(2, n_pow, 2):
            t *= u2
            tu *= u2
            a[p] += t
            if p + 1 < n_pow:
                a[p + 1] += tu

    @njit(inline="always")
    def _horner(g, u, n_pow):  # pragma: no cover - jitted
        """Σ_p g_p u^p and Σ_p p g_p u^(p−1)."""
        poly = g[n_pow - 1]
        dpoly = poly - poly
        for p in range(n_pow - 2, -1, -1):
            dpoly = dpoly * u + poly
            poly = poly * u + g[p]
        return poly, dpoly

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
                    for k in range(K):
                        j, u = _nearest(cos[s, h, k], scale, half, top)
                        _accumulate(a[k, j], weight[s, h], u, n_pow)
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
                        j, u = _nearest(cos[s, h, k], scale, half, top)
                        poly, dpoly = _horner(g[k, j], u, n_pow)
                        gw += poly
                        if need_cos:
                            g_cos[s, h, k] = weight[s, h] * dpoly * scale
                    g_weight[s, h] = gw

    @njit(inline="always")
    def _kept(w, has_dir, n, m, floor):  # pragma: no cover - jitted
        """Slot (n, m) has a direction and a weight above ``floor`` for some head."""
        if not has_dir[n, m]:
            return False
        for h in range(w.shape[2]):
            if w[n, m, h] > floor:
                return True
        return False

    @njit(inline="always")
    def _dot(unit, n, m, v):  # pragma: no cover - jitted
        """r̂_nm · v for a 3-vector v."""
        return unit[n, m, 0] * v[0] + unit[n, m, 1] * v[1] + unit[n, m, 2] * v[2]

    @njit(inline="always")
    def _kept_slots(w, has_dir, n, floor, kept):  # pragma: no cover - jitted
        for m in range(w.shape[1]):
            kept[m] = _kept(w, has_dir, n, m, floor)

    @njit(inline="always")
    def _scaled_cosines(unit, n, v, scale, x):  # pragma: no cover - jitted
        """x_m = (r̂_nm · v + 1)·scale for every slot m: one vectorisable pass before the binning."""
        vt = (v[0], v[1], v[2])  # loaded once: the compiler cannot tell that the stores to x leave v alone
        for m in range(x.shape[0]):
            x[m] = _dot(unit, n, m, vt) * scale + scale

    @njit(parallel=True, cache=True)
    def _dense_forward_kernel(w, unit, axes, has_dir, floor, scale, half, top, n_pow,
                              acc):  # pragma: no cover - jitted
        # w (N, M, H), unit (N, M, 3), axes (N, H, K, 3), has_dir (N, M), acc (H, N, K, D, P)
        N, M, H = w.shape
        K = axes.shape[2]
        for n in prange(N):
            kept = np.empty(M, np.bool_)
            _kept_slots(w, has_dir, n, floor, kept)
            x = np.empty(M, w.dtype)
            for h in range(H):
                acc[h, n] = 0
                for k in range(K):
                    _scaled_cosines(unit, n, axes[n, h, k], scale, x)
                    a = acc[h, n, k]
                    for m in range(M):
                        if kept[m]:
                            j, u = _split(x[m], half, top)
                            _accumulate(a[j], w[n, m, h], u, n_pow)
        return acc

    @njit(inline="always")
    def _pair_horner(g, b, u, n_pow):  # pragma: no cover - jitted
        """Σ_p g[b + p] u^p as Horner's rule in u² over the pairs g_2i + g_2i+1 u: half the dependent steps
        of plain Horner."""
        p = n_pow - 1 - (n_pow - 1) % 2  # the last even power
        poly = g[b + p]
        if p + 1 < n_pow:
            poly += g[b + p + 1] * u
        u2 = u * u
        for q in range(p - 2, -1, -2):
            poly = poly * u2 + (g[b + q] + g[b + q + 1] * u)
        return poly

    @njit(inline="always")
    def _project_back(g, weights_t, grad, h, n):  # pragma: no cover - jitted
        """g = Σ_c grad[h, n, c] weights_t[h, c]: four rows per pass, so g is loaded and stored a quarter as
        often."""
        C = weights_t.shape[1]
        g[:] = 0
        c = 0
        while c + 4 <= C:
            g0, g1, g2, g3 = grad[h, n, c], grad[h, n, c + 1], grad[h, n, c + 2], grad[h, n, c + 3]
            r0, r1, r2, r3 = weights_t[h, c], weights_t[h, c + 1], weights_t[h, c + 2], weights_t[h, c + 3]
            for i in range(g.shape[0]):
                g[i] += g0 * r0[i] + g1 * r1[i] + g2 * r2[i] + g3 * r3[i]
            c += 4
        for c in range(c, C):
            gc = grad[h, n, c]
            row = weights_t[h, c]
            for i in range(g.shape[0]):
                g[i] += gc * row[i]

    @njit(parallel=True, cache=True)
    def _dense_backward_kernel(w, unit, axes, has_dir, floor, scale, half, top, n_pow, weights_t, grad,
                               g_w):  # pragma: no cover - jitted
        # weights_t (H, C, K·D·P) the projection, grad (H, N, C) of the features: per (atom, head) the moment
        # gradient Σ_c grad_c W_c (K·D·P,) is formed in cache, never as an (H, N, K·D·P) tensor
        N, M, H = w.shape
        K = axes.shape[2]
        L = weights_t.shape[2]
        D = L // (K * n_pow)
        for n in prange(N):
            kept = np.empty(M, np.bool_)
            _kept_slots(w, has_dir, n, floor, kept)
            x = np.empty(M, w.dtype)
            g = np.empty(L, w.dtype)
            for h in range(H):
                _project_back(g, weights_t, grad, h, n)
                for m in range(M):
                    g_w[n, m, h] = 0
                for k in range(K):
                    _scaled_cosines(unit, n, axes[n, h, k], scale, x)
                    for m in range(M):
                        if kept[m]:
                            j, u = _split(x[m], half, top)
                            g_w[n, m, h] += _pair_horner(g, (k * D + j) * n_pow, u, n_pow)

    @njit(parallel=True, cache=True)
    def _direction_forward_kernel(w, unit, start, axis, sdir, coef, scale, half, top, n_pow,
                                  acc):  # pragma: no cover - jitted
        # w (N, H, M), unit (N, M, 3), start (N·H + 1,) entry offsets per (atom, head), axis (E,), sdir (E, 3),
        # coef (E,), acc (H, N, 3, D, P)
        N, H, M = w.shape
        for r in prange(N * H):
            n = r // H
            h = r - n * H
            acc[h, n] = 0
            for e in range(start[r], start[r + 1]):
                a = acc[h, n, axis[e]]
                for m in range(M):
                    wt = w[n, h, m]
                    if wt == 0:
                        continue
                    j, u = _nearest(_dot(unit, n, m, sdir[e]), scale, half, top)
                    _accumulate(a[j], coef[e] * wt, u, n_pow)
        return acc

    @njit(parallel=True, cache=True)
    def _direction_backward_kernel(w, unit, start, axis, sdir, coef, scale, half, top, n_pow, grad,
                                   g_w):  # pragma: no cover - jitted
        N, H, M = w.shape
        for r in prange(N * H):
            n = r // H
            h = r - n * H
            g_w[n, h] = 0
            for e in range(start[r], start[r + 1]):
                g = grad[h, n, axis[e]]
                for m in range(M):  # every slot: the derivative does not vanish where w does
                    j, u = _nearest(_dot(unit, n, m, sdir[e]), scale, half, top)
                    g_w[n, h, m] += coef[e] * _horner(g[j], u, n_pow)[0]


def _scalars(bins: int, dtype: torch.dtype) -> tuple:
    """(scale, half, top) of the kernels in the numpy type of ``dtype``."""
    return np_scalar((bins - 1) / 2, dtype), np_scalar(0.5, dtype), np_scalar(bins - 1, dtype)


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
            run_kernel(_forward_kernel, weight.detach().numpy(), cos.detach().numpy(), start.numpy(),
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
            run_kernel(_backward_kernel, weight.detach().numpy(), cos.detach().numpy(), start.numpy(),
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


class DenseMomentFeatures(torch.autograd.Function):
    """The moments with one row per atom straight from the padded slots, projected (Numba only): weight w
    (N, M, H), unit directions (N, M, 3), frame axes (N, H, K, 3) whose cosines the kernel forms itself, and
    ``weights`` (H, K·D·P, C) mapping each head's moments to its C features. Slots with ``has_dir`` False or
    w <= ``floor`` for every head are left out. Returns (H, N, C) = acc (H, N, K·D·P) @ weights.

    Differentiable in w and weights (callers use it when the directions and axes carry no gradient). It builds
    no flat slot list and no gathered cosines, and its backward never forms the (H, N, K·D·P) moment
    gradient: the kernel contracts the feature gradient with the projection per (atom, head) in cache.
    """

    @staticmethod
    def forward(ctx, w: Tensor, unit: Tensor, axes: Tensor, has_dir: Tensor, floor: float, weights: Tensor,
                bins: int, n_pow: int) -> Tensor:
        N, M, H = w.shape
        w, unit, axes = w.detach().contiguous(), unit.detach().contiguous(), axes.detach().contiguous()
        has_dir = has_dir.contiguous()
        acc = w.new_empty(H, N, axes.shape[2], bins, n_pow)
        run_kernel(_dense_forward_kernel, w.numpy(), unit.numpy(), axes.numpy(), has_dir.numpy(),
                   np_scalar(floor, w.dtype), *_scalars(bins, w.dtype), n_pow, acc.numpy())
        acc = acc.view(H, N, -1)
        ctx.save_for_backward(w, unit, axes, has_dir, weights, acc)
        ctx.floor, ctx.bins, ctx.n_pow = floor, bins, n_pow
        return torch.bmm(acc, weights.detach())

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, unit, axes, has_dir, weights, acc = ctx.saved_tensors
        grad = grad.contiguous()
        g_w = g_weights = None
        if ctx.needs_input_grad[0]:
            g_w = torch.empty_like(w)
            run_kernel(_dense_backward_kernel, w.numpy(), unit.numpy(), axes.numpy(), has_dir.numpy(),
                       np_scalar(ctx.floor, w.dtype), *_scalars(ctx.bins, w.dtype), ctx.n_pow,
                       weights.detach().transpose(1, 2).contiguous().numpy(), grad.numpy(), g_w.numpy())
        if ctx.needs_input_grad[5]:
            g_weights = torch.bmm(acc.transpose(1, 2), grad)
        return g_w, None, None, None, None, g_weights, None, None


class DirectionMoments(torch.autograd.Function):
    """The moments of weighted sets of frames (Numba only): rows are (atom, head, axis); entry e adds
    coef_e · w[n, h, m] for the cosines of atom n's slots with its direction sdir_e to row (n, h, axis_e).
    ``start`` (N·H + 1,) holds the entry offsets of each (atom, head) = n·H + h (entries sorted by it).
    Returns acc (H, N, 3, D, P); differentiable in w only.
    """

    @staticmethod
    def forward(ctx, w: Tensor, unit: Tensor, start: Tensor, axis: Tensor, sdir: Tensor, coef: Tensor, bins: int,
                n_pow: int) -> Tensor:
        N, H, _ = w.shape
        args = [t.detach().contiguous() for t in (w, unit, start, axis, sdir, coef)]
        ctx.save_for_backward(*args)
        ctx.bins, ctx.n_pow = bins, n_pow
        acc = w.new_empty(H, N, 3, bins, n_pow)
        run_kernel(_direction_forward_kernel, *(t.numpy() for t in args), *_scalars(bins, w.dtype), n_pow,
                   acc.numpy())
        return acc

    @staticmethod
    def backward(ctx, grad: Tensor):
        args = ctx.saved_tensors
        g_w = torch.empty_like(args[0])
        run_kernel(_direction_backward_kernel, *(t.numpy() for t in args), *_scalars(ctx.bins, g_w.dtype),
                   ctx.n_pow, grad.contiguous().numpy(), g_w.numpy())
        return g_w, None, None, None, None, None, None, None


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
