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

Target shapes (``target_shapes`` of :class:`crystalframer.models.CrystalFramer`), given as a tuple or a string:

========================  ============  =======================================================
declared                  kind          outputs
========================  ============  =======================================================
``()``, ``"scalar"``      ``scalar``    1 value (the invariant head, unchanged)
``(3,)``, ``"3"``         ``3``         a vector, 3 columns
``(3, 3)``, ``"3x3"``     ``3x3``       a general rank-2 tensor, 9 columns (row-major)
``"3x3sym"``              ``3x3sym``    a symmetric rank-2 tensor (6 free components in the frame), 9 columns
``(6, 6)``, ``"6x6"``     ``6x6``       an elastic (stiffness) tensor in Voigt notation, 36 columns
========================  ============  =======================================================

Voigt convention (Nye, "Physical Properties of Crystals", 1957; the order used by the Materials Project and
pymatgen): index pairs 11, 22, 33, 23, 13, 12 → 1..6 (here 0..5), and C_IJ = C_ijkl with no factors, which is
right for stiffness tensors (compliances would need factors 2 and 4). The in-frame tensor has the 21 free
components of a symmetric 6×6 matrix, so the output has the full index symmetries C_ijkl = C_jikl = C_ijlk
= C_klij.

Normalisation and loss: a geometric target is normalised as (T − M)/s with M the mean isotropic part of the
training tensors and s one scalar (:func:`tensor_normalisation`), which commutes with rotations. Train with the
per-component MSE (``loss: mse``) on the normalised, flattened columns: for a rank-2 tensor the sum over the 9
columns is ‖ΔT‖²_F, invariant under rotation, so the loss of a crystal does not depend on the orientation it is
stored in (per-component L1 does, mildly); for Voigt columns it is the Frobenius norm of the 6×6 matrix, which
weighs shear components differently from the rank-4 norm but is the same for every orientation up to that.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from crystalframer.geometry.tensors import (KINDS, full_to_voigt, n_columns, rotate, target_kind, target_shape,
                                            voigt_to_full)

def isotropic_part(t: Tensor, kind: str) -> Tensor:
    """The isotropic projection (rotational average) of tensors of ``kind``, same shape as ``t``.

    vectors: 0; rank 2: (tr T / 3) I; 6×6 Voigt: λ δ_ij δ_kl + μ (δ_ik δ_jl + δ_il δ_jk) with λ, μ from the
    invariants a = C_iijj = 9λ + 6μ and b = C_ijij = 3λ + 12μ.
    """
    kind = target_kind(kind)
    if kind == "3":
        return torch.zeros_like(t)
    if kind in ("3x3", "3x3sym"):
        eye = torch.eye(3, dtype=t.dtype, device=t.device)
        return (t.diagonal(dim1=-2, dim2=-1).sum(-1) / 3)[..., None, None] * eye
    if kind == "6x6":
        a = t[..., :3, :3].sum((-1, -2))
        d = t.diagonal(dim1=-2, dim2=-1)
        b = d[..., :3].sum(-1) + 2 * d[..., 3:].sum(-1)
        mu = (b - a / 3) / 10
        lam = (a - 6 * mu) / 9
        out = torch.zeros_like(t)
        out[..., :3, :3] = lam[..., None, None]
        idx = torch.arange(3, device=t.device)
        out[..., idx, idx] = (lam + 2 * mu)[..., None]
        out[..., idx + 3, idx + 3] = mu[..., None]
        return out
    return t


# -- the head ---------------------------------------------------------------------------------------------


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
    if kind == "6x6":
        iu = torch.triu_indices(6, 6, device=c.device)
        m = c.new_zeros(c.shape[:-1] + (6, 6))
        m[..., iu[0], iu[1]] = c
        m = m + m.transpose(-1, -2) - torch.diag_embed(m.diagonal(dim1=-2, dim2=-1))
        return voigt_to_full(m)
    raise ValueError(kind)


def frame_back(local: Tensor, frames: Tensor, weights: Tensor) -> Tensor:
    """Σ_t w_t F_t⁻¹(local): in-frame vectors/tensors (N, H, …) → Cartesian (N, H, …).

    Args:
        local: (N, H, 3), (N, H, 3, 3) or (N, H, 3, 3, 3, 3) in-frame predictions.
        frames: (N, H, T, 3, 3) candidate frames (rows e1, e2, e3); weights: (N, H, T) summing to 1.
    """
    rank = local.dim() - 2
    ft = frames.transpose(-1, -2)  # F⁻¹ = Fᵀ: column a of Fᵀ is axis e_a
    loc = local[:, :, None].expand(local.shape[:2] + (frames.shape[2],) + local.shape[2:])
    if rank == 1:
        out = torch.einsum("nhtia,nhta->nhti", ft, loc)
    elif rank == 2:
        out = torch.einsum("nhtia,nhtab,nhtjb->nhtij", ft, loc, ft)
    else:
        out = rotate(loc, ft)
    w = weights.to(out.dtype).reshape(weights.shape + (1,) * rank)
    return (out * w).sum(2)


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
            if kind == "6x6":
                cart = full_to_voigt(cart)
            cart = cart.reshape(N, -1)
            pooled = cart.new_zeros(num_graphs, cart.shape[1]).index_add_(0, batch, cart) / counts[:, None]
            outs.append(pooled)
        return torch.cat(outs, 1)


def tensor_normalisation(y: Any, kinds: Sequence[str]) -> tuple[Any, Any]:
    """Equivariant normalisation statistics of flattened targets (n, Σ columns) (NaN = missing).

    Per scalar target: the mean and population std, as for any scalar. Per geometric target: the mean of its
    *isotropic* parts (a multiple of I, or λ/μ for elastic tensors; 0 for vectors) and one scalar std, the
    root-mean-square of (T − mean) over its components. ``(T − mean)/std`` then commutes with rotations
    (the isotropic mean is rotation invariant and a scalar factor commutes with everything), so the
    normalised targets of a rotated crystal are the rotated normalised targets; a per-component mean/std would
    break that. Returns (mean, std) as (Σ columns,) float64 arrays.
    """
    import numpy as np

    y = np.asarray(y, np.float64)
    means, stds, k = [], [], 0
    for kind in kinds:
        kind = target_kind(kind)
        n = n_columns(kind)
        col = y[:, k:k + n]
        k += n
        ok = ~np.isnan(col).any(1)
        if kind == "scalar":
            m = float(np.nanmean(col)) if ok.any() else 0.0
            s = float(np.nanstd(col)) if ok.any() else 1.0
            means.append([m])
            stds.append([s if s > 0 else 1.0])
            continue
        t = torch.as_tensor(col[ok]).reshape((-1,) + target_shape(kind))
        mean_t = isotropic_part(t, kind).mean(0) if len(t) else torch.zeros(target_shape(kind), dtype=torch.float64)
        s = float(((t - mean_t) ** 2).mean().sqrt()) if len(t) else 1.0
        means.append(mean_t.reshape(-1).tolist())
        stds.append([s if s > 0 else 1.0] * n)
    return np.concatenate(means), np.concatenate(stds)
