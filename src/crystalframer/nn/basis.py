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
    """D Gaussians on cosines in [−1, 1]: μ_m = −1 + 2m/(D−1), σ_a = s·2/(D−1).

    Besides direct evaluation, the basis offers a *moment expansion* (used for the paper's unwindowed
    basis): with j0 the nearest centre of c, u = (c − μ_j0)/ι ∈ [−½, ½] and k = d − j0,

        G_d(c) = exp(−s u²/2) · exp(s u k) · exp(−s k²/2),   s = ι²/σ² = 1/width²,

    and the middle factor is a Taylor series in u. So Σ_m w_m G_d(c_m) = Σ_(j0,p) A[(j0,p), d] · M_(j0,p)
    with moments M_(j0,p) = Σ_(m: nearest centre j0) w_m exp(−s u_m²/2) u_m^p. The number of terms is
    chosen so that the truncation error is below ``tol`` times the largest basis value (by default 1e-9 for
    float64 sums and 1e-7, float32's resolution, otherwise).
    """

    #: Truncation tolerance of the moment expansion per compute dtype: below float32 resolution of a basis
    #: value (≤ 1) for 32-bit and lower precision, well below it for float64.
    TOLERANCE = {torch.float64: 1e-9}
    TOLERANCE_LOW = 1e-7

    def __init__(self, bins: int = 64, width: float = 4.0, window: bool = False, tol: float | None = None):
        self.bins, self.width = bins, width
        self.step = 2.0 / (bins - 1)
        self.sigma = width * self.step
        ar = math.ceil(2 * width * CUT_SIGMA + 1)
        self.win = ar if (window and bins - ar > 8) else None
        self.s = 1.0 / width**2
        self.tol = tol
        self._order: dict = {}
        self._matrix: dict = {}

    def moment_count(self, dtype: torch.dtype = torch.float64) -> int:
        """Number P of Taylor moments for sums computed in ``dtype`` (e.g. 8 in float64, 6 in float32 for
        the default basis): the bound on the series remainder at |u| = ½ is below the tolerance."""
        tol = self.tol if self.tol is not None else self.TOLERANCE.get(dtype, self.TOLERANCE_LOW)
        if tol not in self._order:
            k = torch.arange(-(self.bins - 1), self.bins, dtype=torch.float64).abs()
            x = self.s * k / 2
            P = 1
            while P < 40:  # remainder of the Taylor series of exp(s u k) at |u| = 1/2, times exp(−s k²/2)
                bound = torch.exp(-self.s * k**2 / 2 + x + (P + 1) * torch.log(x.clamp_min(1e-300))
                                  - math.lgamma(P + 2))
                if bound.max() < tol:
                    break
                P += 1
            self._order[tol] = P + 1
        return self._order[tol]

    def moment_matrix(self, device=None, dtype=torch.float64) -> Tensor:
        """A: (D · P, D) with A[j0 · P + p, d] = (s k)^p / p! · exp(−s k²/2), k = d − j0, P for ``dtype``."""
        key = (device, dtype)
        if key not in self._matrix:
            D, P = self.bins, self.moment_count(dtype)
            k = (torch.arange(D)[None, :] - torch.arange(D)[:, None]).double()  # (j0, d)
            p = torch.arange(P, dtype=torch.float64)
            logfact = torch.lgamma(p + 1)
            A = (self.s * k[:, None, :]) ** p[None, :, None] / torch.exp(logfact)[None, :, None]
            A = A * torch.exp(-self.s * k**2 / 2)[:, None, :]
            self._matrix[key] = A.reshape(D * P, D).to(device=device, dtype=dtype)
        return self._matrix[key]

    def moments(self, cos: Tensor) -> tuple[Tensor, Tensor]:
        """(...,) cosines → nearest-centre index j0 (...,) and moments exp(−s u²/2) u^p (..., P)."""
        j0 = torch.round((cos + 1) / self.step).clamp(0, self.bins - 1)
        u = (cos - (j0 * self.step - 1)) / self.step
        e = torch.exp(-0.5 * self.s * u * u)
        pw = [e]
        for _ in range(self.moment_count(cos.dtype) - 1):
            pw.append(pw[-1] * u)
        return j0.long(), torch.stack(pw, -1)

    def centers(self, device=None, dtype=None) -> Tensor:
        return -1.0 + torch.arange(self.bins, device=device, dtype=dtype) * self.step

    def values(self, cos: Tensor) -> Tensor:
        """(...,) cosines → (..., D) basis values (window applied), computed in place."""
        mu = self.centers(cos.device, cos.dtype)
        out = cos[..., None] - mu
        out.mul_(out).mul_(-0.5 / self.sigma**2).exp_()
        if self.win is not None:
            m = torch.arange(self.bins, device=cos.device)
            end = torch.trunc(torch.clamp((cos + 1 + CUT_SIGMA * self.sigma) / self.step + 1, max=self.bins))
            end = end.clamp(min=self.win).long()[..., None]
            out.masked_fill_((m < end - self.win) | (m >= end), 0.0)
        return out

    __call__ = values


class _AngleHistogram(torch.autograd.Function):
    """hist[i, h, k, :] = Σ_m w[i, h, m] · basis(cos[i, h, m, k]), over chunks of atoms.

    Never holds the (N, H, M, 3, D) basis tensor: forward and backward recompute it chunk by chunk, so
    peak memory is bounded by ``chunk`` atoms. The sums over slots are batched matrix products.
    Gradients flow to the weights w and to the cosines (the latter only matter for frames that carry
    gradients, e.g. SPFrame).
    """

    @staticmethod
    def forward(ctx, w: Tensor, cos: Tensor, basis: AngleBasis, chunk: int) -> Tensor:
        N, H, M = w.shape
        K, D = cos.shape[-1], basis.bins
        out = w.new_empty(N, H, K, D)
        for a in range(0, N, chunk):
            b = min(N, a + chunk)
            g = basis.values(cos[a:b]).view((b - a) * H, M, K * D)
            out[a:b] = torch.bmm(w[a:b].reshape(-1, 1, M), g).view(b - a, H, K, D)
        ctx.save_for_backward(w, cos)
        ctx.basis, ctx.chunk = basis, chunk
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, cos = ctx.saved_tensors
        basis, chunk = ctx.basis, ctx.chunk
        N, H, M = w.shape
        K, D = cos.shape[-1], basis.bins
        need_w, need_cos = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gw = torch.empty_like(w) if need_w else None
        gc = torch.empty_like(cos) if need_cos else None
        mu = basis.centers(cos.device, cos.dtype)
        for a in range(0, N, chunk):
            b = min(N, a + chunk)
            c = b - a
            g = basis.values(cos[a:b])  # (c, H, M, K, D)
            gr = grad[a:b].reshape(c * H, K * D, 1)
            if need_w:
                gw[a:b] = torch.bmm(g.view(c * H, M, K * D), gr).view(c, H, M)
            if need_cos:
                # d/dcos exp(-(x-μ)²/2σ²) = (μ-x)/σ² · value; the window edges are piecewise constant.
                g.mul_((mu - cos[a:b, ..., None]) / basis.sigma**2)
                gc[a:b] = torch.einsum("chkd,chmkd->chmk", grad[a:b], g) * w[a:b, :, :, None]
        return gw, gc, None, None


class _MomentScatter(torch.autograd.Function):
    """Moments of :class:`AngleBasis` for a flat list of elements (weight ω_e, cosine c_e, row r_e):

        acc[p, r, j0] = Σ_(e: r_e = r, nearest centre j0) ω_e exp(−s u_e²/2) u_e^p.

    The (elements × P) moments are never stored: forward builds them one power at a time, backward
    recomputes them with Horner sums. Gradients flow to ω and c. One 1-D scatter per power into its own
    (rows × D) block was measured faster than any interleaved layout.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, cos: Tensor, row: Tensor, n_rows: int, basis: AngleBasis) -> Tensor:
        D, P = basis.bins, basis.moment_count(cos.dtype)
        u = (cos + 1).mul_(1.0 / basis.step)  # position in units of the centre spacing
        j0 = torch.round(u).clamp_(0, D - 1)
        u.sub_(j0)
        index = row * D + j0.long()
        e = torch.exp(u.square().mul_(-0.5 * basis.s))
        term = e * weight
        acc = cos.new_zeros(P, n_rows * D)
        for p in range(P):
            acc[p].index_add_(0, index, term)
            if p + 1 < P:
                term.mul_(u)
        ctx.save_for_backward(weight, u, e, index)
        ctx.basis = basis
        return acc.view(P, n_rows, D)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, u, e, index = ctx.saved_tensors
        basis = ctx.basis
        P = grad.shape[0]
        grad = grad.reshape(P, -1)
        poly = grad[P - 1].index_select(0, index)  # Σ_p g_p u^p by Horner
        g = [None] * P
        for p in range(P - 2, -1, -1):
            g[p] = grad[p].index_select(0, index)
            poly.mul_(u).add_(g[p])
        g_weight = poly * e if ctx.needs_input_grad[0] else None
        g_cos = None
        if ctx.needs_input_grad[1]:
            dpoly = grad[P - 1].index_select(0, index) * (P - 1)  # Σ_p p g_p u^(p−1)
            for p in range(P - 2, 0, -1):
                dpoly = dpoly * u + p * g[p]
            g_cos = weight * e * (dpoly - basis.s * u * poly) / basis.step
        return g_weight, g_cos, None, None, None


def _project_moments(acc: Tensor, basis: AngleBasis, proj: Tensor) -> Tensor:
    """acc (P, K, H, N, D) moments → (N, H, C) = Σ_(k,p,j0) acc · (A W_k,h)[p, j0, c]."""
    P, K, H, N, D = acc.shape
    A = basis.moment_matrix(acc.device, acc.dtype).view(D, P, D)  # [j0, p, d]
    proj_a = torch.einsum("jpd,khcd->pkhjc", A, proj)  # (P, K, H, D_j0, C)
    C = proj.shape[2]
    out = torch.bmm(acc.reshape(P * K * H, N, D), proj_a.reshape(P * K * H, D, C))
    return out.view(P * K, H, N, C).sum(0).transpose(0, 1)


def angle_features(w: Tensor, cos: Tensor, frame_w: Tensor, basis: AngleBasis, proj: Tensor) -> Tensor:
    """Projected angular encodings Σ_t fw_t Σ_k W_k,h Σ_m w_m b(cos_mtk), by the moment expansion.

    Args:
        w: (N, H, M) attention weights of the slots.
        cos: (N, H, M, T, K) cosines of each slot with axis k of candidate frame t.
        frame_w: (N, H, T) weights of the candidate frames (sum to 1).
        proj: (K, H, C, D) projections W_k,h.
    Returns:
        (N, H, C). Exact to the expansion's truncation (:meth:`AngleBasis.moment_count`); differentiable in
        w, cos, frame_w and proj.
    """
    if basis.win is not None:
        raise ValueError("the moment expansion is for the full basis; use angle_histogram with windows")
    N, H, M, T, K = cos.shape
    dev = cos.device
    row = ((torch.arange(K, device=dev) * H + torch.arange(H, device=dev)[:, None, None, None]) * N
           + torch.arange(N, device=dev)[:, None, None, None, None])  # (N, H, 1, 1, K)
    weight = w[:, :, :, None, None] * frame_w[:, :, None, :, None]
    acc = _MomentScatter.apply(weight.expand(cos.shape).reshape(-1), cos.reshape(-1),
                               row.expand(cos.shape).reshape(-1), K * H * N, basis)
    return _project_moments(acc.view(-1, K, H, N, basis.bins), basis, proj)


def slot_angle_features(w: Tensor, cos: Tensor, atom: Tensor, n_atoms: int, basis: AngleBasis,
                        proj: Tensor) -> Tensor:
    """:func:`angle_features` for one frame per (atom, head) on a flat list of image slots (no padding).

    Args:
        w: (S, H) attention weights of the slots; cos: (S, H, K) cosines with the frame axes;
        atom: (S,) the atom (centre) each slot belongs to; proj: (K, H, C, D).
    Returns:
        (n_atoms, H, C).
    """
    if basis.win is not None:
        raise ValueError("the moment expansion is for the full basis; use angle_histogram with windows")
    S, H, K = cos.shape
    dev = cos.device
    row = (torch.arange(K, device=dev) * H + torch.arange(H, device=dev)[:, None]) * n_atoms + atom[:, None, None]
    acc = _MomentScatter.apply(w[:, :, None].expand(S, H, K).reshape(-1), cos.reshape(-1),
                               row.reshape(-1), K * H * n_atoms, basis)
    return _project_moments(acc.view(-1, K, H, n_atoms, basis.bins), basis, proj)


def row_angle_features(w: Tensor, cos: Tensor, basis: AngleBasis, proj: Tensor) -> Tensor:
    """Σ_k W_k Σ_m w_rm b(cos_rmk) for R rows of padded slots, over the entries with w ≠ 0 only.

    Args:
        w: (R, M) slot weights, 0 for padding; cos: (R, M, K); proj: (K, C, D).
    Returns:
        (R, C). Entries with w = 0 are skipped, so they get no gradient w.r.t. w: callers pass softmax
        weights (times a 0/1 mask), whose backward multiplies that gradient by w = 0 anyway.
    """
    r, m = torch.nonzero(w.detach() != 0, as_tuple=True)
    return slot_angle_features(w[r, m][:, None], cos[r, m][:, None], r, w.shape[0], basis, proj[:, None])[:, 0]


def angle_histogram(w: Tensor, cos: Tensor, basis: AngleBasis, budget: int = 4_000_000) -> Tensor:
    """Attention-weighted angular basis sums b̄ (spec §3.6), aggregated over every image of atom i.

    Args:
        w: (N, H, M) attention weight of each image slot (0 for slots without a direction).
        cos: (N, H, M, K) direction cosines e_k · r̂ of each slot for each frame axis.
        budget: basis values held at once (bounds peak memory to a few × budget × 4 bytes).
    Returns:
        (N, H, K, D).
    """
    N, H, M, K = cos.shape
    chunk = max(1, budget // max(1, M * H * K * basis.bins))
    return _AngleHistogram.apply(w.contiguous(), cos.contiguous(), basis, chunk)
