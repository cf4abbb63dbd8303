"""Cartesian vectors and tensors as targets: their kinds and columns, Voigt notation, rotations and an
equivariant normalisation (the frame head that predicts them is :mod:`crystalframer.nn.tensor_heads`).

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
per-component MSE (``loss: mse``, the default of runs with such targets) on the normalised, flattened columns: for
a rank-2 tensor the sum over the 9 columns is ‖ΔT‖²_F, invariant under rotation, so the loss of a crystal does
not depend on the orientation it is stored in (per-component L1 does, mildly); for Voigt columns it is the
Frobenius norm of the 6×6 matrix, which weighs shear components differently from the rank-4 norm but is the same
for every orientation up to that.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

#: canonical kind → (output shape, free in-frame components)
KINDS: dict[str, tuple[tuple[int, ...], int]] = {
    "scalar": ((), 1), "3": ((3,), 3), "3x3": ((3, 3), 9), "3x3sym": ((3, 3), 6), "6x6": ((6, 6), 21),
}
#: Voigt index of the index pair (i, j): 11→0, 22→1, 33→2, 23→3, 13→4, 12→5
VOIGT = ((0, 5, 4), (5, 1, 3), (4, 3, 2))
#: the index pair of each Voigt index
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def target_kind(shape: Any) -> str:
    """A declared target shape → its canonical kind (``"scalar"``, ``"3"``, ``"3x3"``, ``"3x3sym"``, ``"6x6"``)."""
    if shape is None:
        return "scalar"
    if isinstance(shape, str):
        s = shape.strip().lower().replace(" ", "").replace("×", "x")
        s = {"": "scalar", "()": "scalar", "1": "scalar", "(3,)": "3", "3x1": "3", "(3,3)": "3x3",
             "(6,6)": "6x6", "sym": "3x3sym", "3x3s": "3x3sym"}.get(s, s)
        if s in KINDS:
            return s
    else:
        try:
            t = tuple(int(k) for k in shape)
        except (TypeError, ValueError):
            t = None
        if t is not None:
            for kind, (shp, _) in KINDS.items():
                if t == shp and kind != "3x3sym":
                    return kind
    raise ValueError(f"unsupported target shape {shape!r}; use (), (3,), (3, 3), '3x3sym' (symmetric rank 2) "
                     "or (6, 6) (elastic tensor, Voigt)")


def target_shape(kind: str) -> tuple[int, ...]:
    """The array shape of a kind's predictions (per structure)."""
    return KINDS[target_kind(kind)][0]


def n_columns(kind: str) -> int:
    """Flattened columns of a kind (1 for scalars, 3, 9, 9 or 36)."""
    n = 1
    for k in target_shape(kind):
        n *= k
    return n


def column_names(name: str, kind: str) -> list[str]:
    """Flattened column names: ``name`` for a scalar, ``name[i]``, ``name[i,j]`` (row-major) otherwise."""
    shape = target_shape(kind)
    if not shape:
        return [name]
    if len(shape) == 1:
        return [f"{name}[{i}]" for i in range(shape[0])]
    return [f"{name}[{i},{j}]" for i in range(shape[0]) for j in range(shape[1])]


# -- Voigt ------------------------------------------------------------------------------------------------


def voigt_to_full(v: Tensor) -> Tensor:
    """(…, 6, 6) Voigt stiffness → (…, 3, 3, 3, 3) full tensor, C_ijkl = V[voigt(i,j), voigt(k,l)]."""
    idx = torch.tensor(VOIGT, device=v.device).reshape(-1)  # (9,) Voigt index of each (i, j)
    full = v[..., idx, :][..., :, idx]  # (…, 9, 9)
    return full.reshape(v.shape[:-2] + (3, 3, 3, 3))


def full_to_voigt(c: Tensor) -> Tensor:
    """(…, 3, 3, 3, 3) → (…, 6, 6) Voigt, V[I, J] = C[i_I, j_I, k_J, l_J] with the pairs 11, 22, 33, 23, 13, 12."""
    flat = c.reshape(c.shape[:-4] + (9, 9))
    idx = torch.tensor([3 * i + j for i, j in VOIGT_PAIRS], device=c.device)
    return flat[..., idx, :][..., :, idx]


def rotate(t: Tensor, rot: Tensor) -> Tensor:
    """Apply a rotation R (…, 3, 3) to a Cartesian vector (…, 3), rank-2 (…, 3, 3) or rank-4 (…, 3, 3, 3, 3) tensor."""
    rank = t.dim() - rot.dim() + 2
    if rank == 1:
        return torch.einsum("...ia,...a->...i", rot, t)
    if rank == 2:
        return torch.einsum("...ia,...ab,...jb->...ij", rot, t, rot)
    if rank == 4:
        for k in range(4):  # contract one index at a time (81 · 3 products each)
            t = torch.movedim(torch.einsum("...ia,...abcd->...ibcd", rot, t), -4, -1)
        return t
    raise ValueError(f"cannot rotate a rank-{rank} tensor")


def bond_matrix(rot: Tensor) -> Tensor:
    """The 6×6 Bond matrix M of rotations R (…, 3, 3), with which a Voigt stiffness rotates as M V Mᵀ.

    M[I, J] = R_ik R_jl + R_il R_jk for I = (i, j), J = (k, l) with k ≠ l, and R_ik R_jk for k = l (the two
    entries C_..kl and C_..lk of a tensor with minor symmetries share one Voigt index).
    """
    p = torch.tensor(VOIGT_PAIRS, device=rot.device)
    i, j = p[:, 0, None], p[:, 1, None]  # row pair (6, 1)
    k, m = p[None, :, 0], p[None, :, 1]  # column pair (1, 6)
    return rot[..., i, k] * rot[..., j, m] + (k != m) * rot[..., i, m] * rot[..., j, k]


def rotate_voigt(v: Tensor, rot: Tensor) -> Tensor:
    """R applied to a (…, 6, 6) Voigt stiffness tensor: M V Mᵀ with the Bond matrix M of R (the same as rotating
    the full rank-4 tensor, with 2 · 216 products instead of 4 · 243 and no (…, 3, 3, 3, 3) intermediates)."""
    mat = bond_matrix(rot).to(v.dtype)
    return mat @ v @ mat.transpose(-1, -2)


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
