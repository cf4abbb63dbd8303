"""Cartesian vectors and tensors: the kinds of geometric targets, Voigt notation and rotations.

Target kinds (``target_shapes`` of :class:`crystalframer.models.CrystalFramer`), given as a tuple or a string:

========================  ============  =======================================================
declared                  kind          columns
========================  ============  =======================================================
``()``, ``"scalar"``      ``scalar``    1 value
``(3,)``, ``"3"``         ``3``         a vector, 3 columns
``(3, 3)``, ``"3x3"``     ``3x3``       a general rank-2 tensor, 9 columns (row-major)
``"3x3sym"``              ``3x3sym``    a symmetric rank-2 tensor (6 free components), 9 columns
``(6, 6)``, ``"6x6"``     ``6x6``       an elastic (stiffness) tensor in Voigt notation, 36 columns
========================  ============  =======================================================

Voigt convention (Nye, "Physical Properties of Crystals", 1957; the order used by the Materials Project and
pymatgen): index pairs 11, 22, 33, 23, 13, 12 → 1..6 (here 0..5), and C_IJ = C_ijkl with no factors, which is
right for stiffness tensors (compliances would need factors 2 and 4).
"""

from __future__ import annotations

from typing import Any

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


def rotate_voigt(v: Tensor, rot: Tensor) -> Tensor:
    """R applied to a (…, 6, 6) Voigt stiffness tensor (through the full rank-4 tensor)."""
    return full_to_voigt(rotate(voigt_to_full(v), rot))
