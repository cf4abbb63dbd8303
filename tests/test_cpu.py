"""Flushing denormal floats on the CPU during training and prediction, and nowhere else."""

from __future__ import annotations

import torch

from crystalframer.cpu import flush_denormals


def _denormal() -> float:
    return float(torch.tensor([1e-30], dtype=torch.float32) * torch.tensor([1e-10], dtype=torch.float32))


def test_flushing_is_on_inside_the_block_and_off_after_it(monkeypatch):
    assert _denormal() > 0  # PyTorch's default keeps denormals
    with flush_denormals() as on:
        if on:  # a CPU without the mode (not x86 SSE3) keeps them and says so
            assert _denormal() == 0.0
            with flush_denormals():
                pass
            assert _denormal() == 0.0  # an inner block leaves the outer one's setting
    assert _denormal() > 0
    monkeypatch.setenv("CRYSTALFRAMER_FLUSH_DENORMAL", "0")
    with flush_denormals() as on:
        assert not on and _denormal() > 0


def test_prediction_gives_the_same_numbers_and_leaves_the_setting_off(tiny_predictor, small_cells):
    with flush_denormals(False):
        kept = tiny_predictor.predict(small_cells)
    flushed = tiny_predictor.predict(small_cells)
    assert _denormal() > 0
    torch.testing.assert_close(torch.as_tensor(flushed), torch.as_tensor(kept), rtol=1e-12, atol=0)
