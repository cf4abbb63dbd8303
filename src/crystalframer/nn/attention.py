"""Infinitely connected distance-decay attention (Crystalformer, Taniai et al., ICLR 2024) with
optional frame-based angular encodings (CrystalFramer, Ito et al., ICLR 2025).

For atom i and head h, every periodic image j(n) in i's image set gets the weight

    w_ijh(n) = exp(q_ih·k_jh/√d_h + a_ih d_ij(n)²) / Σ_(j',n') exp(same),            (paper Eq. 3)

which equals softmax_j(q·k/√d_h + z_ij) · softmax_n(a d²) with z_ij = log Σ_n exp(a d_ij(n)²), the
published form. The output is

    out_ih = Σ_(j,n) w_ijh(n) (v_jh + W0_h b(d_ij(n)) + Σ_k W_k,h b(e_k,ih · r̂_ij(n))).

The basis projections are linear, so they are applied once per atom to the weighted basis sums, never per
pair or image: no (pairs × heads × shifts × 64) tensor exists, and the angular sum runs in chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystalframer.frames.base import FrameInput, FrameMethod
from crystalframer.geometry.images import Images, SpherePool, box_images, official_box_radius
from crystalframer.nn.angular import (angle_histogram, dense_angle_features, frame_set_angle_psi,
                                      moment_kernel_applies, slot_angle_features)
from crystalframer.nn.basis import AngleBasis, DistanceBasis

#: σ-normalisation pair used by an uncalibrated model in eval mode: the middle of the values the
#: published models calibrate to (scale 22..32, shift ≈ ±0.01).
DEFAULT_SIGMA_NORM = (25.0, 0.0)
#: Attention weights below this (the weights of an atom sum to 1) are left out of the angular sums.
WEIGHT_FLOOR = 1e-12


@dataclass
class Geometry:
    """Per-batch geometry shared by all layers.

    Attributes:
        images: fixed sphere image slots (None with the official box, which each layer builds from its σ,
            and with the σ-following sphere, which each layer takes from ``pool``).
        dist_basis: (N, M, K) distance basis of the fixed sphere slots (None otherwise).
        lattice: (B, 3, 3); pos: (N, 3); batch: (N,); ptr: (B + 1,).
        pool: the σ-following sphere (:class:`~crystalframer.geometry.images.SpherePool`): each layer uses
            the images within k · max_h σ_ih of atom i.
        species: (N, 98) occupancy-weighted species vectors (None when unknown), for frames that need the
            crystal's symmetry (SPFrame's reduced global frame reduces to the primitive cell).
    """

    images: Images | None
    dist_basis: Tensor | None
    lattice: Tensor
    pos: Tensor
    batch: Tensor
    ptr: Tensor
    pool: SpherePool | None = None
    species: Tensor | None = None


def as_frame_set(frames: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """A frame method's output → (axes (N, H, T, 3, 3), weights (N, H, T)).

    Methods return either one frame per (atom, head), (N, H, 3, 3), or a weighted set of candidate
    frames ``(axes, weights)`` whose angular features are averaged (e.g. over tied choices).
    """
    if isinstance(frames, tuple):
        axes, weights = frames
        return axes, weights.to(axes.dtype)
    return frames[:, :, None], torch.ones(frames.shape[:2] + (1,), dtype=frames.dtype, device=frames.device)


class DistanceDecayAttention(nn.Module):
    """One multi-head attention layer of Crystalformer / CrystalFramer.

    Args:
        dim: model width d; heads: H (head width d/H).
        r0, sigma_lb, beta: σ parametrisation (as in the released Crystalformer code):
            ρ = (1−b)ELU(βα̂/(1−b)) + 1, σ = r0/√ρ (Å).
        dist_basis / angle_basis: basis functions; ``angle_basis=None`` without frames.
        dist_coef, angle_coef: c_dist and c_angl.
        frame: the frame method (None: Crystalformer).
        frame_noise: tie-breaking noise amplitude (Å²).
        images: ``"sphere"`` (geometry provided by the caller: fixed images, or a pool from which the layer
            takes those within k · max_h σ_ih of each atom) or ``"box"`` (official per-(atom, head) box).
        box_sigma, box_min: the box rule's 3.5 σ and R_min = 2.
    """

    def __init__(self, dim: int = 128, heads: int = 8, r0: float = 1.4, sigma_lb: float = 0.5, beta: float = 0.1,
                 dist_basis: DistanceBasis | None = None, angle_basis: AngleBasis | None = None,
                 dist_coef: float = 1.0, angle_coef: float = 1.0, frame: FrameMethod | None = None,
                 frame_noise: float = 1e-5, images: str = "sphere", box_sigma: float = 3.5, box_min: int = 2):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model width {dim} is not divisible by {heads} heads")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.r0, self.sigma_lb, self.beta = r0, sigma_lb, beta
        self.dist_basis = dist_basis or DistanceBasis()
        self.angle_basis = angle_basis if frame is not None else None
        self.dist_coef, self.angle_coef = dist_coef, angle_coef
        self.frame = frame
        self.frame_noise = frame_noise
        self.images, self.box_sigma, self.box_min = images, box_sigma, box_min

        self.w_q = nn.Parameter(torch.empty(dim, dim))
        self.w_k = nn.Parameter(torch.empty(dim, dim))
        self.w_v = nn.Parameter(torch.empty(dim, dim))
        self.b_qkv = nn.Parameter(torch.zeros(3 * dim))
        self.sigma_weight = nn.Parameter(torch.empty(dim))
        self.dist_proj = nn.Parameter(torch.empty(heads, self.head_dim, self.dist_basis.bins))
        if self.angle_basis is not None:
            self.angle_proj = nn.Parameter(torch.empty(3, heads, self.head_dim, self.angle_basis.bins))
        else:
            self.register_parameter("angle_proj", None)
        self.out = nn.Linear(dim, dim)
        # [scale, shift, number of samples it was computed from]; frozen once calibrated.
        self.sigma_norm = nn.Parameter(torch.zeros(3), requires_grad=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation of the released Crystalformer code (before the T-Fixup scaling, which the encoder applies)."""
        for w in (self.w_q, self.w_k, self.w_v, self.out.weight):
            nn.init.xavier_uniform_(w)
        nn.init.zeros_(self.b_qkv)
        nn.init.zeros_(self.out.bias)
        nn.init.normal_(self.sigma_weight, std=self.head_dim**-0.5)
        projs = [self.dist_proj] + ([self.angle_proj[k] for k in range(3)] if self.angle_proj is not None else [])
        for p in projs:
            with torch.no_grad():
                view = torch.empty(self.dim, p.shape[-1], dtype=p.dtype)
                nn.init.xavier_uniform_(view, gain=p.shape[-1] ** -0.5)
                p.copy_(view.reshape(p.shape))
        with torch.no_grad():
            self.sigma_norm.zero_()

    # -- σ -------------------------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        return bool(self.sigma_norm[2] > 0)

    def sigma_pair(self, alpha: Tensor) -> tuple[Tensor | float, Tensor | float]:
        """(scale, shift) of α̂ = (α + shift)·scale; calibrated from the first training batch."""
        if not self.calibrated:
            if self.training:
                a = alpha.detach().double()
                std = a.std() if a.numel() > 1 else a.new_tensor(1.0)
                with torch.no_grad():
                    self.sigma_norm.copy_(torch.stack([1.0 / std.clamp_min(1e-12), -a.mean(),
                                                       a.new_tensor(float(a.numel()))]).to(self.sigma_norm))
            else:
                return DEFAULT_SIGMA_NORM
        return self.sigma_norm[0], self.sigma_norm[1]

    def gaussian_coef(self, q: Tensor) -> Tensor:
        """(N, H, d_h) queries → (N, H) a_ih = −ρ/(2 r0²) in Å⁻²."""
        alpha = (q * self.sigma_weight.view(self.heads, self.head_dim)).sum(-1)
        scale, shift = self.sigma_pair(alpha)
        ah = (alpha + shift) * scale
        b = self.sigma_lb
        rho = (1 - b) * F.elu(ah * (self.beta / (1 - b))) + 1
        return -rho / (2 * self.r0**2)

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: Tensor, geo: Geometry, layer: int = 0) -> tuple[Tensor, dict]:
        """x: (N, d) → (N, d) attention output (before the residual), and diagnostics (a, frames)."""
        N, H, dh = x.shape[0], self.heads, self.head_dim
        bq, bk, bv = self.b_qkv.split(self.dim)
        q = F.linear(x, self.w_q, bq).view(N, H, dh)
        k = F.linear(x, self.w_k, bk).view(N, H, dh)
        v = F.linear(x, self.w_v, bv).view(N, H, dh)
        a = self.gaussian_coef(q)

        if self.images == "box":
            sigma = torch.sqrt(-0.5 / a.detach())
            R = official_box_radius(sigma, geo.lattice[geo.batch].to(sigma.dtype), self.box_sigma, self.box_min)
            img = box_images(geo.lattice, geo.pos, geo.ptr, R)
            dist_basis = self.dist_basis(img.d2.sqrt())
        elif geo.images is None and geo.pool is not None:  # σ-following sphere: R_i = k · max_h σ_ih
            sigma = torch.sqrt(-0.5 / a.detach().amax(1))
            img, dist_basis = geo.pool.within(geo.pool.k * sigma)
        else:
            img, dist_basis = geo.images, geo.dist_basis
        mask = img.mask if img.mask.dim() == 3 else img.mask[:, :, None]

        if img.use_pairs:  # batches of small cells: Σ n² pairs < N · M slots
            qk = (q[img.pair_i] * k[img.pair_j]).sum(-1) / math.sqrt(dh)  # (P, H)
            slot_qk = qk[img.pair]  # (N, M, H)
        else:  # large cells: per slot, linear in the number of atoms
            slot_qk = torch.einsum("nhc,nmhc->nmh", q, k[img.j]) / math.sqrt(dh)
        logits = slot_qk + a[:, None, :] * img.d2[:, :, None]
        w = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)  # (N, M, H)

        if img.use_pairs:  # α_ij = Σ_n w_ij(n), then Σ_j α_ij v_j
            pair_w = torch.zeros(qk.shape, dtype=w.dtype, device=w.device).index_add_(
                0, img.pair.reshape(-1), w.reshape(-1, H))
            out = torch.zeros(N, H, dh, dtype=x.dtype, device=x.device).index_add_(
                0, img.pair_i, pair_w[:, :, None] * v[img.pair_j])
        else:
            out = torch.einsum("nmh,nmhc->nhc", w, v[img.j])
        hist_d = torch.einsum("nmh,nmk->nhk", w, dist_basis)
        out = out + self.dist_coef * torch.einsum("nhk,hck->nhc", hist_d, self.dist_proj)

        info = {"a": a.detach()}
        if self.frame is not None:
            selfimg, unit = img.self_image, img.unit
            inp = FrameInput(images=img, unit=unit, candidate=mask & ~selfimg[:, :, None], qk=slot_qk.detach(),
                             a=a.detach(), w=w.detach(), lattice=geo.lattice, pos=geo.pos, batch=geo.batch,
                             ptr=geo.ptr, noise=self.frame_noise, x=x, layer=layer,
                             species=geo.species)
            if self.frame.differentiable:
                frames = self.frame(inp)
            else:
                with torch.no_grad():
                    frames = self.frame(inp)
            frames, frame_w = as_frame_set(frames)
            out = out + self.angle_coef * self._angle_psi(w, unit, frames, frame_w, ~selfimg)
            info["frames"] = frames[:, :, 0].detach()
            info["frame_set"] = (frames.detach(), frame_w.detach())
        return self.out(out.reshape(N, self.dim)), info

    def _angle_psi(self, w: Tensor, unit: Tensor, frames: Tensor, frame_w: Tensor, has_dir: Tensor) -> Tensor:
        """Σ_t fw_t Σ_k W_k,h Σ_slots w · b(e_k^t · r̂): the angular encoding per (atom, head), (N, H, d_h).

        ``frames`` (N, H, T, 3, 3) holds T candidate frames per (atom, head) with weights ``frame_w``
        (N, H, T) summing to 1 (T = 1 for a single frame): the angular features are averaged over them.
        Slots without a direction (self image, padding) or with w < WEIGHT_FLOOR for every head are left
        out first: the dropped weight (< M · 1e-12 of the total) is invisible in float32, and in the
        published box most slots are far images with such weights.
        """
        N, H, T = frames.shape[:3]
        if T == 1 and moment_kernel_applies(self.angle_basis, w, unit, frames):
            return dense_angle_features(w, unit, frames[:, :, 0], has_dir, WEIGHT_FLOOR, self.angle_basis,
                                        self.angle_proj)
        keep = has_dir & (w.detach().amax(-1) > WEIGHT_FLOOR)  # (N, M)
        if T == 1 and self.angle_basis.win is None:  # the common case: a flat list of slots, no padding
            n_idx, m_idx = torch.nonzero(keep, as_tuple=True)
            cos = torch.einsum("nmc,nhkc->nmhk", unit, frames[:, :, 0])[n_idx, m_idx]  # (S, H, 3)
            return slot_angle_features(w[n_idx, m_idx], cos, n_idx, N, self.angle_basis, self.angle_proj)
        n_keep = int(keep.sum(1).max()) if keep.numel() else 0
        order = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :max(1, n_keep)]
        keep = torch.gather(keep, 1, order)
        w = (torch.gather(w, 1, order[:, :, None].expand(-1, -1, w.shape[-1])) * keep[:, :, None]).transpose(1, 2)
        unit = torch.gather(unit, 1, order[:, :, None].expand(-1, -1, 3))
        if T > 1:  # a set of frames (tie averaging): once per distinct axis direction, no padding to T
            return frame_set_angle_psi(w, unit, frames, frame_w, self.angle_basis, self.angle_proj)
        cos = torch.einsum("nmc,nhtkc->nhmtk", unit, frames)  # (N, H, M, T, 3)
        # the published windows: direct evaluation of every basis function (parity mode)
        hist = angle_histogram(w, cos.reshape(N, H, -1, T * 3), self.angle_basis).view(N, H, T, 3, -1)
        return torch.einsum("nhtkd,nht,khcd->nhc", hist, frame_w, self.angle_proj)
