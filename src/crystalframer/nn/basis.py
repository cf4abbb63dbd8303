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

from crystalframer.nn.moments import DenseChebyshevFeatures, DirectionChebyshev, SlotMoments
from crystalframer.numba_support import use_numba

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
    basis). With ι the centre spacing, x = (c + 1)/ι ∈ [0, D − 1] the position of c, j = ⌊x + ½⌋ its
    nearest centre, u = x − j ∈ [−½, ½], k = d − j and s = ι²/σ² = 1/width²,

        G_d(c) = exp(−s (u − k)²/2) = exp(−s k²/2) · exp(s k u − s u²/2) = Σ_p A[j, p, d] u^p,

    a power series in u whose coefficients A[j, p, d] = exp(−s k²/2) Σ_m (s k)^(p−2m)/(p−2m)! · (−s/2)^m/m!
    depend on k only. So Σ_m w_m G_d(c_m) = Σ_(j,p) A[j, p, d] · M_(j,p) with the plain power moments
    M_(j,p) = Σ_(m: nearest centre j) w_m u_m^p (no exponential per slot). The number P of terms is the
    smallest with a truncation error below ``tol`` for every u and k (by default 1e-12 for float64 sums, so that
    float64 results of the two expansions agree to ~1e-12, and 1e-7, float32's resolution of a basis value
    ≤ 1, otherwise): P = 10 / 6 for the default basis.

    The CPU kernels use a *Chebyshev expansion* instead: each G_d is smooth on [−1, 1], so
    G_d(c) ≈ Σ_(l<L) C[d, l] T_l(c) with Chebyshev polynomials T_l, and Σ_m w_m G_d(c_m) = Σ_l C[d, l] μ_l with
    the Chebyshev moments μ_l = Σ_m w_m T_l(c_m): L numbers per axis instead of D·P, computed by the
    three-term recurrence without binning. L is the smallest with Σ_(l≥L) |C[d, l]| (a bound on the error,
    since |T_l| ≤ 1) below the same tolerance for every d: L = 63 / 46 for the default basis.
    """

    #: Chebyshev interpolation nodes for the coefficients: far beyond any useful L, so aliasing is at
    #: float64 rounding; a basis that needs more than half as many terms is left to the moment expansion.
    CHEBYSHEV_NODES = 512

    #: Truncation tolerance of both expansions per compute dtype: below float32 resolution of a basis value
    #: (≤ 1) for 32-bit and lower precision, far below it for float64.
    TOLERANCE = {torch.float64: 1e-12}
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
        self._cheb: Tensor | None = None
        self._cheb_count: dict = {}
        self._cheb_matrix: dict = {}

    def _tolerance(self, dtype: torch.dtype) -> float:
        return self.tol if self.tol is not None else self.TOLERANCE.get(dtype, self.TOLERANCE_LOW)

    def _series(self, P: int, k: Tensor) -> Tensor:
        """(P, len(k)) coefficients of u^p in exp(−s (u − k)²/2), float64."""
        out = torch.zeros(P, k.shape[0], dtype=torch.float64)
        for p in range(P):
            for m in range(p // 2 + 1):
                out[p] += (self.s * k) ** (p - 2 * m) * ((-self.s / 2) ** m / (
                    math.factorial(p - 2 * m) * math.factorial(m)))
        return out * torch.exp(-self.s * k**2 / 2)

    def moment_count(self, dtype: torch.dtype = torch.float64) -> int:
        """Number P of moments for sums computed in ``dtype``: the series error, measured on a fine grid of
        u ∈ [−½, ½] for every k, is below the tolerance."""
        tol = self._tolerance(dtype)
        if tol not in self._order:
            k = torch.arange(-self.bins, self.bins + 1, dtype=torch.float64)
            u = torch.linspace(-0.5, 0.5, 401, dtype=torch.float64)[:, None]
            exact = torch.exp(-self.s * (u - k) ** 2 / 2)
            P = 1
            while (sum(c * u**p for p, c in enumerate(self._series(P, k))) - exact).abs().max() >= tol:
                P += 1
                if P > 40:
                    raise ValueError(f"the moment expansion of {self.bins} angle bins of width {self.width} "
                                     f"does not reach the tolerance {tol} with 40 terms")
            self._order[tol] = P
        return self._order[tol]

    def moment_matrix(self, device=None, dtype=torch.float64) -> Tensor:
        """A: (D, P, D) with A[j, p, d] the coefficient of u^p in G_d around centre j, P for ``dtype``."""
        key = (device, dtype)
        if key not in self._matrix:
            D, P = self.bins, self.moment_count(dtype)
            k = (torch.arange(D)[None, :] - torch.arange(D)[:, None]).double()  # (j, d)
            A = self._series(P, k.reshape(-1)).view(P, D, D).transpose(0, 1)
            self._matrix[key] = A.contiguous().to(device=device, dtype=dtype)
        return self._matrix[key]

    def _chebyshev_coefficients(self) -> Tensor:
        """(D, Q) Chebyshev coefficients of every G_d on [−1, 1] from its values at the Q Chebyshev nodes
        x_q = cos(π(q + ½)/Q), float64."""
        if self._cheb is None:
            Q = self.CHEBYSHEV_NODES
            q = torch.arange(Q, dtype=torch.float64) + 0.5
            values = self.values(torch.cos(math.pi * q / Q))  # (Q, D)
            coef = values.T @ torch.cos(math.pi * q[:, None] * torch.arange(Q, dtype=torch.float64) / Q) * (2 / Q)
            coef[:, 0] /= 2
            self._cheb = coef
        return self._cheb

    def chebyshev_count(self, dtype: torch.dtype = torch.float64) -> int | None:
        """Number L of Chebyshev terms for sums computed in ``dtype`` (see the class docstring), or None if
        more than half the interpolation nodes would be needed (a very narrow basis: the moment expansion
        serves it)."""
        tol = self._tolerance(dtype)
        if tol not in self._cheb_count:
            tail = self._chebyshev_coefficients().abs().flip(-1).cumsum(-1).flip(-1).amax(0)  # tail[L]
            count = int(torch.count_nonzero(tail >= tol))  # the tail decreases with L
            self._cheb_count[tol] = count if count <= self.CHEBYSHEV_NODES // 2 else None
        return self._cheb_count[tol]

    def chebyshev_matrix(self, device=None, dtype=torch.float64) -> Tensor:
        """C: (D, L) with G_d(c) ≈ Σ_l C[d, l] T_l(c), L for ``dtype``."""
        key = (device, dtype)
        if key not in self._cheb_matrix:
            L = self.chebyshev_count(dtype)
            if L is None:
                raise ValueError(f"{self.bins} angle bins of width {self.width} need more than "
                                 f"{self.CHEBYSHEV_NODES // 2} Chebyshev terms")
            self._cheb_matrix[key] = self._chebyshev_coefficients()[:, :L].contiguous().to(device=device, dtype=dtype)
        return self._cheb_matrix[key]

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


def slot_angle_features(w: Tensor, cos: Tensor, atom: Tensor, n_atoms: int, basis: AngleBasis,
                        proj: Tensor) -> Tensor:
    """Σ_k W_k,h Σ_(slots s of atom i) w_sh b(cos_shk) on a flat list of image slots (no padding), by the
    moment expansion of :class:`AngleBasis` (exact to its truncation, :meth:`AngleBasis.moment_count`).

    Args:
        w: (S, H) attention weights of the slots; cos: (S, H, K) cosines with the frame axes;
        atom: (S,) the atom (row) each slot belongs to; proj: (K, H, C, D).
    Returns:
        (n_atoms, H, C); differentiable in w, cos and proj.
    """
    _require_full_basis(basis)
    S = cos.shape[0]
    if S > 1 and bool((atom[1:] < atom[:-1]).any()):  # the moment sums need each atom's slots together
        order = torch.sort(atom, stable=True).indices
        w, cos, atom = w[order], cos[order], atom[order]
    start = torch.zeros(n_atoms + 1, dtype=torch.long, device=atom.device)
    start[1:] = torch.cumsum(torch.bincount(atom, minlength=n_atoms), 0)
    fast = use_numba(cos)
    acc = SlotMoments.apply(w, cos, start, basis.bins, basis.moment_count(cos.dtype), fast)
    return _project_moments(acc, fast, basis, proj)


def dense_angle_features(w: Tensor, unit: Tensor, axes: Tensor, has_dir: Tensor, floor: float,
                         basis: AngleBasis, proj: Tensor) -> Tensor:
    """:func:`slot_angle_features` of padded slots with one frame per (atom, head), without a flat slot
    list, by the Chebyshev expansion of :class:`AngleBasis`: the Numba kernel forms the cosines e_k · r̂ itself
    (CPU, differentiable in w and proj, not in the directions or axes; see :func:`moment_kernel_applies` for
    when it is used).

    Args:
        w: (N, M, H) attention weights; unit: (N, M, 3) directions r̂; axes: (N, H, K, 3) frame axes;
        has_dir: (N, M) slots with a direction; slots with w <= ``floor`` for every head are left out;
        proj: (K, H, C, D) as in :func:`slot_angle_features`.
    Returns:
        (N, H, C).
    """
    _require_full_basis(basis)
    out = DenseChebyshevFeatures.apply(w, unit, axes, has_dir, floor, _chebyshev_weights(basis, proj, w.dtype),
                                       basis.chebyshev_count(w.dtype))
    return out.transpose(0, 1)


def direction_angle_features(w: Tensor, unit: Tensor, row: Tensor, axis: Tensor, sdir: Tensor, coef: Tensor,
                             basis: AngleBasis, proj: Tensor) -> Tensor:
    """Angular features of weighted frame sets from their distinct axis directions (Numba, CPU; the
    Chebyshev expansion of :class:`AngleBasis`):
    out[n, h] = Σ_(entries e of (n, h)) coef_e Σ_c W_(axis_e),h Σ_m w[n, h, m] b(sdir_e · r̂_nm).

    Args:
        w: (N, H, M) slot weights (0 for slots without a direction); unit: (N, M, 3) directions r̂;
        row: (E,) n·H + h of each entry, non-decreasing; axis: (E,) its frame axis; sdir: (E, 3) its
        direction; coef: (E,) its weight (the frame weights).
    Returns:
        (N, H, C); differentiable in w (see :func:`moment_kernel_applies`).
    """
    _require_full_basis(basis)
    N, H, _ = w.shape
    start = torch.zeros(N * H + 1, dtype=torch.long, device=w.device)
    start[1:] = torch.cumsum(torch.bincount(row, minlength=N * H), 0)
    mu = DirectionChebyshev.apply(w, unit, start, axis, sdir.to(w.dtype), coef.to(w.dtype),
                                  basis.chebyshev_count(w.dtype))
    out = torch.bmm(mu.view(H, N, -1), _chebyshev_weights(basis, proj, w.dtype))
    return _atom_major(out)


def moment_kernel_applies(basis, w: Tensor, *inputs: Tensor) -> bool:
    """Whether the Numba Chebyshev kernels (:func:`dense_angle_features`, :func:`direction_angle_features`)
    serve these inputs: the full (unwindowed) :class:`AngleBasis` with a Chebyshev expansion, the kernels on
    for ``w``, and the other ``inputs`` (directions, axes, frame weights) of ``w``'s dtype without gradients,
    which the kernels do not give."""
    return (isinstance(basis, AngleBasis) and basis.win is None and use_numba(w)
            and all(t.dtype == w.dtype and not t.requires_grad for t in inputs)
            and basis.chebyshev_count(w.dtype) is not None)


def _require_full_basis(basis: AngleBasis) -> None:
    if basis.win is not None:
        raise ValueError("the moment expansion is for the full basis; use angle_histogram with windows")


def _moment_weights(basis: AngleBasis, proj: Tensor, dtype: torch.dtype) -> Tensor:
    """proj (K, H, C, D) → (H, K·D·P, C): each head's map from its power moments (k, j, p) to its features."""
    A = basis.moment_matrix(proj.device, dtype)  # [j, p, d]
    return torch.einsum("jpd,khcd->hkjpc", A, proj).reshape(proj.shape[1], -1, proj.shape[2])


def _chebyshev_weights(basis: AngleBasis, proj: Tensor, dtype: torch.dtype) -> Tensor:
    """proj (K, H, C, D) → (H, K·L, C): each head's map from its Chebyshev moments (k, l) to its features."""
    Cm = basis.chebyshev_matrix(proj.device, dtype)  # [d, l]
    return torch.einsum("dl,khcd->hklc", Cm, proj.to(dtype)).reshape(proj.shape[1], -1, proj.shape[2])


def _atom_major(out: Tensor) -> Tensor:
    """Head-major features (H, N, C) from a matrix product → (N, H, C), a view."""
    if out.requires_grad:  # the caller's gradient arrives as an (N, H, C) tensor: bmm wants it head-major
        out.register_hook(lambda g: None if g is None else g.contiguous())
    return out.transpose(0, 1)


def _project_moments(acc: Tensor, fast: bool, basis: AngleBasis, proj: Tensor) -> Tensor:
    """Moments (H, N, K, D, P) if ``fast`` else (P, H, N, K, D) → Σ_k W_k,h b̄ (N, H, C)."""
    H, C = proj.shape[1], proj.shape[2]
    if fast:  # one matrix product per head
        out = torch.bmm(acc.view(H, acc.shape[1], -1), _moment_weights(basis, proj, acc.dtype))
    else:  # one per (power, head)
        A = basis.moment_matrix(acc.device, acc.dtype)  # [j, p, d]
        P, n_atoms = acc.shape[0], acc.shape[2]
        weights = torch.einsum("jpd,khcd->phkjc", A, proj).reshape(P * H, -1, C)
        out = torch.bmm(acc.view(P * H, n_atoms, -1), weights).view(P, H, n_atoms, C).sum(0)
    return _atom_major(out)


def angle_features(w: Tensor, cos: Tensor, frame_w: Tensor, basis: AngleBasis, proj: Tensor) -> Tensor:
    """Projected angular encodings Σ_t fw_t Σ_k W_k,h Σ_m w_m b(cos_mtk) of padded slots with T candidate
    frames per (atom, head): :func:`slot_angle_features` with every (slot, frame) as a slot.

    Args:
        w: (N, H, M) attention weights; cos: (N, H, M, T, K); frame_w: (N, H, T) frame weights; proj:
        (K, H, C, D).
    Returns:
        (N, H, C); differentiable in w, cos, frame_w and proj.
    """
    N, H, M, T, K = cos.shape
    weight = (w[:, :, :, None] * frame_w[:, :, None, :]).permute(0, 2, 3, 1).reshape(N * M * T, H)
    atom = torch.arange(N, device=cos.device).repeat_interleave(M * T)
    return slot_angle_features(weight, cos.permute(0, 2, 3, 1, 4).reshape(N * M * T, H, K), atom, N, basis,
                               proj)


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
