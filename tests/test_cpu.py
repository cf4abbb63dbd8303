"""Flushing denormal floats on the CPU during training and prediction, and nowhere else."""

from __future__ import annotations

import torch

from crystalframer.cpu import flush_denormals
from crystalframer.data.structures import to_crystal
from crystalframer.training.evaluation import predict_crystals


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


def test_prediction_and_evaluation_flush_inside_and_give_the_same_numbers(tiny_predictor, small_cells, monkeypatch):
    with flush_denormals() as supported:
        pass
    seen: list[float] = []  # a denormal product computed inside each forward pass
    hook = tiny_predictor.register_forward_pre_hook(lambda module, args: seen.append(_denormal()))
    try:
        with monkeypatch.context() as m:
            m.setenv("CRYSTALFRAMER_FLUSH_DENORMAL", "0")
            kept = tiny_predictor.predict(small_cells)
        assert seen and all(v > 0 for v in seen)  # switched off: denormals kept inside the forward
        seen.clear()
        flushed = tiny_predictor.predict(small_cells)
        evaluated = predict_crystals(tiny_predictor, [to_crystal(s) for s in small_cells])  # evaluate's loop
    finally:
        hook.remove()
    if supported:
        assert len(seen) == 2 and seen == [0.0, 0.0]
    assert _denormal() > 0
    torch.testing.assert_close(torch.as_tensor(flushed), torch.as_tensor(kept), rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.as_tensor(evaluated.y_pred), torch.as_tensor(kept), rtol=1e-12, atol=0)
