"""Axis constructions shared by the frame methods: slot gathering, Gram–Schmidt of two directions, signs.

Frames are (…, 3, 3) tensors with the axes e1, e2, e3 as rows, in Cartesian coordinates.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gather_slots(t: Tensor, idx: Tensor) -> Tensor:
    """Pick slot ``idx`` (N, H) of a per-slot tensor (N, M, C) → (N, H, C)."""
    return torch.gather(t, 1, idx[:, :, None].expand(-1, -1, t.shape[-1]))


def orthonormal_from_two(e1: Tensor, r2: Tensor, ok: Tensor | None = None) -> Tensor:
    """(…, 3) unit e1 and a second direction r2 → right-handed orthonormal frame (…, 3, 3), rows e1, e2, e3.

    e2 = normalize(r2 − (e1·r2) e1) (Gram–Schmidt), e3 = e1 × e2. Where ``ok`` is False (no admissible
    second direction), e2 is a fixed perpendicular of e1 (documented fallback; never hit for 3-D lattices
    with the default image sets).
    """
    e2 = r2 - (e1 * r2).sum(-1, keepdim=True) * e1
    if ok is not None:
        fallback = perpendicular(e1)
        e2 = torch.where(ok[..., None], e2, fallback)
    e2 = e2 / e2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], -2)


def perpendicular(e: Tensor) -> Tensor:
    """A unit vector (…, 3) perpendicular to each unit ``e`` (…, 3): the Cartesian axis least aligned with it,
    made orthogonal (a fixed, not rotation-equivariant, fallback)."""
    basis = torch.eye(3, dtype=e.dtype, device=e.device)
    axis = basis[e.abs().argmin(-1)]
    p = axis - (axis * e).sum(-1, keepdim=True) * e
    return p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def masked_argmax(score: Tensor, allowed: Tensor, dim: int = 1) -> tuple[Tensor, Tensor]:
    """First index of the maximum of ``score`` over ``allowed`` entries, and whether any was allowed."""
    s = score.masked_fill(~allowed, float("-inf"))
    return s.argmax(dim), allowed.any(dim)


def sign_by_moment(axes: Tensor, vec: Tensor, weight: Tensor) -> Tensor:
    """Deterministic, rotation-equivariant axis signs: make Σ weight · (e·v)³ >= 0 for each axis.

    Args:
        axes: (..., K, 3); vec: (..., M, 3) the points; weight: (..., M).
    """
    proj = torch.einsum("...kc,...mc->...km", axes, vec)
    m3 = (weight[..., None, :] * proj**3).sum(-1)
    sign = torch.where(m3 < 0, -1.0, 1.0).to(axes.dtype)
    return axes * sign[..., None]
