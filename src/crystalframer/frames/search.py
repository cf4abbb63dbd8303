"""The two-axis frame search of max and static frames (Ito et al., ICLR 2025), in PyTorch and as a Numba kernel.

Per atom n and head h, with the distance term d = d²_nm (+ u_nmh, the tie-breaking noise in Å²):

    s1 = q·k/√d_h + a_nh d        (max frames; static frames drop q·k),
    e1 = the candidate slot maximising s1,
    r2 = the candidate slot with |e1 · r̂| < COLLINEAR maximising  base + log max(1 − |e1 · r̂|, LOG_FLOOR),

with base = s1 (or the bare d for the released static kernel's literal rule); the first maximum wins ties.
The PyTorch version makes a dozen passes over (N, M, H) tensors; the kernel works per (atom, head) on two
rows of M scratch values (the distance terms, each noise draw made once, and the first-axis scores). They
agree exactly where scores are not within rounding of each other; a tie that close is broken by rounding, as
the noise would break it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from crystalframer.frames.axes import gather_slots, masked_argmax
from crystalframer.frames.noise import ULP, hash_uniform, uniform
from crystalframer.numba_support import njit, np_scalar, numba, prange, run_kernel, use_numba

#: Images with |cos| to e1 at or above this are not candidates for the second axis.
COLLINEAR = 0.9999
#: Floor of 1 − |cos| inside the log of the second-axis score.
LOG_FLOOR = 1e-5


def two_axis_search(qk: Tensor | None, a: Tensor, d2: Tensor, seed: int | None, noise: float,
                    candidate: Tensor, unit: Tensor, literal: bool = False) -> tuple[Tensor, ...]:
    """Slots of the two axes.

    Args:
        qk: (N, M, H) q·k/√d_h, or None (static frames); a: (N, H) in Å⁻²; d2: (N, M) squared distances
        (Å²); seed: of the draws rnd (N, M, H) = :func:`.noise.uniform` for the noise u = (rnd − ½)·noise
        (the kernel draws each where it reads the slot), or None for no noise;
        candidate: (N, M, 1 or H) slots allowed as axes; unit: (N, M, 3) directions;
        literal: the second score's base is d instead of s1.
    Returns:
        e1_idx, has1, r2_idx, has2: (N, H) slot indices and whether any slot was allowed.
    """
    if use_numba(unit):
        return _search_numba(qk, a, d2, seed, noise, candidate, unit, literal)
    d = d2[:, :, None]
    if seed is not None:
        rnd = uniform(seed, (*d2.shape, a.shape[1]), unit.dtype, unit.device)
        d = d + (rnd - 0.5) * noise
    s1 = a[:, None, :] * d
    if qk is not None:
        s1 = qk + s1
    e1_idx, has1 = masked_argmax(s1, candidate)
    e1 = gather_slots(unit, e1_idx)  # (N, H, 3)
    cos = torch.einsum("nmc,nhc->nmh", unit, e1)
    allowed = candidate & (cos.abs() < COLLINEAR)
    second = (d if literal else s1) + torch.log(torch.clamp(1 - cos.abs(), min=LOG_FLOOR))
    r2_idx, has2 = masked_argmax(second, allowed)
    return e1_idx, has1, r2_idx, has2


def _search_numba(qk, a, d2, seed, noise, candidate, unit, literal):
    N, H = a.shape
    dt = unit.dtype
    qk_ = (qk if qk is not None else unit.new_empty(0, 0, 0)).detach().to(dt).contiguous()
    out = [torch.empty(N, H, dtype=torch.long), torch.empty(N, H, dtype=torch.bool),
           torch.empty(N, H, dtype=torch.long), torch.empty(N, H, dtype=torch.bool)]
    run_kernel(_search_kernel, qk_.numpy(), a.detach().to(dt).contiguous().numpy(),
               d2.detach().to(dt).contiguous().numpy(), np.uint64(seed or 0), seed is not None,
               np_scalar(noise, dt), np_scalar(ULP, dt),
               candidate.contiguous().numpy(), unit.detach().contiguous().numpy(), literal,
               np_scalar(COLLINEAR, dt), np_scalar(LOG_FLOOR, dt), np_scalar(0.5, dt), np_scalar(1.0, dt),
               *(t.numpy() for t in out))
    return tuple(out)


if numba is not None:

    @njit(parallel=True, cache=True)
    def _search_kernel(qk, a, d2, seed, noisy, noise, ulp, cand, unit, literal, collinear, log_floor, half, one,
                       e1_idx, has1, r2_idx, has2):  # pragma: no cover - jitted
        N, M = d2.shape
        H = a.shape[1]
        use_qk = qk.shape[0] > 0
        ninf = -np.inf
        for n in prange(N):
            dn = np.empty(M, d2.dtype)  # the distance term d² (+ noise) of each slot
            s = np.empty(M, d2.dtype)  # the first-axis score, −inf off the candidates
            if not noisy:
                dn[:] = d2[n]
            for h in range(H):
                hc = h if cand.shape[2] > 1 else 0
                ah = a[n, h]
                if noisy:  # each draw is made once, here, and reused by the second axis
                    first = n * M * H + h
                    for m in range(M):
                        dn[m] = d2[n, m] + (hash_uniform(seed, first + m * H, ulp) - half) * noise
                for m in range(M):
                    v = ah * dn[m]
                    if use_qk:
                        v = qk[n, m, h] + v
                    s[m] = v if cand[n, m, hc] else ninf
                best, bi = s[0], 0
                for m in range(1, M):
                    if s[m] > best:
                        best, bi = s[m], m
                e1_idx[n, h], has1[n, h] = bi, best > ninf
                e0, e1, e2 = unit[n, bi, 0], unit[n, bi, 1], unit[n, bi, 2]
                best, bi2, found2 = one - one, 0, False
                for m in range(M):
                    if s[m] == ninf:  # not a candidate
                        continue
                    base = dn[m] if literal else s[m]
                    if found2 and not base > best:  # log(1 − |c|) <= 0 cannot lift it above best
                        continue
                    c = abs(unit[n, m, 0] * e0 + unit[n, m, 1] * e1 + unit[n, m, 2] * e2)
                    if c < collinear:
                        base = base + np.log(max(one - c, log_floor))
                        if not found2 or base > best:
                            best, bi2, found2 = base, m, True
                r2_idx[n, h], has2[n, h] = bi2, found2
