"""Rotations built from invariant predictions: unit quaternions and Gram–Schmidt of two vectors.

Frames are (…, 3, 3) matrices with the axes as rows (see :mod:`crystalframer.frames.base`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from crystalframer.frames.axes import perpendicular


def quaternion_to_rotation(q: Tensor, eps: float = 1e-6) -> Tensor:
    """(..., 4) quaternions (a, b, c, d), a the real part → (..., 3, 3) rotation matrices (SPFrame,
    Hua & Lin, NeurIPS 2025).

    q̂ = q / max(|q|, eps), then the paper's Algorithm 1. For |q| >= eps the result is orthonormal with
    det +1, and q and −q give the same matrix (the formula is quadratic). q = 0 gives the identity, with
    finite gradients (the norm is clamped before the reciprocal square root, never differentiated at 0).
    """
    n2 = (q * q).sum(-1, keepdim=True)
    q = q * torch.rsqrt(n2.clamp_min(eps * eps))
    a, b, c, d = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (c * c + d * d), 2 * (b * c - a * d), 2 * (b * d + a * c)], -1),
        torch.stack([2 * (b * c + a * d), 1 - 2 * (b * b + d * d), 2 * (c * d - a * b)], -1),
        torch.stack([2 * (b * d - a * c), 2 * (c * d + a * b), 1 - 2 * (b * b + c * c)], -1),
    ]
    return torch.stack(rows, -2)


def gram_schmidt(alpha: Tensor, beta: Tensor, eps: float = 1e-9) -> Tensor:
    """(..., 3) vectors α, β → right-handed orthonormal frames (..., 3, 3), rows e1, e2, e1 × e2.

    e1 = α/|α|, e2 = normalise(β − (e1·β) e1). Where |α| <= eps, e1 = x̂; where β has no component
    perpendicular to e1 (|β⊥| <= eps), e2 is a fixed perpendicular of e1 (the collinearity failure mode the
    paper notes for symmetric crystals). The fallbacks are Cartesian, so they are only invariant for
    invariant inputs (``spframe_gs``); ``equiv_gs_local`` keeps α, β away from them (see there).
    """
    na = alpha.norm(dim=-1, keepdim=True)
    x_hat = torch.zeros_like(alpha)
    x_hat[..., 0] = 1.0
    e1 = torch.where(na > eps, alpha / na.clamp_min(eps), x_hat)
    b_perp = beta - (e1 * beta).sum(-1, keepdim=True) * e1
    nb = b_perp.norm(dim=-1, keepdim=True)
    e2 = torch.where(nb > eps, b_perp / nb.clamp_min(eps), perpendicular(e1))
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], -2)
