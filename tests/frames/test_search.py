"""The Numba two-axis frame search against the PyTorch search, and models with the CPU kernels against
models without them."""

from __future__ import annotations

import pytest
import torch

import crystalframer as cf
from crystalframer.data.batch import collate
from crystalframer.data.structures import to_crystal
from crystalframer.frames.search import two_axis_search
from crystalframer.numba_support import numba

needs_numba = pytest.mark.skipif(numba is None, reason="numba is not installed (pip install '.[fast]')")


def _frame_inputs(structures, dtype=torch.float32):
    """The FrameInput of every layer of a max-frame model on real cells."""
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="max", frame_noise=0.0).to(dtype).eval()
    seen = []
    for blk in m.layers:
        blk.attn.frame.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    with torch.no_grad():
        m(collate([to_crystal(s) for s in structures]).to(dtype=dtype))
    return seen


@needs_numba
@pytest.mark.parametrize("use_qk,literal,noisy,per_head", [(True, False, True, False), (True, False, False, False),
                                                          (False, False, True, False), (False, True, True, False),
                                                          (True, False, True, True)])
def test_kernel_picks_the_same_slots(monkeypatch, small_cells, use_qk, literal, noisy, per_head):
    """Max (q·k + a d²) and static (a d², literal d²) scores, with and without noise, candidates shared by
    the heads or per head (the official box): identical slot choices and flags on every layer."""
    g = torch.Generator().manual_seed(3)
    for inp in _frame_inputs(small_cells):
        seed = int(torch.randint(0, 2**62, (), generator=g)) if noisy else None
        cand = inp.candidate
        if per_head:  # drop a random third of the candidates per head, all of them for one (atom, head)
            cand = cand & (torch.rand(inp.qk.shape, generator=g) > 0.3)
            cand[0, :, 1] = False
        args = (inp.qk if use_qk else None, inp.a, inp.d2, seed, 1e-3, cand, inp.unit, literal)
        fast = two_axis_search(*args)
        monkeypatch.setenv("CRYSTALFRAMER_NUMBA", "0")
        ref = two_axis_search(*args)
        monkeypatch.delenv("CRYSTALFRAMER_NUMBA")
        for a, b in zip(fast, ref):
            assert torch.equal(a, b.expand_as(a))
        if per_head:
            assert not bool(fast[1][0, 1]) and not bool(fast[3][0, 1])


@needs_numba
@pytest.mark.parametrize("frame", ["max", "static"])
def test_model_with_kernels_equals_model_without(monkeypatch, small_cells, frame):
    """A float64 training step (published noise) and an evaluation (tie averaging): outputs and parameter
    gradients equal with and without the Numba kernels."""
    batch = collate([to_crystal(s) for s in small_cells]).to(dtype=torch.float64)
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame).double()
    m.train()
    m(batch)  # calibrates σ
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("CRYSTALFRAMER_NUMBA", flag)
        torch.manual_seed(1)
        m.train()
        m.zero_grad()
        y = m(batch)
        y.square().sum().backward()
        grads = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        m.eval()
        with torch.no_grad():
            results.append((y.detach(), grads, m(batch)))
    (y1, g1, e1), (y0, g0, e0) = results
    assert (y1 - y0).abs().max() <= 1e-9 * y0.abs().max()
    assert (g1 - g0).abs().max() <= 1e-8 * g0.abs().max()
    assert (e1 - e0).abs().max() <= 1e-9 * e0.abs().max()
