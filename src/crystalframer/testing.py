"""Tools to test models and frame methods: symmetry transforms of crystals and invariance checks.

A crystal's properties do not depend on how it is written down: rotating or translating it, listing its
atoms in another order, giving another periodic image of an atom, choosing another unit cell of the same
lattice or a supercell. The transforms below produce such equivalent :class:`~crystalframer.data.structures.Crystal`
objects, and :func:`assert_invariant` checks that a model's predictions do not change under them (scalar
targets), or change by the rotation's rule (vector and tensor targets: v → R v, T → R T Rᵀ, and the rank-4
rule for elastic tensors), see Ito et al., "Rethinking the role of frames for SE(3)-invariant crystal
structure modeling" (ICLR 2025).

Which transforms a frame method must pass follows from what it declares (:func:`promises`,
:func:`transforms_for`):

* every method: translation and permutation of the atoms (:data:`ALWAYS`);
* ``equivariant``: rotation; scalar outputs are invariant, vector and tensor outputs rotate with the crystal
  (:data:`ROTATIONAL`);
* ``cell_invariant``: other periodic images of the atoms, another unit cell of the lattice (unimodular
  integer change of basis) and supercells (:data:`CELL`);
* ``differentiable``: autograd gradients through the frames agree with finite differences
  (:func:`assert_gradients_match`).

Example::

    import crystalframer as cf
    from crystalframer.testing import CELL, assert_invariant

    model = cf.CrystalFramer(frame="max", num_layers=1, model_dim=16).eval()
    assert_invariant(model, structures)          # every transform the frame method promises
    assert_invariant(model, structures, CELL)    # or chosen ones
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from crystalframer.data.structures import Crystal, to_crystal

__all__ = ["Transform", "random_rotation", "rotate", "translate", "permute", "reimage", "change_basis",
           "supercell", "ROTATION", "TRANSLATION", "PERMUTATION", "REIMAGE", "CHANGE_BASIS", "SUPERCELL",
           "ALWAYS", "ROTATIONAL", "CELL", "PROMISES", "promises", "model_promises", "frame_modules",
           "transforms_for", "assert_invariant", "assert_gradients_match"]


# -- transforms of one crystal ----------------------------------------------------------------------------


def _copy(c: Crystal, lattice: np.ndarray, positions: np.ndarray, species: np.ndarray) -> Crystal:
    return Crystal(lattice=lattice, positions=positions, species=species, id=c.id,
                   targets=None if c.targets is None else c.targets.copy(), info=dict(c.info))


def random_rotation(seed: int) -> np.ndarray:
    """A uniformly random proper rotation (3, 3), det = +1, from a random unit quaternion (seeded)."""
    q = np.random.default_rng(seed).normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def rotate(c: Any, rot: np.ndarray) -> Crystal:
    """The crystal rotated by ``rot`` (3, 3): positions r → R r, lattice rows l → R l."""
    c = to_crystal(c)
    rot = np.asarray(rot, dtype=np.float64)
    return _copy(c, c.lattice @ rot.T, c.positions @ rot.T, c.species)


def translate(c: Any, shift: Sequence[float]) -> Crystal:
    """Every atom moved by the same Cartesian ``shift`` (3,), Å."""
    c = to_crystal(c)
    return _copy(c, c.lattice, c.positions + np.asarray(shift, dtype=np.float64), c.species)


def permute(c: Any, seed: int) -> Crystal:
    """The atoms listed in a random (seeded) order."""
    c = to_crystal(c)
    p = np.random.default_rng(seed).permutation(c.num_atoms)
    return _copy(c, c.lattice, c.positions[p], c.species[p])


def reimage(c: Any, seed: int, reach: int = 2) -> Crystal:
    """Each atom replaced by a random periodic image of it: r_i + n_i · L with integer |n_i| <= ``reach``."""
    c = to_crystal(c)
    n = np.random.default_rng(seed).integers(-reach, reach + 1, size=(c.num_atoms, 3))
    return _copy(c, c.lattice, c.positions + n @ c.lattice, c.species)


def change_basis(c: Any, unimodular: Sequence[Sequence[int]]) -> Crystal:
    """The same crystal in another unit cell of its lattice: rows U @ L with U integer, det U = ±1; atoms kept."""
    c = to_crystal(c)
    u = np.asarray(unimodular)
    if u.shape != (3, 3) or not np.array_equal(u, np.round(u)) or round(abs(np.linalg.det(u))) != 1:
        raise ValueError(f"change_basis needs an integer 3x3 matrix with determinant ±1, got {u.tolist()}")
    return _copy(c, u.astype(np.float64) @ c.lattice, c.positions, c.species)


def supercell(c: Any, scale: Sequence[int]) -> Crystal:
    """The (a, b, c) supercell: lattice rows scaled, atoms repeated over every cell of it."""
    c = to_crystal(c)
    scale = [int(k) for k in scale]
    if len(scale) != 3 or min(scale) < 1:
        raise ValueError(f"supercell needs three positive integers, got {scale}")
    shifts = np.array(list(itertools.product(*(range(k) for k in scale))), dtype=np.float64) @ c.lattice
    pos = (c.positions[None] + shifts[:, None]).reshape(-1, 3)
    species = np.tile(c.species, (len(shifts), 1))
    return _copy(c, np.diag(np.asarray(scale, np.float64)) @ c.lattice, pos, species)


@dataclass(frozen=True)
class Transform:
    """A named transform ``apply(crystal, seed) -> (crystal', R)`` with R the rotation it applies to
    Cartesian space (identity for all but rotations), which vector and tensor outputs must follow."""

    name: str
    apply: Callable[[Crystal, int], tuple[Crystal, np.ndarray]]

    def __call__(self, c: Any, seed: int = 0) -> tuple[Crystal, np.ndarray]:
        return self.apply(to_crystal(c), seed)


_EYE = np.eye(3)
#: a unimodular change of basis (det = 1) that skews the cell strongly
SKEW = ((1, 1, 0), (0, 1, 1), (1, 1, 1))

ROTATION = Transform("rotation", lambda c, k: (rotate(c, random_rotation(k)), random_rotation(k)))
TRANSLATION = Transform("translation",
                        lambda c, k: (translate(c, np.random.default_rng(k).normal(scale=3.0, size=3)), _EYE))
PERMUTATION = Transform("permutation", lambda c, k: (permute(c, k), _EYE))
REIMAGE = Transform("reimage", lambda c, k: (reimage(c, k), _EYE))
CHANGE_BASIS = Transform("change_basis", lambda c, k: (change_basis(c, SKEW), _EYE))
SUPERCELL = Transform("supercell", lambda c, k: (supercell(c, (2, 1, 1) if k % 2 else (1, 2, 2)), _EYE))

#: transforms every frame method must be invariant under (frames follow their atoms)
ALWAYS = (TRANSLATION, PERMUTATION)
#: transforms only ``equivariant`` methods pass (scalars invariant, vectors and tensors rotate along)
ROTATIONAL = (ROTATION,)
#: transforms only ``cell_invariant`` methods pass: other periodic images, another cell, a supercell
CELL = (REIMAGE, CHANGE_BASIS, SUPERCELL)


# -- what a frame method promises ---------------------------------------------------------------------------

#: promise names a frame method class may declare as boolean class attributes
PROMISES = ("cell_invariant", "equivariant", "differentiable")


def promises(method: Any) -> frozenset[str]:
    """The promises a frame method declares: the names of :data:`PROMISES` set to True on its class.

    ``method``: a registry name, a frame-method class or instance (an instance's own attributes win: it may
    narrow or widen its class's promises for its options). A missing attribute promises nothing beyond
    :data:`ALWAYS`.
    """
    if isinstance(method, str):
        from crystalframer.frames.base import FRAMES

        if method not in FRAMES:
            raise ValueError(f"unknown frame method {method!r}; registered: {', '.join(sorted(FRAMES))}")
        method = FRAMES[method]
    return frozenset(p for p in PROMISES if bool(getattr(method, p, False)))


def transforms_for(promised: Iterable[str]) -> tuple[Transform, ...]:
    """The transforms a method with these promises must pass (:data:`ALWAYS`, plus :data:`ROTATIONAL` for
    ``equivariant`` and :data:`CELL` for ``cell_invariant``)."""
    promised = set(promised)
    return ALWAYS + (ROTATIONAL if "equivariant" in promised else ()) + (CELL if "cell_invariant" in promised else ())


def frame_modules(model: torch.nn.Module) -> dict[str, Any]:
    """``{qualified name: module}`` of the frame-method modules inside a model (one per attention layer)."""
    from crystalframer.frames.base import FrameMethod

    return {n: m for n, m in model.named_modules() if isinstance(m, FrameMethod)}


def model_promises(model: torch.nn.Module) -> frozenset[str]:
    """What the model's frame methods promise, as built (an instance may narrow or widen its class's
    promises for its options): the promises every frame module of the model makes. A CrystalFramer with
    ``frame="none"`` (Crystalformer) is rotation and cell invariant; other models without frame modules
    promise nothing beyond :data:`ALWAYS` here."""
    mods = list(frame_modules(model).values())
    if not mods:  # Crystalformer (frame="none"): distances within a sphere only, invariant by construction
        return frozenset({"equivariant", "cell_invariant"}) if getattr(model, "frame", None) == "none" else frozenset()
    return frozenset.intersection(*(promises(m) for m in mods))


# -- checks on models ----------------------------------------------------------------------------------------


def _rotate_value(value: np.ndarray, rot: np.ndarray, kind: str) -> np.ndarray:
    """One structure's output of ``kind`` after rotating the crystal by ``rot``."""
    if kind == "scalar":
        return value
    if kind == "3":
        return rot @ value
    if kind in ("3x3", "3x3sym"):
        return rot @ value @ rot.T
    if kind == "6x6":
        from crystalframer.geometry.tensors import rotate_voigt

        return rotate_voigt(torch.as_tensor(value), torch.as_tensor(rot)).numpy()
    raise ValueError(f"no rotation rule for target kind {kind!r}")


def _columns(model: Any, pred: Any) -> dict[str, tuple[np.ndarray, str]]:
    """``{target: ((n, *shape) values, kind)}`` from ``model.predict`` output (array or dict)."""
    if isinstance(pred, dict):
        kinds = dict(zip(model.config["target_names"], model.target_kinds))
        return {name: (np.asarray(v), kinds[name]) for name, v in pred.items()}
    names = list(getattr(model, "target_names", [])) or [f"target_{k}" for k in range(pred.shape[1])]
    return {name: (pred[:, k], "scalar") for k, name in enumerate(names)}


def assert_invariant(model: Any, structures: Sequence[Any], transforms: Iterable[Transform] | None = None,
                     rtol: float = 1e-4, atol: float = 2e-5, seed: int = 0) -> None:
    """Check that ``model.predict`` gives the same outputs on transformed structures.

    Scalar targets must be unchanged; vector and tensor targets (models with ``target_shapes``) must follow
    the rotation a transform applies: v → R v, T → R T Rᵀ, C → the rank-4 rule on Voigt matrices.

    Args:
        model: a model with ``predict`` (e.g. :class:`crystalframer.CrystalFramer`), in eval mode; use
            ``frame_noise=0`` or tie-averaging frames, otherwise the prediction itself is random.
        structures: pymatgen Structures, ASE Atoms or Crystals (low-symmetry ones avoid near-ties).
        transforms: :class:`Transform` objects; default: what the model's frame methods promise,
            ``transforms_for(model_promises(model))``.
        rtol, atol: |out − expected| <= atol + rtol · |expected| per value (float32 models move by ~1e-7
            when inputs are rounded differently; a frame switching neighbour moves by 1e-3 or more).
        seed: structure k gets seed ``seed + k`` for the random transforms.
    Raises:
        AssertionError naming the transform, the structure and the target, with the largest deviation.
    """
    if transforms is None:
        transforms = transforms_for(model_promises(model))
    crystals = [to_crystal(s) for s in structures]
    ref = _columns(model, model.predict(crystals))
    for t in transforms:
        moved, rots = zip(*(t(c, seed + k) for k, c in enumerate(crystals)))
        out = _columns(model, model.predict(list(moved)))
        for name, (want_all, kind) in ref.items():
            got_all = out[name][0]
            for k, c in enumerate(crystals):
                want = _rotate_value(want_all[k], rots[k], kind)
                err = np.abs(got_all[k] - want)
                bound = atol + rtol * np.abs(want)
                if not np.all(err <= bound):
                    rule = "invariant" if kind == "scalar" else f"equivariant ({kind})"
                    raise AssertionError(
                        f"{t.name}: target {name!r} of structure {c.id!r} is not {rule}: max |Δ| = "
                        f"{float(err.max()):.3e} (allowed {float(bound.max()):.3e})")


def assert_gradients_match(model: torch.nn.Module, structures: Sequence[Any], only: Callable[[str], bool] | None = None,
                           eps: float = 1e-6, rtol: float = 1e-4, seed: int = 0) -> None:
    """Autograd agrees with central finite differences for the model's outputs w.r.t. its parameters.

    The directional derivative of Σ outputs along a random direction of the parameters, in float64 on a copy
    of the model. ``only``: which parameters (by name) the direction moves, default all. Restricted to a frame
    method's own parameters (see :func:`frame_modules`), whose only path to the outputs is through the frame
    axes, a method that declares ``differentiable`` but detaches its axes fails: no gradient reaches them.

    Raises:
        AssertionError with both derivatives when they differ by more than ``rtol`` (relative).
    """
    import copy

    m = copy.deepcopy(model).double().eval()
    batch = m.collate([to_crystal(s) for s in structures]).to(dtype=torch.float64)
    params = [p for n, p in m.named_parameters() if p.requires_grad and (only is None or only(n))]
    if not params:
        raise ValueError(f"no trainable parameters{'' if only is None else ' selected by only'} in the model")
    gen = torch.Generator().manual_seed(seed)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    m.zero_grad()
    m(batch).sum().backward()
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction) if p.grad is not None)
    if analytic == 0.0:
        raise AssertionError(f"no gradient reaches the parameters{'' if only is None else ' selected by only'}")

    start = [p.detach().clone() for p in params]

    def shifted(h: float) -> float:
        with torch.no_grad():
            for p, p0, d in zip(params, start, direction):
                p.copy_(p0 + h * d)
            value = float(m(batch).sum())
            for p, p0 in zip(params, start):
                p.copy_(p0)
        return value

    numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
    if not abs(analytic - numeric) <= rtol * max(abs(numeric), abs(analytic), 1e-8):
        raise AssertionError(f"autograd directional derivative {analytic:.8e} != finite difference {numeric:.8e}"
                             f" (relative {abs(analytic - numeric) / max(abs(numeric), 1e-30):.2e})")
