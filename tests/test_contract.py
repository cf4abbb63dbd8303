"""The frame-method contract: every method in the registry keeps what it declares it promises.

The methods come from the registry itself (a newly registered method is tested without editing this file),
and what each is checked for comes from its promise attributes, read by :func:`promises_of` (the one place
that knows their names):

* always: translation and permutation of the atoms leave scalar outputs unchanged;
* ``equivariant``: rotation too, and vector/tensor outputs rotate with the crystal (v → R v, T → R T Rᵀ,
  the rank-4 rule for Voigt matrices);
* ``cell_invariant``: other periodic images, another unit cell, supercells;
* ``differentiable``: autograd gradients w.r.t. the method's own parameters match finite differences.

Models are tiny (one or two layers, width 16) in evaluation mode with the default tie policy; structures
are small low-symmetry cells built with pymatgen and ASE. Tolerances: float32 models move by ~1e-7 when the
inputs are rounded differently, a frame switching neighbours by 1e-3 or more (see crystalframer.testing).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from pymatgen.core import Lattice, Structure

from crystalframer.frames import FRAMES
from crystalframer.models import CrystalFramer
from crystalframer.testing import (CELL, PERMUTATION, ROTATION, ROTATIONAL, Transform, assert_gradients_match,
                                   assert_invariant, change_basis, frame_modules, model_promises, permute,
                                   promises, random_rotation, reimage, rotate, supercell, transforms_for)


def promises_of(method) -> frozenset[str]:
    """What a frame method (registry name, class or instance) promises: the one lookup of promise names."""
    return promises(method)


def structures() -> list:
    """Three small low-symmetry cells (triclinic, rattled rock salt from ASE, monoclinic)."""
    tri = Structure(Lattice.from_parameters(4.1, 4.6, 5.3, 81, 97, 105), ["Li", "Fe", "O", "O"],
                    [[0, 0, 0], [0.31, 0.52, 0.47], [0.12, 0.71, 0.23], [0.63, 0.18, 0.81]])
    nacl = bulk("NaCl", "rocksalt", a=5.6)
    nacl.rattle(0.08, seed=1)
    mono = Structure(Lattice.monoclinic(3.9, 6.2, 4.4, 100), ["Mg", "Si", "O"],
                     [[0.05, 0.1, 0.2], [0.45, 0.6, 0.55], [0.7, 0.3, 0.85]])
    return [tri, nacl, mono]


SHAPES = [(), (3,), "3x3sym", (6, 6)]


def tiny(frame: str, layers: int = 1, shapes=None) -> CrystalFramer:
    torch.manual_seed(0)
    extra = {} if shapes is None else dict(n_targets=len(shapes), target_names=[f"t{k}" for k in range(len(shapes))],
                                            target_shapes=shapes)
    return CrystalFramer(frame=frame, num_layers=layers, model_dim=16, num_heads=2, ff_dim=16, head_dims=(16,),
                         dist_bins=16, angle_bins=16, **extra).eval()


def _registered(promise: str | None = None) -> list[str]:
    return sorted(n for n in FRAMES if promise is None or promise in promises_of(FRAMES[n]))


@pytest.mark.parametrize("name", _registered())
def test_scalar_outputs_keep_every_promise(name):
    model = tiny(name, layers=2)
    promised = model_promises(model)
    assert promised == frozenset.intersection(*(promises_of(m) for m in frame_modules(model).values()))
    assert_invariant(model, structures(), transforms_for(promised))


@pytest.mark.parametrize("name", _registered("equivariant"))
def test_vector_and_tensor_outputs_rotate_with_the_crystal(name):
    model = tiny(name, shapes=SHAPES)
    assert_invariant(model, structures()[:2], transforms_for(model_promises(model)))


@pytest.mark.parametrize("name", _registered("differentiable"))
def test_learned_frames_have_exact_gradients(name):
    model = tiny(name)
    own = {f"{m}.{p}" for m, mod in frame_modules(model).items() for p, _ in mod.named_parameters()}
    if own:  # the method's own parameters reach the outputs only through the axes
        assert_gradients_match(model, structures()[:2], only=own.__contains__)
    else:
        assert_gradients_match(model, structures()[:2])


# -- the checks catch broken promises -------------------------------------------------------------------------


def test_a_method_claiming_cell_invariance_wrongly_is_caught(monkeypatch):
    lattice = FRAMES["lattice"]  # frames from the lattice vectors: a supercell changes them
    liar = type("CellLiar", (lattice,), {"name": "cell_liar", "cell_invariant": True, "equivariant": True})
    monkeypatch.setitem(FRAMES, "cell_liar", liar)
    model = tiny("cell_liar")
    assert "cell_invariant" in model_promises(model)
    assert_invariant(model, structures(), transforms_for({"equivariant"}))  # rotations are fine
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(model, structures())


def test_a_method_claiming_gradients_it_detaches_is_caught(monkeypatch):
    learned = next(FRAMES[n] for n in _registered("differentiable")
                   if any(True for mod in frame_modules(tiny(n)).values() for _ in mod.parameters()))
    detached = type("Detached", (learned,), {"name": "detached", "forward": _detached_forward(learned)})
    monkeypatch.setitem(FRAMES, "detached", detached)
    model = tiny("detached")
    own = {f"{m}.{p}" for m, mod in frame_modules(model).items() for p, _ in mod.named_parameters()}
    assert own
    with pytest.raises(AssertionError, match="no gradient reaches"):
        assert_gradients_match(model, structures()[:1], only=own.__contains__)


def _detached_forward(cls):
    def forward(self, inp):
        out = cls.forward(self, inp)
        return tuple(t.detach() for t in out) if isinstance(out, tuple) else out.detach()
    return forward


class _Fixed:
    """A 'model' whose vector output ignores the structure's orientation: invariant, hence not equivariant."""

    config = {"target_names": ["v"]}
    target_kinds = ["3"]

    def predict(self, crystals):
        return {"v": np.tile([1.0, 0.5, 0.2], (len(crystals), 1))}


def test_tensor_rule_is_checked_not_just_invariance():
    with pytest.raises(AssertionError, match=r"rotation: target 'v' .* not equivariant \(3\)"):
        assert_invariant(_Fixed(), structures()[:1], ROTATIONAL)
    assert_invariant(_Fixed(), structures()[:1], [PERMUTATION])


# -- the transforms -------------------------------------------------------------------------------------------


def test_transforms_describe_the_same_crystal():
    s = structures()[0]
    R = random_rotation(3)
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)
    rot = rotate(s, R)
    assert np.allclose(rot.positions @ np.linalg.inv(rot.lattice), s.frac_coords, atol=1e-12)
    big = supercell(s, (2, 1, 3))
    assert big.num_atoms == 6 * len(s) and np.isclose(abs(np.linalg.det(big.lattice)), 6 * s.volume)
    other = change_basis(s, [[1, 1, 0], [0, 1, 1], [1, 1, 1]])
    assert np.isclose(abs(np.linalg.det(other.lattice)), s.volume)
    with pytest.raises(ValueError, match="determinant"):
        change_basis(s, [[2, 0, 0], [0, 1, 0], [0, 0, 1]])
    moved = reimage(s, seed=1)
    frac = moved.positions @ np.linalg.inv(moved.lattice) - s.frac_coords
    assert np.allclose(frac, np.round(frac), atol=1e-9) and np.abs(frac).max() > 0.5
    perm = permute(s, seed=2)
    assert sorted(map(tuple, perm.positions.round(9))) == sorted(map(tuple, s.cart_coords.round(9)))
    out, rot_used = ROTATION(s, 5)
    assert np.allclose(rot_used, random_rotation(5)) and isinstance(ROTATION, Transform)
    assert {t.name for t in CELL} == {"reimage", "change_basis", "supercell"}


def test_crystalformer_is_checked_for_everything():
    model = tiny("none")
    assert model_promises(model) == {"equivariant", "cell_invariant"}
    assert_invariant(model, structures())


def test_promise_lookup_reads_class_and_instance_attributes():
    cls = type("P", (), {"cell_invariant": True, "differentiable": False})
    assert promises(cls) == {"cell_invariant"}
    inst = cls()
    inst.equivariant = True
    assert promises(inst) == {"cell_invariant", "equivariant"}
    with pytest.raises(ValueError, match="unknown frame method"):
        promises("no_such_method")
