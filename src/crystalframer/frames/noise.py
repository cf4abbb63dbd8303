"""Uniform draws for the published tie-breaking noise, from a counter-based hash.

Draw i of a call is a pure function of (seed, i): the SplitMix64 finaliser of seed + (i + 1)·γ (Steele et
al. 2014), whose top 24 bits give u ∈ [0, 1) exactly in float32 and float64. The seed is one draw from
torch's default generator, so ``torch.manual_seed`` still fixes a run. Because any draw can be made on its
own, the Numba frame search evaluates the noise of a slot where it reads the slot, with no (N, M, H) array;
:func:`uniform` gives the same numbers as a tensor (a Numba kernel on CPU, torch integer ops on any
device), bit for bit. torch.rand, single-threaded on CPU, cost 3–6 ms per layer on batch48, as much as the
frame search itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from crystalframer.numba_support import njit, np_scalar, numba, prange, run_kernel, use_numba

_GAMMA = 0x9E3779B97F4A7C15  # 2⁶⁴ / golden ratio: the SplitMix64 increment
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_BITS = 24  # float32 resolution: the draws are exact in either dtype
ULP = 2.0**-_BITS


def draw_seed() -> int:
    """A 62-bit seed from torch's default CPU generator (``torch.manual_seed`` reproduces it)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def _signed(x: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return x - 2**64 if x >= 2**63 else x


def _uniform_torch(seed: int, numel: int, device: torch.device) -> Tensor:
    """The 24-bit draws 0 .. numel − 1 as int64, in place: a fresh tensor per operation made this 4× slower."""
    # int64 products wrap modulo 2⁶⁴ like the uint64 ones, so the bits are SplitMix64's; torch's >> is
    # arithmetic on signed integers, so each shift is masked to a logical one
    z = torch.arange(1, numel + 1, dtype=torch.int64, device=device).mul_(_signed(_GAMMA)).add_(_signed(seed))
    t = torch.empty_like(z)
    for shift, mult in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t).bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(t)
        if mult is not None:
            z.mul_(_signed(mult))
    return z.bitwise_right_shift_(64 - _BITS).bitwise_and_((1 << _BITS) - 1)


def uniform(seed: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """Draws u ∈ [0, 1) of ``shape``, element i (row-major) being hash_uniform(seed, i)."""
    device = torch.device(device)
    out = torch.empty(shape, dtype=dtype, device=device)
    if use_numba(out):
        run_kernel(_fill_kernel, np.uint64(seed), np_scalar(ULP, dtype), out.view(-1).numpy())
        return out
    return _uniform_torch(seed, out.numel(), device).view(shape).to(dtype).mul_(ULP)


hash_uniform = None  # the jitted draw, where Numba is installed

if numba is not None:
    _G, _A, _B = np.uint64(_GAMMA), np.uint64(_M1), np.uint64(_M2)

    @njit(inline="always")
    def hash_uniform(seed, i, ulp):  # pragma: no cover - jitted
        """Draw i (int) of ``seed`` (np.uint64) in [0, 1), in the dtype of ``ulp`` (2⁻²⁴ in that dtype:
        numba would promote an integer times a float32 to float64)."""
        z = seed + np.uint64(i + 1) * _G
        z = (z ^ (z >> np.uint64(30))) * _A
        z = (z ^ (z >> np.uint64(27))) * _B
        z = z ^ (z >> np.uint64(31))
        return np.float32(z >> np.uint64(64 - _BITS)) * ulp  # the 24-bit integer is exact in float32

    @njit(parallel=True, cache=True)
    def _fill_kernel(seed, ulp, out):  # pragma: no cover - jitted
        for i in prange(out.shape[0]):
            out[i] = hash_uniform(seed, i, ulp)
