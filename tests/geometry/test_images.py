"""The σ-following sphere of images: its tail bound, and a model at the largest σ against a converged sphere."""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
from ase.build import bulk
from pymatgen.core import Lattice, Structure

import crystalframer as cf
from crystalframer.data.batch import collate
from crystalframer.data.structures import to_crystal
from crystalframer.geometry.images import (IMAGE_TOL, SpherePool, sphere_candidates, sphere_factor, sphere_images,
                                           tail_factor)

SIGMA_MAX = 1.4 / math.sqrt(0.5)  # r0 / √b of the default parametrisation


@lru_cache(maxsize=1)
def _cells():
    """Primitive cells of bcc Fe, diamond Si and rock salt (explicit: pymatgen's symmetry search is slow)."""
    fe = Structure(Lattice([[-1.435, 1.435, 1.435], [1.435, -1.435, 1.435], [1.435, 1.435, -1.435]]), ["Fe"],
                   [[0, 0, 0]])
    si = Structure(Lattice([[0, 2.715, 2.715], [2.715, 0, 2.715], [2.715, 2.715, 0]]), ["Si", "Si"],
                   [[0, 0, 0], [0.25, 0.25, 0.25]])
    nacl = Structure(Lattice([[0, 2.82, 2.82], [2.82, 0, 2.82], [2.82, 2.82, 0]]), ["Na", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0.5]])
    return [fe, si, nacl]


def test_tail_factor_is_the_chi3_quantile():
    for tol in (1e-5, 1e-6, 1e-7):
        k = tail_factor(tol)
        mass = math.erfc(k / math.sqrt(2)) + math.sqrt(2 / math.pi) * k * math.exp(-k * k / 2)
        assert mass == pytest.approx(tol, rel=1e-9)
    assert tail_factor(1e-6) == pytest.approx(5.5376, abs=1e-4)
    assert sphere_factor() == pytest.approx(tail_factor(IMAGE_TOL / 5))
    with pytest.raises(ValueError, match="tolerance"):
        tail_factor(0.0)
    with pytest.raises(ValueError, match="tolerance"):
        cf.CrystalFramer(image_tol=2.0)


@pytest.fixture(scope="module")
def reference_sphere():
    """Images within 20 Å (at σ_max the Gaussian beyond is ~1e-22 of the self weight), float64."""
    b = collate([to_crystal(s) for s in _cells()])
    return sphere_images(b.lattice.double(), b.pos.double(), b.ptr, 20.0)


@pytest.mark.parametrize("sigma", [1.0, 1.4, SIGMA_MAX])
def test_dropped_gaussian_weight_is_below_the_tolerance(sigma, reference_sphere):
    """Σ_(d > kσ) exp(−d²/2σ²) / Σ_all below 1e-6 for every atom of bcc Fe, Si and NaCl (the former fixed
    6.93 Å sphere dropped 7.9e-3 of bcc Fe's weight at σ_max)."""
    ref = reference_sphere
    g = torch.exp(-ref.d2 / (2 * sigma * sigma)) * ref.mask
    R = sphere_factor() * sigma
    dropped = (g * (ref.d2 > R * R)).sum(1) / g.sum(1)
    assert float(dropped.max()) < 1e-6
    if sigma == SIGMA_MAX:
        assert float(((g * (ref.d2 > 6.928**2)).sum(1) / g.sum(1)).max()) > 5e-3


def test_pool_restricts_to_each_atoms_radius():
    b = collate([to_crystal(s) for s in _cells()])
    pool = SpherePool(b.lattice, b.pos, b.ptr, cf.CrystalFramer().dist_basis)
    radius = torch.tensor([6.0, 8.0, 7.0, 5.0, 7.5])  # 5 atoms
    img, basis = pool.within(radius)
    for i in range(b.pos.shape[0]):  # the same points as a sphere of that radius alone
        alone = sphere_images(b.lattice, b.pos, b.ptr, float(radius[i]))
        got = sorted(img.d2[i][img.mask[i]].tolist())
        want = sorted(alone.d2[i][alone.mask[i]].tolist())
        assert got == pytest.approx(want, abs=1e-5)
    torch.testing.assert_close(basis[img.mask], pool.dist_basis(img.d2.sqrt())[img.mask])
    assert 8.0 <= pool.radius <= 8.5  # rounded up to the pool's 0.5 Å step


@pytest.mark.parametrize("frame", ["none", "max"])
def test_model_at_sigma_max_matches_a_converged_sphere(frame):
    """Every head at σ_max (α̂ → −∞): the default model equals one with a 20 Å sphere (dropped weight ~1e-22)
    to 1e-5 relative (the former fixed 6.93 Å default changed pooled features by 2e-3 here)."""
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame, num_layers=2).eval()
    ref = cf.CrystalFramer(frame=frame, num_layers=2, cutoff=20.0).eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        for mod in (m, ref):
            for blk in mod.layers:
                blk.attn.sigma_norm.copy_(torch.tensor([1.0, -1000.0, 1.0]))
        b = collate([to_crystal(s) for s in _cells()])
        out, want = m(b, return_all=True), ref(b, return_all=True)
    torch.testing.assert_close(torch.sqrt(-0.5 / out["a"]), torch.full_like(out["a"], SIGMA_MAX))
    rel = (out["pooled"] - want["pooled"]).norm(dim=1) / want["pooled"].norm(dim=1)
    assert float(rel.max()) < 1e-5


def test_a_mixed_batch_finds_each_structures_images_with_its_own_box():
    """A 2.5 Å cell beside a 14 Å cell: the batch search uses a box per structure (the small cell's box
    would make every pair of the large one try ~40x the shifts), with exactly the images and order of
    searching each structure alone."""
    big = Structure(Lattice.from_parameters(14.0, 13.1, 12.2, 88, 95, 101), ["Na", "Cl", "K", "Br"],
                    [[0, 0, 0], [0.27, 0.51, 0.44], [0.6, 0.15, 0.8], [0.9, 0.7, 0.3]])
    fe = bulk("Fe", "bcc", a=2.87)
    tri = Structure(Lattice.from_parameters(4.1, 4.6, 5.3, 81, 97, 105), ["Li", "O"], [[0, 0, 0], [0.4, 0.6, 0.5]])
    cs = [to_crystal(s) for s in (big, fe, tri, fe.copy())]
    b = collate(cs)
    for radius in (6.0, 11.5):
        both = sphere_candidates(b.lattice, b.pos, b.ptr, radius, chunk=5_000)
        alone = [sphere_candidates(b.lattice[k:k + 1], b.pos[int(b.ptr[k]):int(b.ptr[k + 1])],
                                   torch.tensor([0, int(b.ptr[k + 1] - b.ptr[k])]), radius) for k in range(4)]
        assert torch.equal(both.i, torch.cat([a.i + int(b.ptr[k]) for k, a in enumerate(alone)]))
        assert torch.equal(both.j, torch.cat([a.j + int(b.ptr[k]) for k, a in enumerate(alone)]))
        for f in ("vec", "d2", "shift"):
            assert torch.equal(getattr(both, f), torch.cat([getattr(a, f) for a in alone])), f
        # every image within the radius, none beyond: brute force over a box that surely holds the sphere
        for k, c in enumerate(cs):
            box = torch.stack(torch.meshgrid(*[torch.arange(-14, 15)] * 3, indexing="ij"), -1).reshape(-1, 3)
            lat = torch.as_tensor(c.lattice, dtype=torch.float64)
            pos = torch.as_tensor(c.positions, dtype=torch.float64)
            r = pos[None, :, None] - pos[:, None, None] + (box.double() @ lat)[None, None]
            assert int(((r * r).sum(-1) <= radius * radius).sum()) == alone[k].i.shape[0]
