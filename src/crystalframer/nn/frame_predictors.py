"""Learned frame predictors: SPFrame, symmetry-preserving local-global frames (Hua & Lin, NeurIPS 2025), and
the equivariant Gram–Schmidt local-frame baseline it is compared with.

Conventions as in :mod:`crystalframer.frames.global_frames` (row vectors; frames have their axes as rows).
Frame methods registered here (the registry of :mod:`crystalframer.frames.base` names them and imports this
module on first use):

* ``spframe_quat`` [the paper's main method]: ``F_ih = R(q̂_ih) · F_g(T_b)``. ``F_g`` is one frame per crystal
  from its lattice only (:func:`~crystalframer.frames.global_frames.global_frame`), shared by all atoms;
  ``R(q̂)`` is an *invariant* rotation, a unit quaternion predicted from invariant node states. The edge vector
  is first put in the global frame, then rotated by the invariant local frame (the paper's composition order).
* ``spframe_gs`` [a paper ablation]: the invariant rotation from two invariant 3-vectors α, β (two separate
  predictors) by Gram–Schmidt, rows (e1, e2, e1 × e2), times ``F_g``.
* ``equiv_gs_local`` [the paper's baseline "Eq-GS-LF"]: EGNN-style equivariant vectors
  α_i = Σ_j φ_α(h_i, h_j, d_ij) r_ij, β_i likewise → Gram–Schmidt, no global frame. It maps
  symmetry-equivalent atoms to identical framed neighbourhoods (the symmetry breaking the paper describes).
* ``spframe_global`` [this library's ablation]: ``F_g`` alone (no learned rotation), one frame per crystal.

The first three are ``differentiable``: the angular features pass gradients into the axes, so the learned
parts train. Which invariant state feeds the predictors is left open by the paper; the library's choice is
the layer's input states ``x`` (the output of the previous, invariant layer) and, in the first layer (where
``x`` is only the species embedding), the output of one extra distance-only Crystalformer attention block
(``message="first"``). ``message="all"`` gives every layer its own block (the paper's "SPFrame block with its
own message passing in every module"); ``"none"`` uses ``x`` only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from crystalframer.frames.base import FrameInput, FrameMethod, register_frame
from crystalframer.frames.global_frames import (GLOBAL_FRAMES, PRIMITIVE_SYMPREC, global_frame,
                                                primitive_reduced_frame_sets)
from crystalframer.frames.rotations import gram_schmidt, quaternion_to_rotation
from crystalframer.nn.attention import DistanceDecayAttention, Geometry
from crystalframer.nn.basis import DistanceBasis

#: Where the extra invariant message-passing block runs.
MESSAGE_MODES = ("first", "all", "none")


class InvariantMessage(nn.Module):
    """One distance-only Crystalformer attention block on the layer's image slots: z = x + Attn(x).

    Only distances and invariant states enter, so z is invariant [this library's choice for the
    "any SO(3)-invariant message passing" the SPFrame paper uses to produce the quaternion]. It has its own
    distance basis (``dist_bins`` Gaussians up to ``dist_max`` Å) and its own σ calibration.
    """

    def __init__(self, dim: int, heads: int, dist_bins: int = 64, dist_max: float = 14.0):
        super().__init__()
        self.basis = DistanceBasis(dist_bins, dist_max)
        self.attn = DistanceDecayAttention(dim, heads, dist_basis=self.basis, frame=None, images="sphere")

    def forward(self, inp: FrameInput) -> Tensor:
        geo = Geometry(images=inp.images, dist_basis=self.basis(inp.d2.sqrt()), lattice=inp.lattice,
                       pos=inp.pos, batch=inp.batch, ptr=inp.ptr)
        h, _ = self.attn(inp.x, geo, inp.layer)
        return inp.x + h


class _InvariantHead(nn.Module):
    """z (N, d) → (N, H or 1, k) = W LN(z) + b, with b initialised to ``bias`` and small weights."""

    def __init__(self, dim: int, heads: int, bias: tuple[float, ...], init_scale: float):
        super().__init__()
        self.heads, self.k = heads, len(bias)
        self.norm = nn.LayerNorm(dim)
        self.lin = nn.Linear(dim, heads * self.k)
        with torch.no_grad():
            self.lin.weight.normal_(0.0, init_scale / math.sqrt(dim))
            self.lin.bias.copy_(torch.tensor(bias).repeat(heads))

    def forward(self, z: Tensor) -> Tensor:
        return self.lin(self.norm(z)).view(z.shape[0], self.heads, self.k)


def _check_sizes(dim, heads):
    if dim is None or heads is None:
        raise TypeError("SPFrame frame methods need the model width and head count: build them through "
                        "CrystalFramer(frame=...) (which passes dim/heads/layer), or pass frame_options "
                        "{'dim': model_dim, 'heads': num_heads}")


class _SPFrameBase(FrameMethod):
    """Shared options of the SPFrame methods.

    Args:
        dim, heads, layer: model width, head count and this layer's index (passed by the model).
        global_frame: ``"qr"`` (default, the paper's), ``"polar"``, ``"pca"``, ``"reduced"`` (invariant to
            the choice of unit cell and to supercells, see below), ``"identity"``.
        per_head: one invariant rotation per (atom, head) (default, like CrystalFramer's per-head frames)
            or one per atom shared by the heads.
        message: ``"first"`` (default: an extra invariant attention block feeds the predictor in the first
            layer only), ``"all"`` (in every layer), ``"none"`` (the layer's input states only).
        init_scale: std × √dim of the predictor weights at initialisation (the biases start at the
            identity rotation, so training starts from the plain global frame).
        pca_fallback: ``"qr"`` or ``"raise"`` for degenerate PCA frames.
        dist_bins, dist_max: distance basis of the extra attention block.
        symprec: spglib tolerance (Å) of the primitive cell of ``global_frame="reduced"``.
        ties: for ``global_frame="reduced"`` only (the other global frames have no discrete choice):
            ``"auto"`` (default) and ``"average"``: F_g ranges over every tied reduced basis of the crystal's
            primitive lattice (:func:`primitive_reduced_frame_sets`), in training and evaluation alike, and
            the angular features are averaged over F_ih = R_ih F_g^t with the set's weights (the learned
            rotation gets its gradient through every term); ``"noise"``: one tied basis drawn at random
            (by the weights) per crystal and call; ``"first"``: the single lexicographic choice of
            :func:`reduced_frame` on the input cell (the former behaviour: depends on the basis when lengths
            tie, and on supercells).
    """

    equivariant = True
    cell_invariant = False  # the default QR global frame depends on the cell's basis; see __init__
    differentiable = True
    context = ("dim", "heads", "layer")
    n_predictors = 1

    def __init__(self, dim: int | None = None, heads: int | None = None, layer: int = 0, global_frame: str = "qr",
                 per_head: bool = True, message: str = "first", init_scale: float = 0.1, pca_fallback: str = "qr",
                 dist_bins: int = 64, dist_max: float = 14.0, eps: float = 1e-6,
                 symprec: float = PRIMITIVE_SYMPREC, **options):
        super().__init__(**options)  # the base's options (tie policy: the ties of the reduced global frame)
        _check_sizes(dim, heads)
        if global_frame not in GLOBAL_FRAMES:
            raise ValueError(f"global_frame must be one of {GLOBAL_FRAMES}, got {global_frame!r}")
        if message not in MESSAGE_MODES:
            raise ValueError(f"message must be one of {MESSAGE_MODES}, got {message!r}")
        if pca_fallback not in ("qr", "raise"):
            raise ValueError(f"pca_fallback must be 'qr' or 'raise', got {pca_fallback!r}")
        self.dim, self.heads, self.layer = dim, heads, layer
        self.global_method, self.per_head, self.message = global_frame, per_head, message
        self.pca_fallback, self.eps, self.symprec = pca_fallback, eps, float(symprec)
        # promises of this instance: Cartesian axes do not rotate; the reduced global frame of the primitive
        # cell, averaged over its tie set, is the only cell-invariant choice
        self.equivariant = global_frame != "identity"
        self.cell_invariant = global_frame == "reduced" and self.ties in ("auto", "average")
        use_block = message == "all" or (message == "first" and layer == 0)
        self.blocks = nn.ModuleList([InvariantMessage(dim, heads, dist_bins, dist_max)
                                     for _ in range(self.n_predictors)] if use_block else [])
        self.init_scale = init_scale

    def states(self, inp: FrameInput) -> list[Tensor]:
        """The invariant state feeding each predictor."""
        if inp.x is None:
            raise ValueError("SPFrame needs the layer's input states (FrameInput.x)")
        if len(self.blocks):
            return [blk(inp) for blk in self.blocks]
        return [inp.x] * self.n_predictors

    def tie_mode(self, inp: FrameInput) -> str:
        """``"auto"`` is ``"average"`` in training and evaluation: SPFrame has no published tie noise, and the
        learned rotation must train on the frames it is evaluated with."""
        return "average" if self.ties == "auto" else self.ties

    def global_axes(self, inp: FrameInput) -> Tensor:
        """(N, 1, 3, 3): F_g of each atom's crystal (for ``"reduced"``: the ``ties="first"`` choice)."""
        return global_frame(inp.lattice, self.global_method, self.pca_fallback)[inp.batch][:, None]

    def global_frame_set(self, inp: FrameInput) -> tuple[Tensor, Tensor]:
        """(N, T, 3, 3) candidate global frames of each atom's crystal and (N, T) weights (rows sum to 1).

        T = 1 except for ``global_frame="reduced"`` under the ``"average"`` policy, where the set holds every
        tied reduced basis of the primitive lattice (T = 24 for a cubic P lattice, 72 for fcc, 12 hexagonal).
        """
        mode = self.tie_mode(inp)
        if self.global_method != "reduced" or mode == "first":
            F = self.global_axes(inp)
            return F, torch.ones(F.shape[:2], dtype=F.dtype, device=F.device)
        frames, weights = primitive_reduced_frame_sets(inp.lattice, inp.pos, inp.species, inp.ptr, self.symprec)
        if mode == "noise":  # one tied basis per crystal, drawn with the set's probabilities
            pick = torch.multinomial(weights, 1)[:, 0]
            frames = frames[torch.arange(frames.shape[0], device=frames.device), pick][:, None]
            weights = torch.ones_like(weights[:, :1])
        return frames[inp.batch], weights[inp.batch]

    def compose(self, R: Tensor, inp: FrameInput) -> Tensor | tuple[Tensor, Tensor]:
        """F_ih = R_ih F_g: (N, H, 3, 3) for one global frame per crystal, or the weighted set
        ``(axes (N, H, T, 3, 3), weights (N, H, T))`` when F_g ranges over tied candidates."""
        H = inp.a.shape[1]
        Fg, wg = self.global_frame_set(inp)
        if Fg.shape[1] == 1:
            return (R @ Fg).expand(-1, H, -1, -1)
        axes = (R[:, :, None] @ Fg[:, None]).expand(-1, H, -1, -1, -1)
        return axes, wg[:, None].expand(-1, H, -1)

    def invariant_rotation(self, inp: FrameInput) -> Tensor:
        """(N, H, 3, 3) invariant rotations F_INV (rows)."""
        raise NotImplementedError

    def forward(self, inp: FrameInput) -> Tensor | tuple[Tensor, Tensor]:
        H = inp.a.shape[1]
        if H != self.heads:
            raise ValueError(f"frame built for {self.heads} heads, layer has {H}")
        return self.compose(self.invariant_rotation(inp), inp)

    def extra_repr(self) -> str:
        return (f"global_frame={self.global_method!r}, per_head={self.per_head}, message={self.message!r}, "
                f"blocks={len(self.blocks)}")


@register_frame
class SPFrameQuaternion(_SPFrameBase):
    """SPFrame with a quaternion-predicted invariant rotation (the SPFrame paper's main method).

    q_ih = W_h LN(z_i) + b (b initialised to (1, 0, 0, 0)), F_INV,ih = R(q̂_ih), F_ih = F_INV,ih F_g.
    """

    name = "spframe_quat"

    def __init__(self, **options):
        super().__init__(**options)
        self.head = _InvariantHead(self.dim, self.heads if self.per_head else 1, (1.0, 0.0, 0.0, 0.0),
                                   self.init_scale)

    def quaternions(self, inp: FrameInput) -> Tensor:
        """(N, H or 1, 4) unnormalised quaternions."""
        return self.head(self.states(inp)[0])

    def invariant_rotation(self, inp: FrameInput) -> Tensor:
        return quaternion_to_rotation(self.quaternions(inp), self.eps)


@register_frame
class SPFrameGramSchmidt(_SPFrameBase):
    """SPFrame with a Gram–Schmidt invariant rotation (an ablation of the SPFrame paper).

    Two separate predictors give invariant 3-vectors α_ih, β_ih (biases (1, 0, 0) and (0, 1, 0)); F_INV is
    their Gram–Schmidt frame. With ``message`` blocks, each predictor has its own block (the paper's two
    message-passing modules).
    """

    name = "spframe_gs"
    n_predictors = 2

    def __init__(self, **options):
        super().__init__(**options)
        h = self.heads if self.per_head else 1
        self.head_alpha = _InvariantHead(self.dim, h, (1.0, 0.0, 0.0), self.init_scale)
        self.head_beta = _InvariantHead(self.dim, h, (0.0, 1.0, 0.0), self.init_scale)

    def invariant_rotation(self, inp: FrameInput) -> Tensor:
        z_a, z_b = self.states(inp)
        return gram_schmidt(self.head_alpha(z_a), self.head_beta(z_b), self.eps)


@register_frame
class SPFrameGlobal(_SPFrameBase):
    """The SPFrame global frame alone, shared by all atoms and heads of a crystal (ablation, no parameters)."""

    name = "spframe_global"
    differentiable = False
    per_structure = True
    context = ("heads",)

    def __init__(self, heads: int | None = None, global_frame: str = "qr", pca_fallback: str = "qr", **options):
        super().__init__(dim=0, heads=heads or 0, global_frame=global_frame, message="none",
                         pca_fallback=pca_fallback, **options)
        self.heads = heads

    def forward(self, inp: FrameInput) -> Tensor | tuple[Tensor, Tensor]:
        return self.compose(torch.eye(3, dtype=inp.lattice.dtype, device=inp.lattice.device)[None, None], inp)


@register_frame
class EquivariantGSLocalFrame(FrameMethod):
    """SO(3)-equivariant Gram–Schmidt local frames (the SPFrame paper's "Eq-GS-LF" baseline).

    α_ih = Σ_m w_imh φ_α,h(h_i, h_j(m), d_m) r_m and β_ih likewise over the layer's image slots m of atom i
    (r_m the displacement, w the layer's attention weights, which are invariant and make the sums smooth and
    local [this library's choice: the paper's EGNN sum has no such weight]); φ = Linear ∘ SiLU ∘ (A LN(h_i) + B LN(h_j)
    + C rbf(d)), one scalar per head and vector. F_ih = GS(α_ih, β_ih), no global frame.

    Symmetric environments make α (or β ∥ α) vanish; no equivariant frame exists there. To stay
    equivariant and finite, α and β get a tie-breaker that is exactly 0 for generic environments
    [this library's choice]: α' = α + τ S_α relu(1 − |α|/(τ S_α))² g1, with S_α = Σ_m |w φ_α| |r_m| the scale of the
    sum and g1 the first axis of the crystal's global frame (``fallback_frame``, QR by default; the tie-breaker
    inherits its dependence on the cell's basis); likewise β' with |β⊥e1| and a generic fixed
    mix of g1, g2, g3. Only environments with |α| < τ S_α (τ = ``tau`` = 1e-3) are affected; a centrosymmetric
    site (α = 0) falls back on the lattice axes.
    """

    name = "equiv_gs_local"
    equivariant = True
    cell_invariant = False  # the tie-breaker at symmetric sites uses the global frame of the cell as given
    differentiable = True
    context = ("dim", "heads", "layer")

    def __init__(self, dim: int | None = None, heads: int | None = None, layer: int = 0, hidden: int = 64,
                 rbf_bins: int = 16, rbf_max: float = 8.0, tau: float = 1e-3, fallback_frame: str = "qr",
                 eps: float = 1e-9, **options):
        super().__init__(**options)
        _check_sizes(dim, heads)
        self.dim, self.heads, self.layer = dim, heads, layer
        if fallback_frame not in GLOBAL_FRAMES:
            raise ValueError(f"fallback_frame must be one of {GLOBAL_FRAMES}, got {fallback_frame!r}")
        self.rbf_bins, self.rbf_max, self.tau, self.eps = rbf_bins, rbf_max, tau, eps
        self.fallback_frame = fallback_frame
        self.equivariant = fallback_frame != "identity"
        self.norm = nn.LayerNorm(dim)
        self.w_i = nn.Linear(dim, hidden)
        self.w_j = nn.Linear(dim, hidden, bias=False)
        self.w_d = nn.Linear(rbf_bins, hidden, bias=False)
        self.out = nn.Linear(hidden, 2 * heads)

    def rbf(self, d: Tensor) -> Tensor:
        delta = self.rbf_max / (self.rbf_bins - 1)
        mu = torch.arange(self.rbf_bins, device=d.device, dtype=d.dtype) * delta
        return torch.exp(-((d[..., None] - mu) ** 2) / (2 * delta**2))

    def vectors(self, inp: FrameInput) -> tuple[Tensor, Tensor]:
        """(N, H, 3) equivariant α, β (before the tie-breaker), and (N, H) scales S_α, S_β."""
        H = self.heads
        h = self.norm(inp.x)
        img = inp.images
        pre = self.w_i(h)[:, None] + self.w_j(h)[img.j] + self.w_d(self.rbf(img.d2.sqrt()))  # (N, M, hid)
        phi = self.out(torch.nn.functional.silu(pre)).view(*img.j.shape, 2, H)  # (N, M, 2, H)
        wt = (inp.w * inp.candidate)[:, :, None, :] * phi  # (N, M, 2, H)
        vec = img.vec.to(wt.dtype)
        sums = torch.einsum("nmvh,nmc->nvhc", wt, vec)  # (N, 2, H, 3)
        scale = torch.einsum("nmvh,nm->nvh", wt.abs(), vec.norm(dim=-1))
        return sums[:, 0], sums[:, 1], scale[:, 0], scale[:, 1]

    def forward(self, inp: FrameInput) -> Tensor:
        if inp.a.shape[1] != self.heads:
            raise ValueError(f"frame built for {self.heads} heads, layer has {inp.a.shape[1]}")
        alpha, beta, s_a, s_b = self.vectors(inp)
        g = global_frame(inp.lattice, self.fallback_frame)[inp.batch][:, None]  # (N, 1, 3, 3)
        mix = g.new_tensor([0.31, 1.0, 0.57])
        mix = torch.einsum("k,nhkc->nhc", mix / mix.norm(), g)
        alpha = alpha + _tie_breaker(alpha, s_a, self.tau) * g[:, :, 0]
        e1 = alpha / _safe_norm(alpha).clamp_min(self.eps)
        beta_perp = beta - (e1 * beta).sum(-1, keepdim=True) * e1
        beta = beta + _tie_breaker(beta_perp, s_b, self.tau) * mix
        return gram_schmidt(alpha, beta, self.eps)


def _safe_norm(v: Tensor) -> Tensor:
    """(..., 3) → (..., 1) norm with a finite gradient at 0 (the floor is the dtype's smallest normal number:
    a literal 1e-300 is 0 in float32, and sqrt'(0) is infinite)."""
    return (v * v).sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny).sqrt()


def _tie_breaker(v: Tensor, scale: Tensor, tau: float) -> Tensor:
    """(..., 1) amount τS·relu(1 − |v|/(τS))²: τS at v = 0, exactly 0 once |v| >= τS."""
    ts = (tau * scale)[..., None]
    return ts * torch.relu(1 - _safe_norm(v) / ts.clamp_min(torch.finfo(ts.dtype).tiny)) ** 2
