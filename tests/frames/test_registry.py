"""The frame registry: built-in names, "package.module:Class" plugins stored in checkpoints, and promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crystalframer as cf
from crystalframer.frames.base import BUILTIN_FRAMES, FRAMES, FrameMethod, build_frame
from tests.frames.plugin import QRLatticeFrame

PLUGIN = "tests.frames.plugin:QRLatticeFrame"
SMALL = dict(num_layers=1, model_dim=16, num_heads=2, ff_dim=32, head_dims=(16,), cutoff=4.0)


def test_builtin_names_resolve_to_their_classes_wherever_they_live():
    assert set(BUILTIN_FRAMES) <= set(FRAMES)
    for name in BUILTIN_FRAMES:
        cls = FRAMES[name]
        assert issubclass(cls, FrameMethod) and cls.name == name
    assert FRAMES["spframe_gs"].__module__ == "crystalframer.nn.frame_predictors"
    assert build_frame("spframe_gs", dim=8, heads=2).heads == 2


def test_a_plugin_frame_is_built_saved_and_loaded_by_its_path(tmp_path, monkeypatch, small_cells):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = cf.CrystalFramer(frame=PLUGIN, **SMALL).eval()
    assert isinstance(model.layers[0].attn.frame, QRLatticeFrame)
    ref = model.predict(small_cells)
    torch.manual_seed(0)
    plain = cf.CrystalFramer(frame="none", **SMALL).eval()
    assert np.abs(ref - plain.predict(small_cells)).max() > 1e-4  # the plugin's frames reach the output
    cf.save_model(model, "plugin.pt")
    loaded = cf.load("plugin.pt")
    assert loaded.config["frame"] == PLUGIN
    assert isinstance(loaded.layers[0].attn.frame, QRLatticeFrame)
    np.testing.assert_array_equal(loaded.predict(small_cells), ref)


@pytest.mark.parametrize("name,message", [
    ("maxx", "unknown frame method 'maxx'"),
    ("tests.frames.no_such_module:Frame", "cannot import module 'tests.frames.no_such_module'"),
    ("tests.frames.plugin:NoSuchFrame", "has no attribute 'NoSuchFrame'"),
    ("crystalframer.frames.global_frames:qr_frame", "not a FrameMethod subclass"),
    ("tests.frames.plugin:", "must look like 'package.module:Class'"),
])
def test_bad_frame_names_are_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        cf.CrystalFramer(frame=name, **SMALL)


def test_every_builtin_method_declares_its_promises():
    for name in BUILTIN_FRAMES:
        cls = FRAMES[name]
        for promise in ("equivariant", "cell_invariant", "differentiable"):
            assert isinstance(getattr(cls, promise), bool), (name, promise)
    assert [n for n in BUILTIN_FRAMES if FRAMES[n].differentiable] == ["spframe_quat", "spframe_gs", "equiv_gs_local"]
    assert not FRAMES["lattice"].cell_invariant and not FRAMES["pca"].cell_invariant and FRAMES["max"].cell_invariant


def test_spframe_promises_follow_the_global_frame():
    assert not build_frame("spframe_quat", dim=8, heads=2).cell_invariant
    assert build_frame("spframe_quat", dim=8, heads=2, global_frame="reduced").cell_invariant
    assert not build_frame("spframe_quat", dim=8, heads=2, global_frame="reduced", ties="first").cell_invariant
    assert not build_frame("spframe_global", heads=2, global_frame="identity").equivariant
    assert build_frame("spframe_global", heads=2).equivariant
