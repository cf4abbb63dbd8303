"""Equivariant vector and tensor outputs through frames.

A frame model knows, for every atom i and head h of a layer, an orthonormal frame F_ih (rows e1, e2, e3,
Cartesian). A geometric target is predicted *in the frame* from the atom's invariant state, u_ih (vector)
or T_ih (tensor), and mapped back to Cartesian coordinates with the inverse frame (Ito et al., "Rethinking
the role of frames for SE(3)-invariant crystal structure modeling", ICLR 2025, §6 "Equivariant
prediction", proposed there as future work):

    vector:   v    = F⁻¹ u           = Fᵀ u                    (F orthogonal)
    rank 2:   T    = F⁻¹ T_loc F⁻ᵀ   = Fᵀ T_loc F
    rank 4:   C_ijkl = F_ai F_bj F_ck F_dl C_loc,abcd

and pooled (mean over heads, then over the atoms of the structure). When the crystal is rotated, s → R·s,
every frame becomes F Rᵀ while the invariant states are unchanged, so the output becomes R v, R T Rᵀ and the
rank-4 rule: exact equivariance by construction. Permutations, periodic images and unit-cell changes leave
the states and the frames (as a set per atom) unchanged, hence the output too. With tie-averaged frames (a
weighted set of candidate frames per atom and head, see :mod:`crystalframer.frames.ties`) every candidate
maps the prediction back and the results are averaged with the tie weights: the set is closed under the
crystal's symmetry operations, so the output is invariant under the crystal's rotations, e.g. isotropic for
cubic and uniaxial along c for hexagonal crystals (a rank-2 tensor invariant under a 3-fold or higher axis is
uniaxial along it).

Frames are right-handed, so the construction is equivariant under proper rotations; for an improper
operation g of the crystal, even-rank tensors only see −g (a rotation), which is in the point group of
centrosymmetric crystals only. In a non-centrosymmetric crystal the output respects the rotational
subgroup of the point group (for rank-2 tensors this already fixes the form in every crystal system whose
rotational subgroup has a 3-, 4- or 6-fold axis or three 2-fold axes).

Target kinds, Voigt notation, rotations and the normalisation of tensor labels are in
:mod:`crystalframer.geometry.tensors`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from crystalframer.geometry.tensors import KINDS, rotate, rotate_voigt, target_kind


def _local_tensor(c: Tensor, kind: str) -> Tensor:
    """(…, free components) → the in-frame vector / tensor of ``kind`` ((…, 3), (…, 3, 3) or (…, 3, 3, 3, 3))."""
    if kind in ("3", ):
        return c
    if kind == "3x3":
        return c.unflatten(-1, (3, 3))
    if kind == "3x3sym":
        iu = torch.triu_indices(3, 3, device=c.device)
        m = c.new_zeros(c.shape[:-1] + (3, 3))
        m[..., iu[0], iu[1]] = c
        return m + m.transpose(-1, -2) - torch.diag_embed(m.diagonal(dim1=-2, dim2=-1))
    if kind == "6x6":  # kept in Voigt form: rotated with the Bond matrix (rotate_voigt)
        iu = torch.triu_indices(6, 6, device=c.device)
        m = c.new_zeros(c.shape[:-1] + (6, 6))
        m[..., iu[0], iu[1]] = c
        return m + m.transpose(-1, -2) - torch.diag_embed(m.diagonal(dim1=-2, dim2=-1))
    raise ValueError(kind)


def frame_back(local: Tensor, frames: Tensor, weights: Tensor) -> Tensor:
    """Σ_t w_t F_t⁻¹(local): in-frame vectors/tensors (N, H, …) → Cartesian (N, H, …).

    Args:
        local: (N, H, 3) vectors, (N, H, 3, 3) rank-2 tensors or (N, H, 6, 6) Voigt stiffnesses (rotated with
            the Bond matrix, :func:`~crystalframer.geometry.tensors.rotate_voigt`), in frame.
        frames: (N, H, T, 3, 3) candidate frames (rows e1, e2, e3); weights: (N, H, T) summing to 1.
    """
    N, H, T = weights.shape
    rank = local.dim() - 2
    # Only the candidates with a weight are rotated: with tie-averaged frames (evaluation) T is padded to the
    # largest tie set of the batch (up to 96 in cubic crystals) while most atoms have one frame, so on
    # elastic-tensor batches 75-95 % of the slots are empty.
    slot = (weights.reshape(-1) > 0).nonzero().squeeze(1)  # (P,) into N·H·T
    owner = torch.div(slot, T, rounding_mode="floor")  # (P,) into N·H
    ft = frames.reshape(-1, 3, 3)[slot].transpose(-1, -2)  # F⁻¹ = Fᵀ: column a of Fᵀ is axis e_a
    loc = local.reshape((N * H,) + local.shape[2:])[owner]
    out = rotate_voigt(loc, ft) if local.shape[-2:] == (6, 6) else rotate(loc, ft)
    w = weights.reshape(-1)[slot].to(out.dtype).reshape((-1,) + (1,) * rank)
    total = out.new_zeros((N * H,) + out.shape[1:]).index_add_(0, owner, out * w)
    return total.reshape(local.shape)


class FrameTensorHead(nn.Module):
    """Per-atom, per-head in-frame predictions of geometric targets, mapped back with the frames and pooled.

    Args:
        dim: model width d (input states (N, d), invariant).
        heads: H, frames per atom (those of the last attention layer).
        kinds: the geometric targets' kinds (see :func:`target_kind`; no scalars).
        hidden: width of the per-atom MLP.
    """

    def __init__(self, dim: int, heads: int, kinds: Sequence[str], hidden: int = 128):
        super().__init__()
        self.kinds = [target_kind(k) for k in kinds]
        if any(k == "scalar" for k in self.kinds):
            raise ValueError("FrameTensorHead predicts geometric targets only")
        self.heads = heads
        self.n_free = [KINDS[k][1] for k in self.kinds]
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, heads * sum(self.n_free)))

    def forward(self, x: Tensor, frames: Tensor, weights: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """x (N, d), frames (N, H, T, 3, 3), weights (N, H, T), batch (N,) → (B, Σ columns) Cartesian outputs.

        Vectors give 3 columns, rank-2 tensors 9 (row-major), Voigt tensors 36.
        """
        N = x.shape[0]
        comps = self.mlp(x).view(N, self.heads, -1).split(self.n_free, -1)
        counts = torch.bincount(batch, minlength=num_graphs).to(x.dtype).clamp_min(1)
        outs = []
        for kind, c in zip(self.kinds, comps):
            cart = frame_back(_local_tensor(c, kind), frames.to(x.dtype), weights).mean(1)  # (N, …)
            cart = cart.reshape(N, -1)
            pooled = cart.new_zeros(num_graphs, cart.shape[1]).index_add_(0, batch, cart) / counts[:, None]
            outs.append(pooled)
        return torch.cat(outs, 1)
