"""Sphere images searched in DataLoader workers: the forward pass only selects from them, bit for bit the same."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from torch.utils.data import DataLoader

from crystalframer.data.batch import collate
from crystalframer.data.structures import to_crystal
from crystalframer.geometry.images import (IMAGE_TOL, pool_radius, sphere_candidates, sphere_factor,
                                           sphere_images)
from crystalframer.models import CrystalFramer

FIELDS = ("j", "vec", "d2", "mask", "shift", "pair", "pair_i", "pair_j")


def crystals():
    tri = Structure(Lattice.from_parameters(4.1, 4.6, 5.3, 81, 97, 105), ["Li", "Fe", "O", "O"],
                    [[0, 0, 0], [0.31, 0.52, 0.47], [0.12, 0.71, 0.23], [0.63, 0.18, 0.81]])
    nacl = bulk("NaCl", "rocksalt", a=5.6)
    nacl.rattle(0.08, seed=1)
    si = bulk("Si", "diamond", a=5.43, cubic=True)  # 8 atoms: more pairs than slots at small radii
    return [to_crystal(s) for s in (tri, nacl, si)]


def tiny(**kw) -> CrystalFramer:
    torch.manual_seed(0)
    return CrystalFramer(num_layers=2, model_dim=16, num_heads=2, ff_dim=16, head_dims=(16,), dist_bins=16,
                         angle_bins=16, **kw)


@pytest.mark.parametrize("radius", [3.0, 6.5, 9.0])
def test_images_selected_from_a_larger_search_are_identical(radius):
    b = collate(crystals())
    cand = sphere_candidates(b.lattice, b.pos, b.ptr, 10.0)
    direct = sphere_images(b.lattice, b.pos, b.ptr, radius)
    chosen = sphere_images(b.lattice, b.pos, b.ptr, radius, candidates=cand)
    for f in FIELDS:
        assert torch.equal(getattr(direct, f), getattr(chosen, f)), f
    assert cand.within(radius).i.shape[0] == int(direct.mask.sum())
    with pytest.raises(ValueError, match="reach 10.0 Å, 11.0 Å asked for"):
        cand.within(11.0)
    # candidates that do not reach the radius are not used: the images are searched again
    wide = sphere_images(b.lattice, b.pos, b.ptr, 11.0, candidates=cand)
    assert torch.equal(wide.mask, sphere_images(b.lattice, b.pos, b.ptr, 11.0).mask)


@pytest.mark.parametrize("options", [{"frame": "max"}, {"frame": "none"}, {"frame": "max", "cutoff": 5.0}],
                         ids=["sigma-sphere", "crystalformer", "fixed-cutoff"])
def test_outputs_and_gradients_are_bit_identical_with_worker_images(options):
    model = tiny(**options).train()
    cs = crystals()
    plain, ready = model.collate(cs), model.collate(cs, images=True)
    assert plain.sphere is None and ready.sphere is not None
    assert ready.sphere.radius == model.image_radius()
    model(plain)  # calibrates the σ normalisation on the first training batch
    outs, grads = [], []
    for b in (plain, ready):
        torch.manual_seed(1)  # the same tie-breaking noise in both training steps
        model.zero_grad()
        y = model(b)
        y.sum().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_the_pool_radius_bounds_every_sigma_the_model_can_produce():
    model = tiny(frame="max").eval()  # uncalibrated σ normalisation (in training it would calibrate on q)
    c = model.config
    sigma_max = c["r0"] / math.sqrt(c["sigma_lb"])
    assert model.image_radius() == pool_radius(sigma_max) >= sphere_factor(IMAGE_TOL) * sigma_max
    attn = model.layers[0].attn
    w = attn.sigma_weight.detach().view(1, 2, 8)
    q = torch.cat([w.sign() * 1e4, -w.sign() * 1e4, torch.randn(64, 2, 8)])  # extremes: ρ at its lower bound
    sigma = torch.sqrt(-0.5 / attn.gaussian_coef(q).detach().double())
    assert float(sigma.max()) <= sigma_max * (1 + 1e-6)
    assert float(sigma.max()) > 0.99 * sigma_max  # the bound is reached, so it is the right one
    assert tiny(frame="max", images="box").image_radius() is None
    assert tiny(frame="max", cutoff=7.0).image_radius() == 7.0


def test_dataloader_workers_attach_the_images_and_the_main_process_does_not():
    model = tiny(frame="max").eval()
    cs = crystals()
    assert model.collate(cs).sphere is None
    loader = DataLoader(cs, batch_size=3, collate_fn=model.collate, num_workers=1)
    (batch,) = list(loader)
    assert batch.sphere is not None and batch.sphere.radius == model.image_radius()
    with torch.no_grad():
        assert np.array_equal(model(batch).numpy(), model(model.collate(cs)).numpy())
