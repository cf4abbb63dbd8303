"""Moment sums of the angular basis over image slots: the hot loop of the frame models.

The angular features Σ_k W_k,h Σ_slots w b(c) (c the cosine of a slot with a frame axis) are linear in a set
of moments of the weighted cosines, which :class:`crystalframer.nn.basis.AngleBasis` maps to the basis sums.
Two expansions are used, both exact to a truncation below the compute dtype's resolution of a basis value:

- *power moments* per basis centre, for slots s (grouped by their row r, e.g. the atom they belong to), heads
  h and frame axes k, with x = (c_shk + 1)/ι the position of the cosine in units of the centre spacing,
  j = ⌊x + ½⌋ its nearest centre and u = x − j ∈ [−½, ½]:

      acc[h, r, k, j, p] = Σ_(s in row r, nearest centre j) ω_sh u^p,        p < P;

- *Chebyshev moments* μ[h, r, k, l] = Σ_(s in row r) ω_sh T_l(c_shk), l < L: the basis functions are smooth
  on [−1, 1], so L ≈ 46 terms per axis (float32) replace 64 centres × 6 powers, need no binning and vectorise
  over the slots.

- :class:`SlotMoments` (power moments) takes a flat list of slots with their cosines and is differentiable
  in them too, with two implementations: a Numba kernel (CPU, used when ``numba`` is installed:
  ``pip install "crystalframer[fast]"``) that keeps each row's accumulator in cache and runs the rows in
  parallel on torch's thread count, and ``index_add_`` scatters in PyTorch (any device; the reference for
  the kernels in the tests).
- :class:`DenseChebyshevFeatures` (Numba only) takes the padded (atom, slot) layout of the attention with the
  directions and frame axes, forms the cosines itself, so no flat slot list is built, and applies the
  projection; its backward sums each slot's Chebyshev series by Clenshaw's recurrence.
- :class:`DirectionChebyshev` (Numba only) does the same for weighted sets of frames (tie averaging), one entry
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

    # Reassociation lets the slot loops of the Chebyshev kernels run as vector reductions; each atom's sums
    # stay on one thread in a fixed order, so results do not depend on the thread count.
    _VECTOR = {"reassoc", "contract"}

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
    def _packed_slots(w, unit, has_dir, n, floor):  # pragma: no cover - jitted
        """The kept slots of atom n, packed: (their indices, directions x, y, z, weights (H, ·), their number)."""
        M, H = w.shape[1], w.shape[2]
        idx = np.empty(M, np.int64)
        ux, uy, uz = np.empty(M, w.dtype), np.empty(M, w.dtype), np.empty(M, w.dtype)
        wt = np.empty((H, M), w.dtype)
        cnt = 0
        for m in range(M):
            if _kept(w, has_dir, n, m, floor):
                idx[cnt] = m
                ux[cnt], uy[cnt], uz[cnt] = unit[n, m, 0], unit[n, m, 1], unit[n, m, 2]
                for h in range(H):
                    wt[h, cnt] = w[n, m, h]
                cnt += 1
        return idx, ux, uy, uz, wt, cnt

    @njit(inline="always")
    def _doubled_cosines(ux, uy, uz, v, cnt, x2):  # pragma: no cover - jitted
        """x2_i = 2 r̂_i · v (exactly twice the rounded cosine: doubling is exact)."""
        v0, v1, v2 = v[0] + v[0], v[1] + v[1], v[2] + v[2]
        for i in range(cnt):
            x2[i] = ux[i] * v0 + uy[i] * v1 + uz[i] * v2

    @njit(inline="always")
    def _chebyshev_sums(x2, ta, tb, cnt, out, zero):  # pragma: no cover - jitted
        """out[l] += Σ_i t_l,i for l < len(out), with ta, tb = t_0, t_1 on entry and t_(l+1) = x2 t_l − t_(l−1):
        the Chebyshev recurrence, here of w·T_l(x). Four terms per pass over i, so ta and tb are loaded and
        stored once per four terms and four sums run at once. Overwrites ta and tb."""
        L = out.shape[0]
        s0 = zero
        s1 = zero
        for i in range(cnt):
            s0 += ta[i]
            s1 += tb[i]
        out[0] += s0
        if L > 1:
            out[1] += s1
        l = 2
        while l + 3 < L:
            s0 = zero
            s1 = zero
            s2 = zero
            s3 = zero
            for i in range(cnt):
                x = x2[i]
                a = x * tb[i] - ta[i]
                b = x * a - tb[i]
                c = x * b - a
                d = x * c - b
                ta[i] = c
                tb[i] = d
                s0 += a
                s1 += b
                s2 += c
                s3 += d
            out[l] += s0
            out[l + 1] += s1
            out[l + 2] += s2
            out[l + 3] += s3
            l += 4
        while l < L:
            s0 = zero
            for i in range(cnt):
                a = x2[i] * tb[i] - ta[i]
                ta[i] = tb[i]
                tb[i] = a
                s0 += a
            out[l] += s0
            l += 1

    @njit(inline="always")
    def _clenshaw(x2, ba, bb, g, cnt, half, res):  # pragma: no cover - jitted
        """res_i += Σ_l g_l T_l(x_i) by Clenshaw's recurrence b_l = g_l + 2x b_(l+1) − b_(l+2), four steps per
        pass over i. Uses ba and bb as scratch."""
        L = g.shape[0]
        for i in range(cnt):
            ba[i] = 0  # b_(l+2)
            bb[i] = 0  # b_(l+1)
        l = L - 1
        while l >= 4:
            g3, g2, g1, g0 = g[l], g[l - 1], g[l - 2], g[l - 3]
            for i in range(cnt):
                x = x2[i]
                a = g3 + x * bb[i] - ba[i]
                b = g2 + x * a - bb[i]
                c = g1 + x * b - a
                d = g0 + x * c - b
                ba[i] = c
                bb[i] = d
            l -= 4
        while l >= 1:
            gl = g[l]
            for i in range(cnt):
                a = gl + x2[i] * bb[i] - ba[i]
                ba[i] = bb[i]
                bb[i] = a
            l -= 1
        g0 = g[0]
        for i in range(cnt):
            res[i] += g0 + half * x2[i] * bb[i] - ba[i]

    @njit(parallel=True, cache=True, fastmath=_VECTOR)
    def _dense_forward_kernel(w, unit, axes, has_dir, floor, half, out):  # pragma: no cover - jitted
        # w (N, M, H), unit (N, M, 3), axes (N, H, K, 3), has_dir (N, M), out (H, N, K, L)
        N, M, H = w.shape
        K = axes.shape[2]
        for n in prange(N):
            idx, ux, uy, uz, wt, cnt = _packed_slots(w, unit, has_dir, n, floor)
            x2, ta, tb = np.empty(cnt, w.dtype), np.empty(cnt, w.dtype), np.empty(cnt, w.dtype)
            for h in range(H):
                for k in range(K):
                    _doubled_cosines(ux, uy, uz, axes[n, h, k], cnt, x2)
                    for i in range(cnt):
                        ta[i] = wt[h, i]
                        tb[i] = wt[h, i] * x2[i] * half
                    o = out[h, n, k]
                    o[:] = 0
                    _chebyshev_sums(x2, ta, tb, cnt, o, half - half)
        return out

    @njit(parallel=True, cache=True, fastmath=_VECTOR)
    def _dense_backward_kernel(w, unit, axes, has_dir, floor, half, G, g_w):  # pragma: no cover - jitted
        # G (H, N, K, L): the feature gradient contracted with the projection; g_w (N, M, H)
        N, M, H = w.shape
        K = axes.shape[2]
        for n in prange(N):
            idx, ux, uy, uz, wt, cnt = _packed_slots(w, unit, has_dir, n, floor)
            x2, ba, bb = np.empty(cnt, w.dtype), np.empty(cnt, w.dtype), np.empty(cnt, w.dtype)
            res = np.empty(cnt, w.dtype)
            g_w[n] = 0
            for h in range(H):
                res[:] = 0
                for k in range(K):
                    _doubled_cosines(ux, uy, uz, axes[n, h, k], cnt, x2)
                    _clenshaw(x2, ba, bb, G[h, n, k], cnt, half, res)
                for i in range(cnt):
                    g_w[n, idx[i], h] = res[i]

    @njit(parallel=True, cache=True, fastmath=_VECTOR)
    def _direction_forward_kernel(w, unit, start, axis, sdir, coef, half, out):  # pragma: no cover - jitted
        # w (N, H, M), unit (N, M, 3), start (N·H + 1,) entry offsets per (atom, head), axis (E,), sdir (E, 3),
        # coef (E,), out (H, N, 3, L)
        N, H, M = w.shape
        for r in prange(N * H):
            n = r // H
            h = r - n * H
            out[h, n] = 0
            if start[r + 1] == start[r]:
                continue
            ux, uy, uz = np.empty(M, w.dtype), np.empty(M, w.dtype), np.empty(M, w.dtype)
            wr = np.empty(M, w.dtype)
            cnt = 0
            for m in range(M):  # slots with w = 0 add nothing
                if w[n, h, m] != 0:
                    ux[cnt], uy[cnt], uz[cnt] = unit[n, m, 0], unit[n, m, 1], unit[n, m, 2]
                    wr[cnt] = w[n, h, m]
                    cnt += 1
            x2, ta, tb = np.empty(cnt, w.dtype), np.empty(cnt, w.dtype), np.empty(cnt, w.dtype)
            for e in range(start[r], start[r + 1]):
                _doubled_cosines(ux, uy, uz, sdir[e], cnt, x2)
                c = coef[e]
                for i in range(cnt):
                    ta[i] = c * wr[i]
                    tb[i] = ta[i] * x2[i] * half
                _chebyshev_sums(x2, ta, tb, cnt, out[h, n, axis[e]], half - half)
        return out

    @njit(parallel=True, cache=True, fastmath=_VECTOR)
    def _direction_backward_kernel(w, unit, start, axis, sdir, coef, half, G, g_w):  # pragma: no cover - jitted
        # G (H, N, 3, L) the gradient of out; g_w (N, H, M) for every slot: the derivative does not vanish
        # where w does
        N, H, M = w.shape
        for r in prange(N * H):
            n = r // H
            h = r - n * H
            res = g_w[n, h]
            res[:] = 0
            if start[r + 1] == start[r]:
                continue
            ux, uy, uz = np.empty(M, w.dtype), np.empty(M, w.dtype), np.empty(M, w.dtype)
            for m in range(M):
                ux[m], uy[m], uz[m] = unit[n, m, 0], unit[n, m, 1], unit[n, m, 2]
            x2, ba, bb = np.empty(M, w.dtype), np.empty(M, w.dtype), np.empty(M, w.dtype)
            gc = np.empty(G.shape[3], w.dtype)
            for e in range(start[r], start[r + 1]):
                _doubled_cosines(ux, uy, uz, sdir[e], M, x2)
                g, c = G[h, n, axis[e]], coef[e]
                for l in range(gc.shape[0]):
                    gc[l] = g[l] * c
                _clenshaw(x2, ba, bb, gc, M, half, res)


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


class DenseChebyshevFeatures(torch.autograd.Function):
    """Angular features of the padded slots with one frame per (atom, head), from Chebyshev moments (Numba
    only): weight w (N, M, H), unit directions (N, M, 3), frame axes (N, H, K, 3) whose cosines the kernel
    forms itself, and ``weights`` (H, K·L, C) mapping each head's moments (k, l) to its C features. Slots with
    ``has_dir`` False or w <= ``floor`` for every head are left out. Returns (H, N, C) = μ (H, N, K·L) @ weights
    with μ[h, n, k, l] = Σ_m w[n, m, h] T_l(e_(n,h,k) · r̂_nm).

    Differentiable in w and weights (callers use it when the directions and axes carry no gradient). It builds
    no flat slot list and no gathered cosines; its backward contracts the feature gradient with the weights
    (one small matrix product) and sums each slot's Chebyshev series by Clenshaw's recurrence.
    """

    @staticmethod
    def forward(ctx, w: Tensor, unit: Tensor, axes: Tensor, has_dir: Tensor, floor: float, weights: Tensor,
                n_terms: int) -> Tensor:
        N, M, H = w.shape
        w, unit, axes = w.detach().contiguous(), unit.detach().contiguous(), axes.detach().contiguous()
        has_dir = has_dir.contiguous()
        mu = w.new_empty(H, N, axes.shape[2], n_terms)
        run_kernel(_dense_forward_kernel, w.numpy(), unit.numpy(), axes.numpy(), has_dir.numpy(),
                   np_scalar(floor, w.dtype), np_scalar(0.5, w.dtype), mu.numpy())
        mu = mu.view(H, N, -1)
        ctx.save_for_backward(w, unit, axes, has_dir, weights, mu)
        ctx.floor, ctx.n_terms = floor, n_terms
        return torch.bmm(mu, weights.detach())

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, unit, axes, has_dir, weights, mu = ctx.saved_tensors
        grad = grad.to(w.dtype).contiguous()
        g_w = g_weights = None
        # the forward ran without autocast (the attention disables it); so must the products here
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                G = torch.bmm(grad, weights.detach().transpose(1, 2))  # (H, N, K·L)
                g_w = torch.empty_like(w)
                run_kernel(_dense_backward_kernel, w.numpy(), unit.numpy(), axes.numpy(), has_dir.numpy(),
                           np_scalar(ctx.floor, w.dtype), np_scalar(0.5, w.dtype),
                           G.view(mu.shape[0], mu.shape[1], axes.shape[2], ctx.n_terms).numpy(), g_w.numpy())
            if ctx.needs_input_grad[5]:
                g_weights = torch.bmm(mu.transpose(1, 2), grad)
        return g_w, None, None, None, None, g_weights, None


class DirectionChebyshev(torch.autograd.Function):
    """Chebyshev moments of weighted sets of frames (Numba only): rows are (atom, head, axis); entry e adds
    coef_e · w[n, h, m] T_l(sdir_e · r̂_nm) to row (n, h, axis_e). ``start`` (N·H + 1,) holds the entry
    offsets of each (atom, head) = n·H + h (entries sorted by it). Returns μ (H, N, 3, L); differentiable in w
    only.
    """

    @staticmethod
    def forward(ctx, w: Tensor, unit: Tensor, start: Tensor, axis: Tensor, sdir: Tensor, coef: Tensor,
                n_terms: int) -> Tensor:
        N, H, _ = w.shape
        args = [t.detach().contiguous() for t in (w, unit, start, axis, sdir, coef)]
        ctx.save_for_backward(*args)
        mu = w.new_empty(H, N, 3, n_terms)
        run_kernel(_direction_forward_kernel, *(t.numpy() for t in args), np_scalar(0.5, w.dtype), mu.numpy())
        return mu

    @staticmethod
    def backward(ctx, grad: Tensor):
        args = ctx.saved_tensors
        g_w = torch.empty_like(args[0])
        run_kernel(_direction_backward_kernel, *(t.numpy() for t in args), np_scalar(0.5, g_w.dtype),
                   grad.contiguous().numpy(), g_w.numpy())
        return g_w, None, None, None, None, None, None


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
