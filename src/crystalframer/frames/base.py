"""What every frame method sees, the registry, and shared helpers.

A frame is F_ih = (e1, e2, e3) per atom i and head h (spec §4): three unit vectors (rows of a (3, 3)
matrix), in Cartesian coordinates. The angular features use the cosines e_k · r̂ of every image.
Frames are computed from detached quantities and carry no gradient, except for methods that declare
``differentiable = True`` (SPFrame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from crystalframer.frames import ties as ties_mod
from crystalframer.frames.noise import draw_seed, uniform
from crystalframer.geometry.images import Images


@dataclass
class FrameInput:
    """Everything a frame method may use, for one attention layer.

    Attributes:
        images: the image slots (N, M) of the batch.
        unit: (N, M, 3) unit vectors r̂ of the slots (0 for self images and padding).
        candidate: (N, M, H) bool, slots that may define an axis (valid and not the atom itself).
        qk: (N, M, H) q_ih · k_jh / sqrt(d_h) of the slot's pair (detached).
        a: (N, H) Gaussian coefficient a_ih = −1/(2σ²) in Å⁻² (detached).
        w: (N, M, H) attention weight of each slot (detached); Σ_m w = 1.
        lattice: (B, 3, 3); pos: (N, 3); batch: (N,); ptr: (B + 1,).
        noise: tie-breaking noise amplitude (Å² for distances); 0 for a deterministic tie order.
        x: (N, d) the layer's input states (for frames predicted from invariant features).
        layer: the layer's index.
        species: (N, 98) occupancy-weighted species vectors, or None when the caller does not give them.
    """

    images: Images
    unit: Tensor
    candidate: Tensor
    qk: Tensor
    a: Tensor
    w: Tensor
    lattice: Tensor
    pos: Tensor
    batch: Tensor
    ptr: Tensor
    noise: float
    x: Tensor | None = None
    layer: int = 0
    species: Tensor | None = None

    @property
    def d2(self) -> Tensor:
        return self.images.d2

    def uniform_noise(self, shape) -> Tensor:
        """u ~ U(−0.5, 0.5) · noise (zeros when noise is 0), from :mod:`.noise` (seeded by torch's generator)."""
        if self.noise == 0:
            return torch.zeros(shape, dtype=self.unit.dtype, device=self.unit.device)
        return (uniform(draw_seed(), tuple(shape), self.unit.dtype, self.unit.device) - 0.5) * self.noise


FrameFn = Callable[..., Tensor]
FRAMES: dict[str, "FrameMethod"] = {}


class FrameMethod(torch.nn.Module):
    """Base class: ``forward(inp: FrameInput) -> (N, H, 3, 3)`` axes as rows, or a weighted set of
    candidate frames ``(axes (N, H, T, 3, 3), weights (N, H, T))`` whose angular features are averaged.

    Tie options (every built-in method; see :mod:`crystalframer.frames.ties`):
        ties: ``"auto"`` (default: ``"first"`` with ``frame_noise = 0``, else ``"noise"`` in training and
            ``"average"`` in evaluation; methods with ``average_in_training``, the PCA frames, average in
            training too), ``"average"`` (average over the tie set: deterministic and exactly
            invariant on symmetric crystals), ``"noise"`` (published random tie-breaking, ``frame_noise``)
            or ``"first"`` (first candidate in slot order wins; golden parity).
        tie_atol, tie_rtol: score tolerance atol + rtol · |score terms| (defaults 2e-5, 2e-6); candidates
            within it have tie weight 1, the weight then falls linearly to 0 over the next 4e-4.
        tie_cap: frames per (atom, head) at most (256).
    """

    #: name in the registry
    name: str = ""
    #: whether gradients flow through the frame axes
    differentiable: bool = False
    #: whether the frame is one per crystal (pca, lattice, SPFrame global part)
    per_structure: bool = False
    #: whether ``ties="auto"`` averages in training too: for methods whose evaluation-time tie set is not
    #: the expectation of the published noise (PCA frames), so that training and evaluation use one rule
    average_in_training: bool = False

    def __init__(self, ties: str = "auto", tie_atol: float = ties_mod.ATOL, tie_rtol: float = ties_mod.RTOL,
                 tie_cap: int = ties_mod.CAP, **options):
        super().__init__()
        if options:
            raise TypeError(f"frame {self.name!r} got unknown options {sorted(options)}")
        self.ties = ties_mod.check_mode(ties)
        self.tie_atol, self.tie_rtol, self.tie_cap = float(tie_atol), float(tie_rtol), int(tie_cap)

    def tie_mode(self, inp: "FrameInput") -> str:
        """The tie policy of this call: ``"average"``, ``"noise"`` or ``"first"``."""
        training = self.training and not (self.average_in_training and self.ties == "auto")
        return ties_mod.resolve_mode(self.ties, training, inp.noise)

    def extra_repr(self) -> str:
        return f"ties={self.ties!r}"


def register_frame(cls: type[FrameMethod]) -> type[FrameMethod]:
    """Class decorator adding a frame method to the registry under ``cls.name``."""
    FRAMES[cls.name] = cls
    return cls


def build_frame(name: str, **options) -> FrameMethod | None:
    """The frame method registered as ``name`` (``"none"`` → None: Crystalformer)."""
    if name in ("none", "no", None):
        return None
    if name not in FRAMES:
        raise ValueError(f"unknown frame method {name!r}; available: none, {', '.join(sorted(FRAMES))}")
    return FRAMES[name](**options)


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
        fallback = _perpendicular(e1)
        e2 = torch.where(ok[..., None], e2, fallback)
    e2 = e2 / e2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], -2)


def _perpendicular(e: Tensor) -> Tensor:
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
