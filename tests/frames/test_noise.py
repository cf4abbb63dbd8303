"""The counter-based noise draws: the SplitMix64 stream, uniformity, seeding from torch, and the Numba
kernel against the torch integer ops."""

from __future__ import annotations

import pytest
import torch

from crystalframer.frames.noise import ULP, draw_seed, uniform
from crystalframer.numba_support import numba

# splitmix64.c (Vigna) from state 0: its first three outputs
SPLITMIX64_FROM_ZERO = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("flag", ["1", "0"])
def test_draws_are_the_splitmix64_stream(monkeypatch, flag):
    monkeypatch.setenv("CRYSTALFRAMER_NUMBA", flag)
    u = uniform(0, (3,), torch.float64)
    expected = torch.tensor([(z >> 40) * ULP for z in SPLITMIX64_FROM_ZERO], dtype=torch.float64)
    assert torch.equal(u, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_are_uniform_and_uncorrelated(dtype):
    u = uniform(12345, (400, 250), dtype).double().flatten()
    n = u.numel()
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 5 * (1 / 12 / n) ** 0.5
    assert abs(float(u.var()) - 1 / 12) < 0.002
    counts = torch.histc(u, bins=20, min=0, max=1)
    chi2 = float(((counts - n / 20) ** 2 / (n / 20)).sum())
    assert chi2 < 50  # 19 degrees of freedom: p < 1e-4
    lag1 = float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])
    assert abs(lag1) < 5 / n**0.5
    other = uniform(12346, (400, 250), dtype).double().flatten()  # neighbouring seeds: unrelated streams
    assert abs(float(torch.corrcoef(torch.stack([u, other]))[0, 1])) < 5 / n**0.5


def test_seed_follows_torch_manual_seed():
    torch.manual_seed(7)
    a = uniform(draw_seed(), (50,), torch.float32)
    b = uniform(draw_seed(), (50,), torch.float32)
    torch.manual_seed(7)
    assert torch.equal(uniform(draw_seed(), (50,), torch.float32), a)
    assert not torch.equal(a, b)


@pytest.mark.skipif(numba is None, reason="numba is not installed (pip install '.[fast]')")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_equals_torch_integer_ops(monkeypatch, dtype):
    seed = 2**62 - 12345  # large seeds overflow the int64 sums: the wrap must match uint64
    fast = uniform(seed, (37, 11, 8), dtype)
    monkeypatch.setenv("CRYSTALFRAMER_NUMBA", "0")
    assert torch.equal(fast, uniform(seed, (37, 11, 8), dtype))
