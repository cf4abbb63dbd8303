"""The attention layer against a naive float64 implementation of spec §3-4, and gradient checks.

The reference follows the published two-stage formulation literally: per pair (i, j), a loop over every
shift n of a large fixed box gives z_ij, p_n and the basis averages; the softmax over j follows; max frames
are chosen per pair over n and then over j. The layer under test uses the library's one-stage sums over
image slots, the sphere image set and chunked angular sums: agreement to 1e-10 shows they are the same
mathematics.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from crystalframer.data.batch import collate
from crystalframer.data.structures import to_crystal
from crystalframer.frames.base import build_frame
from crystalframer.geometry.images import official_box_radius, sphere_images
from crystalframer.nn.angular import angle_histogram
from crystalframer.nn.attention import DistanceDecayAttention, Geometry
from crystalframer.nn.basis import AngleBasis, DistanceBasis


def small_layer(frame: str, images: str = "sphere", window: bool = False) -> DistanceDecayAttention:
    torch.manual_seed(1)
    layer = DistanceDecayAttention(dim=16, heads=2, dist_basis=DistanceBasis(64, 14.0, 1.0, window),
                                   angle_basis=AngleBasis(64, 4.0, window), frame=build_frame(frame),
                                   frame_noise=0.0, images=images).double()
    with torch.no_grad():
        layer.sigma_norm.copy_(torch.tensor([8.0, 0.02, 1.0]))
        for p in (layer.b_qkv, layer.out.bias):
            p.normal_(std=0.1)
    return layer.eval()


def structures():
    from pymatgen.core import Lattice, Structure

    return [
        Structure(Lattice([[3.1, 0.2, 0.1], [0.4, 3.4, -0.2], [0.3, 0.5, 3.9]]), ["Na", "Cl"],
                  [[0.03, 0.02, 0.01], [0.52, 0.47, 0.55]]),
        Structure(Lattice.monoclinic(3.6, 4.1, 4.4, 98.0), ["Li", "O", "Fe"],
                  [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [1.35, 0.7, -0.45]]),  # an atom outside the cell
    ]


def naive_layer(layer: DistanceDecayAttention, x, T, pos, shifts_for):
    """Spec §3.4-3.6 and §4.1, loops over (i, h, j) and the shifts of each (i, h)."""
    x, T, pos = (t.detach().numpy() for t in (x, T, pos))
    H, dh, D = layer.heads, layer.head_dim, layer.dim
    bq, bk, bv = (b.detach().numpy() for b in layer.b_qkv.split(D))
    q = (x @ layer.w_q.detach().numpy().T + bq).reshape(-1, H, dh)
    k = (x @ layer.w_k.detach().numpy().T + bk).reshape(-1, H, dh)
    v = (x @ layer.w_v.detach().numpy().T + bv).reshape(-1, H, dh)
    scale, shift = layer.sigma_norm[0].item(), layer.sigma_norm[1].item()
    alpha = (q * layer.sigma_weight.detach().numpy().reshape(H, dh)).sum(-1)
    ah = (alpha + shift) * scale
    rho = 0.5 * np.where(ah * 0.2 > 0, ah * 0.2, np.expm1(ah * 0.2)) + 1
    a = -rho / (2 * 1.4**2)
    W0 = layer.dist_proj.detach().numpy()
    WA = None if layer.angle_proj is None else layer.angle_proj.detach().numpy()
    db = layer.dist_basis
    mu_d = (np.arange(db.bins) + 1) * db.delta
    mu_a = -1 + np.arange(64) * 2 / 63
    sig_a = 4 * 2 / 63
    n = len(pos)
    out = np.zeros((n, H, dh))
    frames = np.zeros((n, H, 3, 3))
    for i, h in itertools.product(range(n), range(H)):
        S = shifts_for(i, h)
        r = [pos[j] - pos[i] + S @ T for j in range(n)]  # per j: (S, 3)
        d2 = [(rr * rr).sum(-1) for rr in r]
        z = np.array([np.log(np.exp(a[i, h] * dd).sum()) for dd in d2])
        p = [np.exp(a[i, h] * dd - zz) for dd, zz in zip(d2, z)]
        qk = np.array([q[i, h] @ k[j, h] / math.sqrt(dh) for j in range(n)])
        att = np.exp(qk + z - (qk + z).max())
        att /= att.sum()
        psi = []
        for j in range(n):
            bd = (p[j][:, None] * np.exp(-(np.sqrt(d2[j])[:, None] - mu_d) ** 2 / (2 * db.sigma**2))).sum(0)
            psi.append(W0[h] @ bd)
        if WA is not None:
            unit = [rr / np.sqrt(np.maximum(dd, 1e-300))[:, None] for rr, dd in zip(r, d2)]
            ns = [dd > 1e-5 for dd in d2]
            # first axis: per pair the nearest non-self image, then the best pair
            best = [np.argmin(np.where(ns[j], d2[j], np.inf)) for j in range(n)]
            s1 = [qk[j] + a[i, h] * d2[j][best[j]] if ns[j].any() else -np.inf for j in range(n)]
            j1 = int(np.argmax(s1))
            e1 = unit[j1][best[j1]]
            s2, pick = [], []
            for j in range(n):
                cos = unit[j] @ e1
                ok = ns[j] & (np.abs(cos) < 0.9999)
                g = np.where(ok, a[i, h] * d2[j] + np.log(np.maximum(1 - np.abs(cos), 1e-5)), -np.inf)
                pick.append(int(np.argmax(g)))
                s2.append(qk[j] + g[pick[-1]])
            j2 = int(np.argmax(s2))
            r2 = unit[j2][pick[j2]]
            e2 = r2 - (e1 @ r2) * e1
            e2 /= np.linalg.norm(e2)
            F = np.stack([e1, e2, np.cross(e1, e2)])
            frames[i, h] = F
            for j in range(n):
                cosk = unit[j] @ F.T  # (S, 3)
                ga = np.exp(-(cosk[:, :, None] - mu_a) ** 2 / (2 * sig_a**2)) * ns[j][:, None, None]
                ba = (p[j][:, None, None] * ga).sum(0)  # (3, 64)
                psi[j] = psi[j] + sum(WA[kk, h] @ ba[kk] for kk in range(3))
        out[i, h] = sum(att[j] * (v[j, h] + psi[j]) for j in range(n))
    o = out.reshape(n, D) @ layer.out.weight.detach().numpy().T + layer.out.bias.detach().numpy()
    return o, frames


def big_box(T: np.ndarray, radius: float) -> np.ndarray:
    h = abs(np.linalg.det(T)) / np.linalg.norm(np.cross(T[[1, 2, 0]], T[[2, 0, 1]]), axis=1)
    R = np.ceil(radius / h).astype(int) + 1
    return np.array(list(itertools.product(*[range(-r, r + 1) for r in R])), dtype=float)


@pytest.mark.parametrize("frame", ["none", "max"])
@pytest.mark.parametrize("s_idx", [0, 1])
def test_sphere_layer_matches_naive_sum_over_a_large_box(frame, s_idx):
    layer = small_layer(frame)
    batch = collate([to_crystal(structures()[s_idx])], dtype=torch.float64)
    torch.manual_seed(3)
    x = torch.randn(batch.pos.shape[0], 16, dtype=torch.float64) * 0.5
    cutoff = 16.0  # dropped weights < exp(-0.13·16²) ~ 1e-15 of the total
    img = sphere_images(batch.lattice, batch.pos, batch.ptr, cutoff)
    geo = Geometry(img, layer.dist_basis(img.d2.sqrt()), batch.lattice, batch.pos, batch.batch, batch.ptr)
    with torch.no_grad():
        out, info = layer(x, geo)
    T = batch.lattice[0].numpy()
    shifts = big_box(T, 20.0)
    ref, ref_frames = naive_layer(layer, x, batch.lattice[0], batch.pos, lambda i, h: shifts)
    assert np.abs(out.numpy() - ref).max() < 1e-10
    if frame == "max":
        assert np.abs(info["frames"].numpy() - ref_frames).max() < 1e-10


@pytest.mark.parametrize("window", [False, True])
def test_official_box_layer_matches_naive_per_atom_head_box(window):
    layer = small_layer("max", images="box", window=window)
    batch = collate([to_crystal(structures()[1])], dtype=torch.float64)
    torch.manual_seed(4)
    x = torch.randn(batch.pos.shape[0], 16, dtype=torch.float64) * 0.5
    geo = Geometry(None, None, batch.lattice, batch.pos, batch.batch, batch.ptr)
    with torch.no_grad():
        out, info = layer(x, geo)
        q = torch.nn.functional.linear(x, layer.w_q, layer.b_qkv[:16]).view(-1, 2, 8)
        sigma = torch.sqrt(-0.5 / layer.gaussian_coef(q))
        R = official_box_radius(sigma, batch.lattice[batch.batch]).numpy()
    assert R.min() >= 2
    if window:  # the naive code has no windows: the windowed layer must differ, but only a little
        layer_full = small_layer("max", images="box", window=False)
        with torch.no_grad():
            full, _ = layer_full(x, geo)
        diff = (out - full).abs().max().item()
        assert 0 < diff < 1e-2
        return
    boxes = {(i, h): np.array(list(itertools.product(*[range(-r, r + 1) for r in R[i, h]])), dtype=float)
             for i in range(R.shape[0]) for h in range(2)}
    ref, ref_frames = naive_layer(layer, x, batch.lattice[0], batch.pos, lambda i, h: boxes[(i, h)])
    assert np.abs(out.numpy() - ref).max() < 1e-10
    assert np.abs(info["frames"].numpy() - ref_frames).max() < 1e-10


@pytest.mark.parametrize("frame", ["none", "max"])
def test_gradcheck_attention_float64(frame):
    """Exact gradients w.r.t. states and parameters. Max frames are piecewise constant in the inputs, so
    treating them as constants is exact away from ties. (Weighted-PCA frames vary continuously but are
    constants by design, spec §3.7: a finite-difference check does not apply to them.)"""
    torch.manual_seed(1)
    layer = DistanceDecayAttention(dim=8, heads=2, dist_basis=DistanceBasis(8, 8.0, 1.0),
                                   angle_basis=AngleBasis(8, 1.0), frame=build_frame(frame),
                                   frame_noise=0.0).double()
    with torch.no_grad():
        layer.sigma_norm.copy_(torch.tensor([8.0, 0.02, 1.0]))
        layer.b_qkv.normal_(std=0.1)
    batch = collate([to_crystal(structures()[0])], dtype=torch.float64)
    img = sphere_images(batch.lattice, batch.pos, batch.ptr, 6.0)
    geo = Geometry(img, layer.dist_basis(img.d2.sqrt()), batch.lattice, batch.pos, batch.batch, batch.ptr)
    torch.manual_seed(5)
    x = (torch.randn(2, 8, dtype=torch.float64) * 0.5).requires_grad_()
    names = ["w_q", "w_k", "w_v", "sigma_weight", "dist_proj"] + (["angle_proj"] if frame != "none" else [])

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x, geo))[0]

    inputs = (x,) + tuple(getattr(layer, n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_angle_histogram_including_cosines():
    """The chunked custom autograd function, also w.r.t. the cosines (used by differentiable frames)."""
    torch.manual_seed(6)
    basis = AngleBasis(16, 1.0)
    w = torch.rand(3, 2, 5, dtype=torch.float64, requires_grad=True)
    cos = (torch.rand(3, 2, 5, 3, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda w, c: angle_histogram(w, c, basis, budget=64), (w, cos))
    full = torch.einsum("nhm,nhmkd->nhkd", w, basis(cos))
    assert torch.allclose(angle_histogram(w, cos, basis, budget=64), full, atol=1e-14)


@pytest.mark.parametrize("width,bins", [(4.0, 64), (1.0, 16)])
def test_moment_expansion_matches_direct_basis_sums(width, bins):
    """The fast angular path (Taylor moments around the nearest centre) equals direct evaluation."""
    from crystalframer.nn.angular import angle_features

    torch.manual_seed(7)
    basis = AngleBasis(bins, width)
    N, H, M, T, K = 5, 3, 7, 2, 3
    w = torch.rand(N, H, M, dtype=torch.float64, requires_grad=True)
    cos = (torch.rand(N, H, M, T, K, dtype=torch.float64) * 2 - 1)
    cos[0, 0, :2, 0, 0] = torch.tensor([1.0, -1.0], dtype=torch.float64)  # the ends of the basis
    cos.requires_grad_()
    fw = torch.softmax(torch.rand(N, H, T, dtype=torch.float64), -1).requires_grad_()
    proj = torch.randn(K, H, 4, bins, dtype=torch.float64, requires_grad=True)
    hist = angle_histogram(w, cos.reshape(N, H, M, T * K), basis).view(N, H, T, K, bins)
    ref = torch.einsum("nhtkd,nht,khcd->nhc", hist, fw, proj)
    assert (angle_features(w, cos, fw, basis, proj) - ref).abs().max() < 1e-8
    assert torch.autograd.gradcheck(lambda w, c, f, p: angle_features(w, c, f, basis, p), (w, cos, fw, proj))


def test_flat_slot_features_match_padded_and_gradcheck():
    """The flat slot path of the attention layer (no padding) equals the padded one, gradients included."""
    from crystalframer.nn.angular import angle_features, slot_angle_features

    torch.manual_seed(8)
    basis = AngleBasis(16, 1.0)
    N, H, M, K = 4, 2, 5, 3
    keep = torch.rand(N, M) < 0.7
    keep[2] = False  # an atom without any slot
    w = torch.rand(N, H, M, dtype=torch.float64) * keep[:, None, :]
    cos = torch.rand(N, H, M, 1, K, dtype=torch.float64) * 2 - 1
    proj = torch.randn(K, H, 3, 16, dtype=torch.float64, requires_grad=True)
    ones = torch.ones(N, H, 1, dtype=torch.float64)
    n_idx, m_idx = torch.nonzero(keep, as_tuple=True)
    ws = w.permute(0, 2, 1)[n_idx, m_idx].clone().requires_grad_()
    cs = cos[:, :, :, 0].permute(0, 2, 1, 3)[n_idx, m_idx].clone().requires_grad_()  # (S, H, K)
    flat = slot_angle_features(ws, cs, n_idx, N, basis, proj)
    assert (flat - angle_features(w, cos, ones, basis, proj)).abs().max() < 1e-12
    assert flat[2].abs().max() == 0
    assert torch.autograd.gradcheck(lambda w_, c_, p_: slot_angle_features(w_, c_, n_idx, N, basis, p_),
                                    (ws, cs, proj))


def test_moment_order_follows_dtype_and_float32_stays_at_its_resolution():
    """float32 sums use fewer moments (1e-7 truncation, float32's resolution); the result stays within
    float32 rounding of the float64 direct basis sums."""
    from crystalframer.nn.angular import angle_features

    basis = AngleBasis()
    assert basis.moment_count(torch.float32) < basis.moment_count(torch.float64)
    torch.manual_seed(9)
    N, H, M, K = 6, 4, 40, 3
    w = torch.softmax(torch.randn(N, H, M, dtype=torch.float64), -1)
    cos = torch.rand(N, H, M, 1, K, dtype=torch.float64) * 2 - 1
    proj = torch.randn(K, H, 8, 64, dtype=torch.float64) / 8
    ones = torch.ones(N, H, 1, dtype=torch.float64)
    ref = torch.einsum("nhkd,khcd->nhc", angle_histogram(w, cos[:, :, :, 0], basis), proj)
    f32 = angle_features(w.float(), cos.float(), ones.float(), basis, proj.float()).double()
    assert (f32 - ref).abs().max() < 2e-6 * ref.abs().max()
