"""PCA frames: dynamic weighted PCA (CrystalFramer, spec §4.3) and global PCA (Duval et al., spec §4.4)."""

from __future__ import annotations

import torch
from torch import Tensor

from crystalframer.frames.base import FrameInput, FrameMethod, register_frame, sign_by_moment

_SIGN_MODES = ("random", "moment")


def _eig_axes(cov: Tensor) -> Tensor:
    """Symmetric (..., 3, 3) → eigenvectors as rows, largest eigenvalue first."""
    _, vecs = torch.linalg.eigh(cov)  # ascending, columns
    return vecs.flip(-1).transpose(-1, -2)


def _fix_signs(axes: Tensor, mode: str, vec: Tensor, weight: Tensor) -> Tensor:
    """Signs of the axes, then a right-handed frame (det = +1)."""
    if mode == "random":
        flip = torch.randint(0, 2, axes.shape[:-1], device=axes.device).to(axes.dtype) * 2 - 1
        axes = axes * flip[..., None]
        det = torch.linalg.det(axes)
        return axes * torch.where(det < 0, -1.0, 1.0).to(axes.dtype)[..., None, None]
    axes = sign_by_moment(axes, vec, weight)
    e3 = torch.cross(axes[..., 0, :], axes[..., 1, :], dim=-1)
    return torch.cat([axes[..., :2, :], e3[..., None, :]], -2)


@register_frame
class WeightedPCAFrame(FrameMethod):
    """Dynamic weighted-PCA frames, the paper's definition (not the released kernel's).

    Σ_ih = Σ_(j,n) w_ij(n) r̂ r̂ᵀ over non-self images with the true attention weights w and unit vectors r̂;
    the axes are its eigenvectors, largest eigenvalue first. Degeneracy is broken by multiplying w by
    (1 + u), u ~ U(−½, ½)·noise. Signs: ``"random"`` (paper: a random flip per (i, h), then det = +1) or
    ``"moment"`` (deterministic: the weighted third moment of each of e1, e2 is made >= 0, e3 = e1 × e2).
    The released code differs (unnormalised vectors, an uninitialised weight buffer, eigenvector rows):
    see spec §4.3.
    """

    name = "weighted_pca"

    def __init__(self, signs: str = "random"):
        super().__init__()
        if signs not in _SIGN_MODES:
            raise ValueError(f"signs must be one of {_SIGN_MODES}, got {signs!r}")
        self.signs = signs

    def forward(self, inp: FrameInput) -> Tensor:
        w = inp.w * inp.candidate
        w = w * (1 + inp.uniform_noise(w.shape))
        cov = torch.einsum("nmh,nmc,nmd->nhcd", w, inp.unit, inp.unit)
        axes = _eig_axes(cov)  # (N, H, 3, 3)
        unit_h = inp.unit[:, None].expand(-1, w.shape[-1], -1, -1)  # (N, H, M, 3)
        return _fix_signs(axes, self.signs, unit_h, w.permute(0, 2, 1))


@register_frame
class GlobalPCAFrame(FrameMethod):
    """Global PCA frames (Duval et al. 2023): principal axes of the cell's atoms, shared by all atoms.

    C = Σ_j (p_j − p̄)(p_j − p̄)ᵀ over the atoms of the unit cell as given (raw Cartesian coordinates), axes
    largest eigenvalue first (the release orders them smallest first; only the labelling differs).
    Signs as in :class:`WeightedPCAFrame` (``"random"``: per atom and head, as released).
    Not invariant to the choice of unit cell or of periodic images: that is the point of comparison.
    """

    name = "pca"
    per_structure = True

    def __init__(self, signs: str = "random"):
        super().__init__()
        if signs not in _SIGN_MODES:
            raise ValueError(f"signs must be one of {_SIGN_MODES}, got {signs!r}")
        self.signs = signs

    def forward(self, inp: FrameInput) -> Tensor:
        B = inp.lattice.shape[0]
        H = inp.a.shape[1]
        counts = (inp.ptr[1:] - inp.ptr[:-1]).to(inp.pos.dtype)
        mean = torch.zeros(B, 3, dtype=inp.pos.dtype, device=inp.pos.device).index_add_(0, inp.batch, inp.pos)
        centred = inp.pos - (mean / counts[:, None])[inp.batch]
        cov = torch.zeros(B, 3, 3, dtype=inp.pos.dtype, device=inp.pos.device)
        cov.index_add_(0, inp.batch, centred[:, :, None] * centred[:, None, :])
        axes = _eig_axes(cov)[inp.batch]  # (N, 3, 3)
        if self.signs == "random":
            return _fix_signs(axes[:, None].expand(-1, H, -1, -1).contiguous(), "random", None, None)
        # moment signs from the cell's own atoms, identical for every atom of the structure
        n_max = int(counts.max())
        pts = torch.zeros(B, n_max, 3, dtype=inp.pos.dtype, device=inp.pos.device)
        wts = torch.zeros(B, n_max, dtype=inp.pos.dtype, device=inp.pos.device)
        local = torch.arange(inp.pos.shape[0], device=inp.pos.device) - inp.ptr[inp.batch]
        pts[inp.batch, local] = centred
        wts[inp.batch, local] = 1.0
        per_s = _fix_signs(_eig_axes(cov), "moment", pts, wts)
        return per_s[inp.batch][:, None].expand(-1, H, -1, -1)
