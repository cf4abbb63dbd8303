"""Model-level behaviour: sizes, initialisation, σ normalisation, batching, inputs and outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crystalframer as cf
from crystalframer.data.batch import collate
from crystalframer.data.structures import to_crystal


@pytest.mark.parametrize("frame,count", [("none", 853_517), ("max", 951_821), ("static", 951_821),
                                         ("weighted_pca", 951_821), ("pca", 951_821), ("lattice", 951_821)])
def test_parameter_counts_match_the_papers(frame, count):
    m = cf.CrystalFramer(frame=frame)
    assert m.num_parameters() == count
    assert m.num_parameters() - m.num_parameters(trainable_only=True) == 12  # frozen σ-normalisation


def test_t_fixup_initialisation_scales():
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="max")
    assert abs(m.embedding.weight.std().item() - 128**-0.5 * 36**-0.25) < 2e-3
    f = 0.67 * 4**-0.25
    bound = (6 / 256) ** 0.5
    assert abs(m.layers[0].attn.w_v.abs().max().item() - f * bound) < 2e-3  # scaled
    assert abs(m.layers[0].attn.w_q.abs().max().item() - bound) < 2e-3  # not scaled
    assert abs(m.layers[0].attn.dist_proj.abs().max().item() - (6 / 192) ** 0.5 / 8) < 1e-3


def test_prediction_alone_equals_prediction_in_a_batch(real_low_symmetry, small_cells):
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="max", frame_noise=0.0).eval()
    structs = list(real_low_symmetry) + list(small_cells)
    together = m.predict(structs, batch_size=64)
    alone = np.concatenate([m.predict([s]) for s in structs])
    assert np.abs(together - alone).max() < 1e-6


def test_sigma_normalisation_is_frozen_from_the_first_training_batch(real_low_symmetry, small_cells):
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="none", num_layers=2)
    b1 = collate([to_crystal(s) for s in real_low_symmetry])
    b2 = collate([to_crystal(s) for s in small_cells])
    attn = m.layers[0].attn
    assert not attn.calibrated
    m.eval()
    with torch.no_grad():
        m(b1)
    assert not attn.calibrated  # eval never calibrates
    m.train()
    m(b1)
    pair = attn.sigma_norm.detach().clone()
    assert attn.calibrated and pair[0] > 0
    m(b2)
    assert torch.equal(pair, attn.sigma_norm.detach())  # frozen after the first batch
    assert "layers.0.attn.sigma_norm" in m.state_dict()


def test_inputs_from_structures_atoms_and_files_agree(tmp_path, real_low_symmetry):
    from pymatgen.io.ase import AseAtomsAdaptor

    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="max", frame_noise=0.0, num_layers=2).eval()
    s = real_low_symmetry[0]
    path = tmp_path / "s.cif"
    s.to(filename=str(path))
    poscar = tmp_path / "POSCAR"
    s.to(filename=str(poscar), fmt="poscar")
    outs = m.predict([s, AseAtomsAdaptor.get_atoms(s), str(path), poscar])
    assert np.abs(outs - outs[0]).max() < 1e-5


def test_multi_target_outputs_are_denormalised():
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="none", n_targets=3, target_names=["a", "b", "c"], num_layers=1).eval()
    s = {"id": "x", "lattice": np.eye(3) * 4.0, "cart_coords": [[0, 0, 0], [2, 2, 2]], "species": [11, 17]}
    raw = m.predict([s])
    m.target_mean.copy_(torch.tensor([1.0, -2.0, 10.0]))
    m.target_std.copy_(torch.tensor([2.0, 0.5, 3.0]))
    out = m.predict([s])
    np.testing.assert_allclose(out, raw * [2.0, 0.5, 3.0] + [1.0, -2.0, 10.0], rtol=1e-6)
    emb = m.embed([s, s])
    assert emb.shape == (2, 128) and np.allclose(emb[0], emb[1])


def test_return_all_shapes(real_low_symmetry):
    m = cf.CrystalFramer(frame="max").eval()
    batch = collate([to_crystal(s) for s in real_low_symmetry[:2]])
    with torch.no_grad():
        out = m(batch, return_all=True)
    N = batch.pos.shape[0]
    assert out["pred"].shape == (2, 1) and out["pooled"].shape == (2, 128)
    assert out["states"].shape == (N, 4, 128) and out["a"].shape == (N, 4, 8)
    assert out["frames"].shape == (N, 4, 8, 3, 3)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="images"):
        cf.CrystalFramer(images="cube")
    with pytest.raises(ValueError, match="unknown frame"):
        cf.CrystalFramer(frame="nonsense")
    with pytest.raises(ValueError, match="target names"):
        cf.CrystalFramer(n_targets=2, target_names=["a"])


@pytest.mark.parametrize("frame", ["none", "max"])
def test_per_slot_path_for_large_cells_equals_per_pair_path(frame, real_low_symmetry):
    """A 3×3×3 supercell (378 atoms, more pairs than image slots) is evaluated per slot; its primitive
    cell per pair. Mean pooling makes their predictions equal."""
    from crystalframer.geometry.images import sphere_images

    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame, frame_noise=0.0, num_layers=2).eval()
    prim = real_low_symmetry[4]  # 14 atoms
    big = prim * [3, 3, 3]
    b_big = collate([to_crystal(big)])
    assert not sphere_images(b_big.lattice, b_big.pos, b_big.ptr, 9.0).use_pairs  # ~ the radius at init
    out = m.predict([prim, big])
    assert abs(out[0, 0] - out[1, 0]) < 2e-5


@pytest.mark.parametrize("frame", ["none", "max", "weighted_pca", "spframe_quat"])
def test_bf16_autocast_runs_and_stays_close_to_float32(frame, real_low_symmetry, small_cells):
    """bf16-mixed training: the attention runs in float32 inside autocast (index sums need one dtype, frame
    ties need float32 scores), the linear layers in bf16; outputs within bf16 rounding of float32 ones and
    gradients reach every trained parameter."""
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame, num_layers=2, frame_noise=0.0).train()
    batch = collate([to_crystal(s) for s in list(real_low_symmetry)[:3] + list(small_cells)[:2]])
    ref = m(batch).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(batch)
    assert y.dtype == torch.bfloat16
    err = (y.float() - ref).abs().max() / ref.abs().max()
    assert err < 3e-2, float(err)
    y.float().square().mean().backward()
    trained = [n for n, p in m.named_parameters() if p.requires_grad]
    missing = [n for n, p in m.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert trained and not missing, missing
