"""Gaussian basis functions of distances (Å) and direction cosines, with the published evaluation windows.

Crystalformer (Taniai et al., ICLR 2024) and CrystalFramer (Ito et al., ICLR 2025). The paper's definition
evaluates every basis function; the official frame kernel evaluates only a window of consecutive functions
around each value (9 of 64 for distances, 33 of 64 for cosines) and treats the rest as 0. ``window=True``
reproduces that (needed for numerical parity with the released models); the default ``False`` is the paper's
definition.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


#: Width of the evaluation window in units of σ on each side (the kernels' CUT_SIGMA).
CUT_SIGMA = 4.0


def underflow_floor(dtype: torch.dtype) -> float:
    """The exponent below which a Gaussian basis value is taken as 0: 0.98 · ln(smallest normal float), −85.6
    in float32 (values below 7e-38), −694 in float64. ``exp`` of arguments whose result would be denormal
    or 0 runs ~30x slower on x86 CPUs than that of ordinary ones, and most of the K = 64 distance bins lie
    that far from a given distance (arguments down to −2,000): skipping them makes the distance basis
    10x faster, with values that differ from the exact ones by less than 7e-38."""
    return 0.98 * math.log(torch.finfo(dtype).tiny)


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
        floor = underflow_floor(d.dtype)
        if d.requires_grad and torch.is_grad_enabled():
            arg = -((d[..., None] - mu) ** 2) / (2 * self.sigma**2)
            out = torch.exp(arg.clamp(min=floor)).masked_fill(arg < floor, 0.0)
        else:  # the same operations in place: one (..., K) buffer instead of five
            arg = (d[..., None] - mu).pow_(2).neg_().div_(2 * self.sigma**2)
            low = arg < floor
            out = arg.clamp_(min=floor).exp_().masked_fill_(low, 0.0)
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
