"""The Numba kernels of the angular moment sums against the PyTorch scatter path they replace on CPU."""

from __future__ import annotations

import threading

import pytest
import torch

from crystalframer import numba_support
from crystalframer.nn.angular import (angle_histogram, dense_angle_features, direction_angle_features,
                                      moment_kernel_applies, slot_angle_features)
from crystalframer.nn.basis import AngleBasis
from crystalframer.nn.moments import SlotMoments

needs_numba = pytest.mark.skipif(numba_support.numba is None, reason="numba is not installed (pip install '.[fast]')")


def _slots(seed: int, dtype: torch.dtype, S: int = 300, H: int = 3, K: int = 3, R: int = 11):
    g = torch.Generator().manual_seed(seed)
    atom = torch.sort(torch.randint(0, R, (S,), generator=g)).values
    atom[atom == 1] = 2  # a row without slots
    w = torch.rand(S, H, generator=g, dtype=torch.float64).to(dtype)
    cos = (torch.rand(S, H, K, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    cos[:4, 0, 0] = torch.tensor([-1.0, 1.0, -1.0 + 1e-7, 1.0 - 1e-7], dtype=dtype)  # the ends of the basis
    start = torch.zeros(R + 1, dtype=torch.long)
    start[1:] = torch.cumsum(torch.bincount(atom, minlength=R), 0)
    return w, cos, atom, start


@needs_numba
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_kernel_equals_scatter_path_with_gradients(dtype, tol):
    w, cos, _, start = _slots(0, dtype)
    basis = AngleBasis()
    P = basis.moment_count(dtype)
    results = []
    for fast in (True, False):
        wr, cr = w.clone().requires_grad_(), cos.clone().requires_grad_()
        acc = SlotMoments.apply(wr, cr, start, basis.bins, P, fast)
        acc_hrkdp = acc if fast else acc.permute(1, 2, 3, 4, 0)
        g = torch.randn(acc_hrkdp.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        (acc_hrkdp * g).sum().backward()
        results.append((acc_hrkdp.detach(), wr.grad, cr.grad))
    for a, b in zip(*results):
        assert (a - b).abs().max() <= tol * b.abs().max()
    assert results[0][0][:, 1].abs().max() == 0  # the empty row


@needs_numba
def test_features_equal_direct_basis_sums_on_both_paths(monkeypatch):
    """slot_angle_features with the kernel and with the scatters equals direct evaluation of the basis."""
    w, cos, atom, _ = _slots(2, torch.float64, S=200, H=2, R=7)
    basis = AngleBasis()
    proj = torch.randn(3, 2, 5, basis.bins, dtype=torch.float64)
    ref = torch.zeros(7, 2, 5, dtype=torch.float64)
    for i in range(7):
        sel = atom == i
        if sel.any():
            hist = angle_histogram(w[sel].T[None], cos[sel].permute(1, 0, 2)[None], basis)[0]  # (H, K, D)
            ref[i] = torch.einsum("hkd,khcd->hc", hist, proj)
    for flag in ("1", "0"):
        monkeypatch.setenv("CRYSTALFRAMER_NUMBA", flag)
        assert numba_support.use_numba(cos) == (flag == "1")
        out = slot_angle_features(w, cos, atom, 7, basis, proj)
        assert (out - ref).abs().max() < 1e-8 * ref.abs().max()


@needs_numba
def test_kernel_gradcheck_and_concurrent_threads():
    w, cos, atom, _ = _slots(3, torch.float64, S=40, H=2, R=5)
    basis = AngleBasis(16, 1.0)
    proj = torch.randn(3, 2, 4, 16, dtype=torch.float64, requires_grad=True)
    w.requires_grad_()
    cos.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: slot_angle_features(a, b, atom, 5, basis, c), (w, cos, proj))
    ref = slot_angle_features(w, cos, atom, 5, basis, proj).detach()
    outs: list = []

    def work():
        outs.append(slot_angle_features(w.detach(), cos.detach(), atom, 5, basis, proj.detach()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 4 and all(torch.equal(o, ref) for o in outs)


def test_unsorted_atoms_give_the_same_features():
    w, cos, atom, _ = _slots(4, torch.float64, S=120, H=2, R=6)
    basis = AngleBasis()
    proj = torch.randn(3, 2, 4, basis.bins, dtype=torch.float64)
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(5))
    a = slot_angle_features(w, cos, atom, 6, basis, proj)
    b = slot_angle_features(w[perm], cos[perm], atom[perm], 6, basis, proj)
    assert (a - b).abs().max() < 1e-12 * a.abs().max()


@needs_numba
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_dense_kernel_equals_slot_path_with_gradients(dtype, tol):
    """Padded slots straight from (w, r̂, axes), by Chebyshev moments: same features and gradients (weights and
    projection) as the flat slot list's power moments (both truncated at 1e-12 in float64), with directionless
    slots and slots under the weight floor left out."""
    g = torch.Generator().manual_seed(6)
    N, M, H, C = 9, 23, 3, 5
    logits = torch.randn(N, M, H, generator=g, dtype=torch.float64) * 4
    logits[:, -3:] = -80.0  # far images: weights below the floor for every head
    w = torch.softmax(logits, 1).to(dtype).requires_grad_()
    unit = torch.nn.functional.normalize(torch.randn(N, M, 3, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    axes = torch.linalg.qr(torch.randn(N, H, 3, 3, generator=g, dtype=torch.float64))[0].transpose(-1, -2)
    axes = axes.to(dtype)
    has_dir = torch.rand(N, M, generator=g) > 0.15
    basis = AngleBasis()
    proj = torch.randn(3, H, C, basis.bins, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    floor = 1e-12
    dense = dense_angle_features(w, unit, axes, has_dir, floor, basis, proj)
    keep = has_dir & (w.detach().amax(-1) > floor)
    assert 0 < int(keep.sum()) < int(has_dir.sum())
    n, m = torch.nonzero(keep, as_tuple=True)
    cos = torch.einsum("nmc,nhkc->nmhk", unit, axes)[n, m]
    slot = slot_angle_features(w[n, m], cos, n, N, basis, proj)
    gout = torch.randn(N, H, C, generator=g, dtype=torch.float64).to(dtype)
    g_dense, gp_dense = torch.autograd.grad((dense * gout).sum(), (w, proj))
    g_slot, gp_slot = torch.autograd.grad((slot * gout).sum(), (w, proj))
    assert (dense - slot).abs().max() <= tol * slot.abs().max()
    assert (g_dense - g_slot).abs().max() <= tol * g_slot.abs().max()
    assert (gp_dense - gp_slot).abs().max() <= tol * gp_slot.abs().max()
    assert g_dense[~keep].abs().max() == 0


def _chebyshev_values(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_l coef[d, l] T_l(x) with T_l(x) = cos(l·acos x), float64: (D, L), (G,) → (G, D)."""
    l = torch.arange(coef.shape[1], dtype=torch.float64)
    return torch.cos(l * torch.acos(x.clamp(-1, 1))[:, None]) @ coef.T


@pytest.mark.parametrize("bins,width", [(64, 4.0), (16, 1.0)])
def test_chebyshev_expansion_reproduces_the_basis_to_its_tolerance(bins, width):
    """C (D, L) reproduces every basis function on [−1, 1] (ends included) below the dtype's tolerance, and L
    is the smallest count whose error bound does: one term fewer leaves some function above it."""
    basis = AngleBasis(bins, width)
    x = torch.cat([torch.linspace(-1, 1, 4001, dtype=torch.float64), torch.tensor([-1 + 1e-9, 1 - 1e-9])])
    exact = basis.values(x)
    for dtype, tol in ((torch.float32, 1e-7), (torch.float64, 1e-12)):
        coef = basis.chebyshev_matrix(dtype=torch.float64)[:, :basis.chebyshev_count(dtype)]
        assert coef.shape == (bins, basis.chebyshev_count(dtype))
        assert (_chebyshev_values(coef, x) - exact).abs().max() < tol
        assert (_chebyshev_values(coef[:, :-1], x) - exact).abs().max() > tol / 10
        bound = basis._chebyshev_coefficients()[:, coef.shape[1] - 1:].abs().sum(-1).max()
        assert bound >= tol  # minimal: the bound of one term fewer is not below the tolerance
    assert basis.chebyshev_count(torch.float32) < basis.chebyshev_count(torch.float64)
    assert basis.chebyshev_matrix(dtype=torch.float32).dtype == torch.float32


def test_a_basis_too_narrow_for_the_series_keeps_the_moment_path():
    narrow = AngleBasis(64, 0.3)
    assert narrow.chebyshev_count() is None
    assert not moment_kernel_applies(narrow, torch.rand(2, 3, 2), torch.rand(2, 3, 3), torch.rand(2, 2, 3, 3))
    with pytest.raises(ValueError, match="Chebyshev terms"):
        narrow.chebyshev_matrix()


def _frames_on_slots(dtype: torch.dtype, seed: int = 11):
    """Slots and orthonormal frames where every first axis points exactly at a slot, second axes at slots
    up to rounding, and some slots sit within 1e-7 of an axis: the cosines ±1 where the Chebyshev recurrence
    is least well conditioned."""
    g = torch.Generator().manual_seed(seed)
    N, M, H = 5, 30, 4
    unit = torch.nn.functional.normalize(torch.randn(N, M, 3, generator=g, dtype=torch.float64), dim=-1)
    e1 = unit[:, :H]  # head h's first axis is slot h
    r2 = unit[:, H:2 * H]
    e2 = torch.nn.functional.normalize(r2 - (r2 * e1).sum(-1, keepdim=True) * e1, dim=-1)
    axes = torch.stack([e1, e2, torch.cross(e1, e2, dim=-1)], -2)  # (N, H, 3, 3)
    unit[:, 2 * H] = -e1[:, 0]  # cos −1 with head 0's first axis
    near = e1[:, 1] + 1e-7 * e2[:, 1]
    unit[:, 2 * H + 1] = near / near.norm(dim=-1, keepdim=True)  # cos 1 − 5e-15
    logits = torch.randn(N, M, H, generator=g, dtype=torch.float64)
    w = torch.softmax(logits, 1)
    has_dir = torch.ones(N, M, dtype=torch.bool)
    return w.to(dtype), unit.to(dtype), axes.to(dtype), has_dir


@needs_numba
def test_dense_kernel_in_float32_stays_at_float32_resolution_at_the_poles():
    """float32 Chebyshev sums (46 terms) with cosines at ±1 against float64 direct Gaussian sums: features and
    weight gradients within float32 rounding (the same bound as the power moments)."""
    basis = AngleBasis()
    g = torch.Generator().manual_seed(12)
    w64, unit64, axes64, has_dir = _frames_on_slots(torch.float64)
    H, C = w64.shape[2], 6
    proj = torch.randn(3, H, C, basis.bins, generator=g, dtype=torch.float64) / 8
    gout = torch.randn(w64.shape[0], H, C, generator=g, dtype=torch.float64)
    cos = torch.einsum("nmc,nhkc->nhmk", unit64, axes64)
    assert (cos.abs() == 1).any()
    wr = w64.clone().requires_grad_()
    hist = angle_histogram(wr.transpose(1, 2), cos, basis)  # direct evaluation of every Gaussian
    ref = torch.einsum("nhkd,khcd->nhc", hist, proj)
    (g_ref,) = torch.autograd.grad((ref * gout).sum(), wr)
    w32 = w64.float().requires_grad_()
    out = dense_angle_features(w32, unit64.float(), axes64.float(), has_dir, 0.0, basis, proj.float())
    (g32,) = torch.autograd.grad((out * gout.float()).sum(), w32)
    assert (out.double() - ref).abs().max() < 2e-6 * ref.abs().max()
    assert (g32.double() - g_ref).abs().max() < 2e-6 * g_ref.abs().max()


@needs_numba
def test_dense_kernel_gradcheck_and_thread_count_independence():
    w, unit, axes, has_dir = _frames_on_slots(torch.float64, seed=13)
    w = w[:3, :12]
    unit, axes, has_dir = unit[:3, :12], axes[:3], has_dir[:3, :12]
    basis = AngleBasis(16, 1.0)
    proj = torch.randn(3, w.shape[2], 4, 16, dtype=torch.float64, requires_grad=True)
    wr = w.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, p: dense_angle_features(a, unit, axes, has_dir, 0.0, basis, p),
                                    (wr, proj))
    w32, unit32, axes32, has_dir32 = _frames_on_slots(torch.float32, seed=14)
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(dense_angle_features(w32, unit32, axes32, has_dir32, 0.0, AngleBasis(),
                                             torch.ones(3, w32.shape[2], 2, 64)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_kernels_only_without_direction_gradients():
    """The moment kernels give no gradient to directions, axes or frame weights: forces, differentiable
    frames, windowed bases and mixed dtypes keep the PyTorch paths."""
    w = torch.rand(2, 3, 2)
    unit, axes = torch.rand(2, 3, 3), torch.rand(2, 2, 3, 3)
    basis = AngleBasis()
    assert moment_kernel_applies(basis, w, unit, axes) == numba_support.use_numba(w)
    assert not moment_kernel_applies(basis, w, unit.requires_grad_(), axes)
    assert not moment_kernel_applies(basis, w, unit.detach(), axes.requires_grad_())
    assert not moment_kernel_applies(AngleBasis(window=True), w, unit.detach(), axes.detach())
    assert not moment_kernel_applies(basis, w, unit.detach().double(), axes.detach())


@needs_numba
def test_direction_kernel_equals_direct_sums_and_gradcheck():
    """Frame-set entries (atom, head, axis, direction, weight): the kernel equals direct Gaussian sums, rows
    without entries stay 0, and the weight gradient passes gradcheck (including slots with w = 0)."""
    g = torch.Generator().manual_seed(8)
    N, H, M, C = 3, 2, 7, 4
    w = torch.rand(N, H, M, generator=g, dtype=torch.float64)
    w[:, :, -2:] = 0.0
    unit = torch.nn.functional.normalize(torch.randn(N, M, 3, generator=g, dtype=torch.float64), dim=-1)
    row = torch.tensor([0, 0, 0, 1, 3, 3, 4])  # (atom, head) rows n·H + h; rows 2 and 5 have none
    axis = torch.tensor([0, 0, 2, 1, 0, 1, 2])
    sdir = torch.nn.functional.normalize(torch.randn(7, 3, generator=g, dtype=torch.float64), dim=-1)
    coef = torch.rand(7, generator=g, dtype=torch.float64)
    basis = AngleBasis(16, 1.0)
    proj = torch.randn(3, H, C, 16, generator=g, dtype=torch.float64)
    out = direction_angle_features(w, unit, row, axis, sdir, coef, basis, proj)
    ref = torch.zeros(N * H, C, dtype=torch.float64)
    for e in range(7):
        n, h = divmod(int(row[e]), H)
        hist = (w[n, h, :, None] * basis.values(unit[n] @ sdir[e])).sum(0)
        ref[row[e]] += coef[e] * proj[axis[e], h] @ hist
    assert (out.reshape(N * H, C) - ref).abs().max() < 1e-8 * ref.abs().max()
    assert out.reshape(N * H, C)[[2, 5]].abs().max() == 0
    wr = w.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: direction_angle_features(x, unit, row, axis, sdir, coef, basis, proj), (wr,))
