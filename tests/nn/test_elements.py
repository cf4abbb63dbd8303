"""Element descriptors in the atom embedding (``element_features=True``)."""

from __future__ import annotations

import numpy as np
import torch

import crystalframer as cf
from crystalframer.checkpoint import load, save_model
from crystalframer.nn.elements import PROPERTY_NAMES, element_property_table
from crystalframer.testing import assert_invariant


def _z(symbol: str) -> int:
    from pymatgen.core import Element

    return Element(symbol).Z - 1


def test_the_table_is_standardised_and_places_similar_elements_close():
    t = element_property_table().double()
    assert t.shape == (98, len(PROPERTY_NAMES))
    assert torch.isfinite(t).all()
    assert torch.allclose(t.mean(0), torch.zeros(t.shape[1], dtype=t.dtype), atol=1e-6)
    assert torch.allclose(t.std(0), torch.ones(t.shape[1], dtype=t.dtype), atol=1e-5)

    def dist(a: str, b: str) -> float:
        return float((t[_z(a)] - t[_z(b)]).norm())

    # same group, neighbouring rows vs. an element of another block
    assert dist("Zr", "Hf") < dist("Zr", "Cl")
    assert dist("Na", "K") < dist("Na", "F")
    assert dist("S", "Se") < dist("S", "Fe")


def _model(**kw) -> cf.CrystalFramer:
    torch.manual_seed(0)
    return cf.CrystalFramer(frame="max", num_layers=1, model_dim=16, num_heads=2, ff_dim=16, head_dims=[16],
                            dist_bins=8, angle_bins=8, frame_noise=0.0, **kw).eval()


def test_element_features_change_the_model_and_are_recorded(small_cells):
    plain, with_el = _model(), _model(element_features=True)
    assert "element_features" not in plain.config  # old configs and checkpoints unchanged
    assert with_el.config["element_features"] is True
    assert not hasattr(plain, "element_table")
    shared = {k: v for k, v in with_el.state_dict().items() if k in plain.state_dict()}
    assert set(with_el.state_dict()) - set(shared) == {"element_table", "element_embedding.weight"}
    a, b = plain.predict(small_cells), with_el.predict(small_cells)
    assert np.abs(a - b).max() > 1e-4


def test_a_model_with_element_features_is_invariant(real_low_symmetry, small_cells):
    assert_invariant(_model(element_features=True), list(real_low_symmetry[:2]) + list(small_cells))


def test_element_features_train_and_survive_a_checkpoint(small_cells, tmp_path, monkeypatch):
    model = _model(element_features=True).train()
    from crystalframer.data.batch import collate
    from crystalframer.data.structures import to_crystal

    batch = collate([to_crystal(s) for s in small_cells])
    model(batch).sum().backward()
    assert model.element_embedding.weight.grad.abs().sum() > 0
    assert model.element_table.grad is None  # a fixed table, not a parameter
    model.eval()
    monkeypatch.chdir(tmp_path)
    save_model(model, "elements.pt")  # a relative path, as users write it
    back = load("elements.pt")
    assert back.config["element_features"] is True
    assert torch.equal(back.element_table, model.element_table)
    np.testing.assert_array_equal(back.predict(small_cells), model.predict(small_cells))


def test_valence_shell_counts_follow_the_electron_configuration():
    from pymatgen.core import Element

    from crystalframer.nn.elements import _valence_counts

    assert _valence_counts(Element("Y")) == (2, 0, 1, 0)  # [Kr] 4d1 5s2
    assert _valence_counts(Element("O")) == (2, 4, 0, 0)
    assert _valence_counts(Element("Fe")) == (2, 0, 6, 0)
    assert _valence_counts(Element("Ce"))[3] >= 1  # a 4f element
