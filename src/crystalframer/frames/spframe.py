"""SPFrame: symmetry-preserving local-global frames (Hua & Lin, NeurIPS 2025), and the equivariant
Gram–Schmidt local-frame baseline it is compared with (spec Part A, design of A.10).

Conventions (those of the library, spec A.1 written with row vectors): a lattice ``T`` (3, 3) has the
lattice vectors as rows (``L = Tᵀ`` has them as columns); a frame ``F`` (3, 3) has its axes as rows, and a
displacement r has the coordinates ``u = F r`` in it. A rotation Q maps ``r → Q r`` and ``T → T Qᵀ``; a frame
map is equivariant when ``F(T Qᵀ) = F(T) Qᵀ``, which makes ``u`` invariant.

Frame methods registered here (all with ``differentiable = True``: the angular features pass gradients
into the axes, so the learned parts train):

* ``spframe_quat`` [paper main method]: ``F_ih = R(q̂_ih) · F_g(T_b)``. ``F_g`` is one frame per crystal from
  its lattice only (:func:`global_frame`), shared by all atoms; ``R(q̂)`` is an *invariant* rotation, a unit
  quaternion predicted from invariant node states (A.3, A.5.1). The edge vector is first put in the
  global frame, then rotated by the invariant local frame (composition order of the paper, A.3/A.7).
* ``spframe_gs`` [paper ablation, A.5.2]: the invariant rotation from two invariant 3-vectors α, β
  (two separate predictors) by Gram–Schmidt, rows (e1, e2, e1 × e2), times ``F_g``.
* ``equiv_gs_local`` [paper baseline "Eq-GS-LF", A.5.3]: EGNN-style equivariant vectors
  α_i = Σ_j φ_α(h_i, h_j, d_ij) r_ij, β_i likewise → Gram–Schmidt, no global frame. It maps
  symmetry-equivalent atoms to identical framed neighbourhoods (the symmetry breaking of A.2).
* ``spframe_global`` [proposal, ablation]: ``F_g`` alone (no learned rotation), one frame per crystal.

Global frames (``global_frame``): the paper's QR frame (default) depends on the unit cell given. ``"reduced"`` is
the cell-invariant option: the crystal is reduced to its primitive lattice (spglib), and the angular features are
averaged over every tied reduced basis of it (:func:`primitive_reduced_frame_sets`), so a change of basis or a
supercell leaves predictions unchanged, also on cubic, tetragonal and hexagonal lattices [proposal].

Which invariant state feeds the predictors is left open by the paper; the library's choice [proposal,
spec A.10 item 2] is the layer's input states ``x`` (the output of the previous, invariant layer) and, in
the first layer (where ``x`` is only the species embedding), the output of one extra distance-only
Crystalformer attention block (``message="first"``). ``message="all"`` gives every layer its own block
(the paper's "SPFrame block with its own message passing in every module"); ``"none"`` uses ``x`` only.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor, nn

from crystalframer.frames import ties as ties_mod
from crystalframer.frames.base import FrameInput, FrameMethod, _perpendicular, register_frame
from crystalframer.geometry.images import lexicographic_shifts, plane_spacings

#: Global-frame constructions (spec A.4 and A.10 item 1).
GLOBAL_FRAMES = ("qr", "polar", "pca", "reduced", "identity")
#: Where the extra invariant message-passing block runs.
MESSAGE_MODES = ("first", "all", "none")
#: Relative eigenvalue gap under which the PCA global frame is degenerate.
PCA_TOL = 1e-6
#: spglib distance tolerance (Å) of the primitive cell behind the reduced global frame: far above float32
#: rounding of positions (~1e-6 Å), far below the distances that tell real structures apart.
PRIMITIVE_SYMPREC = 1e-3
#: frames the lattice tie set may hold before deduplication (an fcc lattice gives 288 tied bases, 72 distinct
#: Gram–Schmidt frames); above it the set is truncated with a warning (see :func:`lattice_frame_set`)
REDUCED_SET_CAP = 4096
#: reduced frame sets kept per process (least recently used dropped first), keyed by the cell's exact values
REDUCED_CACHE_SIZE = 50_000


# ------------------------------------------------------------------------------------------------------
# quaternion → rotation
# ------------------------------------------------------------------------------------------------------
def quaternion_to_rotation(q: Tensor, eps: float = 1e-6) -> Tensor:
    """(..., 4) quaternions (a, b, c, d), a the real part → (..., 3, 3) rotation matrices (spec A.5.1).

    q̂ = q / max(|q|, eps), then the paper's Algorithm 1. For |q| >= eps the result is orthonormal with
    det +1, and q and −q give the same matrix (the formula is quadratic). q = 0 gives the identity, with
    finite gradients (the norm is clamped before the reciprocal square root, never differentiated at 0).
    """
    n2 = (q * q).sum(-1, keepdim=True)
    q = q * torch.rsqrt(n2.clamp_min(eps * eps))
    a, b, c, d = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (c * c + d * d), 2 * (b * c - a * d), 2 * (b * d + a * c)], -1),
        torch.stack([2 * (b * c + a * d), 1 - 2 * (b * b + d * d), 2 * (c * d - a * b)], -1),
        torch.stack([2 * (b * d - a * c), 2 * (c * d + a * b), 1 - 2 * (b * b + c * c)], -1),
    ]
    return torch.stack(rows, -2)


def gram_schmidt(alpha: Tensor, beta: Tensor, eps: float = 1e-9) -> Tensor:
    """(..., 3) vectors α, β → right-handed orthonormal frames (..., 3, 3), rows e1, e2, e1 × e2.

    e1 = α/|α|, e2 = normalise(β − (e1·β) e1). Where |α| <= eps, e1 = x̂; where β has no component
    perpendicular to e1 (|β⊥| <= eps), e2 is a fixed perpendicular of e1 (the collinearity failure mode the
    paper notes for symmetric crystals). The fallbacks are Cartesian, so they are only invariant for
    invariant inputs (``spframe_gs``); ``equiv_gs_local`` keeps α, β away from them (see there).
    """
    na = alpha.norm(dim=-1, keepdim=True)
    x_hat = torch.zeros_like(alpha)
    x_hat[..., 0] = 1.0
    e1 = torch.where(na > eps, alpha / na.clamp_min(eps), x_hat)
    b_perp = beta - (e1 * beta).sum(-1, keepdim=True) * e1
    nb = b_perp.norm(dim=-1, keepdim=True)
    e2 = torch.where(nb > eps, b_perp / nb.clamp_min(eps), _perpendicular(e1))
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], -2)


# ------------------------------------------------------------------------------------------------------
# global frames from the lattice only
# ------------------------------------------------------------------------------------------------------
def _fix_det(Q: Tensor) -> Tensor:
    """Negate the first column of (B, 3, 3) orthogonal ``Q`` where det Q = −1 (the paper's rule, A.4)."""
    det = torch.linalg.det(Q)
    flip = torch.ones_like(Q[:, 0])
    flip[:, 0] = torch.where(det < 0, -1.0, 1.0).to(Q.dtype)
    return Q * flip[:, None, :]


def qr_frame(lattice: Tensor) -> Tensor:
    """QR global frame [paper default, A.4]: L = Tᵀ = Q_L U with diag U > 0; F_g = Q_Lᵀ (first column of
    Q_L negated for a left-handed basis). F_g maps l1 onto +x and l2 into the xy-plane.

    Args: lattice (B, 3, 3) rows. Returns (B, 3, 3) rows = axes.
    """
    Q, U = torch.linalg.qr(lattice.transpose(-1, -2))
    s = torch.sign(torch.diagonal(U, dim1=-2, dim2=-1))
    s = torch.where(s == 0, torch.ones_like(s), s)
    return _fix_det(Q * s[:, None, :]).transpose(-1, -2)


def polar_frame(lattice: Tensor) -> Tensor:
    """Polar global frame [paper option, A.4]: L = Q_P H with H symmetric positive definite (Q_P = U Vᵀ from
    the SVD L = U Σ Vᵀ); F_g = Q_Pᵀ, with the same determinant fix as :func:`qr_frame`."""
    U, _, Vh = torch.linalg.svd(lattice.transpose(-1, -2))
    return _fix_det(U @ Vh).transpose(-1, -2)


def pca_frame(lattice: Tensor, fallback: str = "qr", tol: float = PCA_TOL) -> Tensor:
    """PCA global frame of the three lattice vectors [paper option, A.4; sign rule derived].

    The centred vectors l_k − l̄ span a plane: the axes are the eigenvectors of the two non-zero eigenvalues
    of their scatter matrix (largest first), each signed so that its projection on the first lattice vector
    with a non-negligible projection is positive (the equivariant reading of the paper's garbled Algorithm
    2), and e3 = e1 × e2. The frame is undefined when the two eigenvalues are equal (cubic and other
    equilateral cells) or the second is 0: ``fallback="qr"`` (default) uses :func:`qr_frame` for those
    crystals, ``"raise"`` raises ``ValueError``.
    """
    if fallback not in ("qr", "raise"):
        raise ValueError(f"pca fallback must be 'qr' or 'raise', got {fallback!r}")
    c = lattice - lattice.mean(-2, keepdim=True)
    evals, evecs = torch.linalg.eigh(c.transpose(-1, -2) @ c)  # ascending; eigenvectors in columns
    lam1, lam2 = evals[:, 2], evals[:, 1]
    scale = lam1.clamp_min(torch.finfo(lattice.dtype).tiny)
    degenerate = ((lam1 - lam2) <= tol * scale) | (lam2 <= tol * scale)
    if fallback == "raise" and bool(degenerate.any()):
        bad = degenerate.nonzero().flatten().tolist()
        raise ValueError("PCA global frame is undefined for a lattice whose centred vectors have two equal "
                         f"principal variances (e.g. cubic cells): structures {bad}")
    axes = evecs.flip(-1).transpose(-1, -2)[:, :2]  # (B, 2, 3): e1, e2
    proj = torch.einsum("bkc,blc->bkl", axes, lattice)  # projection of axis k on lattice vector l
    big = proj.abs() > 1e-6 * lattice.norm(dim=-1)[:, None, :]
    first = big.to(torch.int8).argmax(-1, keepdim=True)  # first lattice vector with a real projection
    sign = torch.where(torch.gather(proj, -1, first) < 0, -1.0, 1.0).to(lattice.dtype)
    axes = axes * sign
    e3 = torch.cross(axes[:, 0], axes[:, 1], dim=-1)
    frames = torch.cat([axes, e3[:, None]], 1)
    if bool(degenerate.any()):
        frames = torch.where(degenerate[:, None, None], qr_frame(lattice), frames)
    return frames


def reduced_basis(lattice: Tensor, tol: float = 1e-5) -> Tensor:
    """(3, 3) lattice (rows) → (3, 3) canonical lattice vectors (rows) of the lattice-frame rule of Yan et al.

    l1: a shortest non-zero lattice vector; l2: a shortest one not collinear with l1 and with l1·l2 >= 0;
    l3: a shortest one out of their plane with l1·l3 >= 0; all three negated if det < 0. Lengths within a
    relative ``tol`` count as equal and |cos| <= ``tol`` as a right angle; such ties go to the first lattice
    point n in lexicographic order (the same rule as :func:`~crystalframer.frames.lattice.lattice_frame`,
    but tolerant, so that rounding of a rotated or re-expressed cell never changes the choice).
    For a lattice without ties the result depends on the lattice alone (the ± choice of l1 cancels through
    the sign rules and the handedness flip), not on its basis.
    """
    reach = lattice.norm(dim=-1).max()
    R = torch.ceil(reach / plane_spacings(lattice) + 1e-9).long()
    n = lexicographic_shifts(R).to(lattice.device)
    pts = n.to(lattice.dtype) @ lattice
    d2 = (pts * pts).sum(-1)
    unit = pts / d2.sqrt().clamp_min(torch.finfo(pts.dtype).tiny)[:, None]
    allowed = (n != 0).any(-1)

    def shortest(ok: Tensor) -> Tensor:
        m = d2.masked_fill(~ok, float("inf")).min()
        return ((d2 <= m * (1 + tol)) & ok).to(torch.int8).argmax()  # first in lexicographic order

    i1 = shortest(allowed)
    cos1 = unit @ unit[i1]
    i2 = shortest(allowed & (1 - cos1.abs() > tol) & (cos1 >= -tol))
    c = torch.cross(unit[i1], unit[i2], dim=-1)
    c = c / c.norm()
    i3 = shortest(allowed & ((unit @ c).abs() > tol) & (cos1 >= -tol))
    basis = pts[torch.stack([i1, i2, i3])]
    return basis * torch.where(torch.linalg.det(basis) < 0, -1.0, 1.0).to(basis.dtype)


def reduced_frame(lattice: Tensor) -> Tensor:
    """Reduced-basis global frame [proposal, A.4]: Gram–Schmidt (= QR with positive diagonal) of the
    canonical, right-handed lattice vectors of :func:`reduced_basis` (the lattice-frame rule of Yan et al.).
    It depends on the lattice only, not on the cell's basis, so a change of unit cell (a unimodular basis
    change) does not change it. Lattices with several equally short candidates (cubic, tetragonal,
    hexagonal, right angles) have no canonical choice: the lexicographic tie order is used, which is
    rotation invariant but depends on the basis given (no single frame from the lattice alone can avoid
    this). SPFrame's ``global_frame="reduced"`` therefore averages over every tied choice of the primitive
    lattice (:func:`primitive_reduced_frame_sets`); this single frame is its ``ties="first"`` variant.
    """
    canon = torch.stack([reduced_basis(T) for T in lattice])  # (B, 3, 3) rows, det > 0
    return gram_schmidt(canon[:, 0], canon[:, 1])


def primitive_lattice(lattice: np.ndarray, frac: np.ndarray, types: np.ndarray,
                      symprec: float = PRIMITIVE_SYMPREC, name: str = "structure") -> np.ndarray:
    """(3, 3) lattice (rows, Å), (n, 3) fractional positions and (n,) integer atom types → (3, 3) a basis (rows)
    of the crystal's primitive lattice, in the input orientation.

    spglib ``standardize_cell(to_primitive=True, no_idealize=True)`` (Togo et al., spglib documentation).
    The primitive lattice is the crystal's full translation group, so every supercell and every unit cell of
    one crystal give the same lattice (its basis may differ; :func:`reduced_frame_set` does not depend on
    it). Where spglib finds no cell, or returns one that is not a superlattice of the input in the input
    orientation, the input lattice is used and a ``RuntimeWarning`` names the structure.
    """
    import spglib

    lattice = np.asarray(lattice, dtype=np.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = spglib.standardize_cell((lattice, np.asarray(frac, dtype=np.float64), np.asarray(types)),
                                          to_primitive=True, no_idealize=True, symprec=symprec)
    except Exception:  # noqa: BLE001 - spglib raises its own error type in some versions; fall back
        out = None
    if out is not None:
        prim = np.asarray(out[0], dtype=np.float64)
        M = lattice @ np.linalg.inv(prim)  # input vectors in the primitive basis: integers for a sublattice
        if np.abs(M - np.round(M)).max() < 1e-6 and round(abs(np.linalg.det(np.round(M)))) >= 1:
            return prim
    warnings.warn(f"{name}: spglib found no primitive cell (symprec {symprec} Å); SPFrame's reduced global "
                  "frame uses the input cell, so a supercell of it may get other frames", RuntimeWarning,
                  stacklevel=2)
    return lattice


def reduced_frame_set(lattice: Tensor, cap: int = REDUCED_SET_CAP) -> tuple[Tensor, Tensor]:
    """Every tied reduced-basis global frame of one (3, 3) lattice → ``(frames (T, 3, 3), weights (T,))``.

    The tie set of :func:`~crystalframer.frames.ties.lattice_frame_set` (every choice of the shortest vectors
    l1, l2, l3 under the rules of :func:`reduced_basis`, weighted per l1, then per l2, then per l3) mapped to
    Gram–Schmidt frames of (l1, l2) as in :func:`reduced_frame`; equal frames are merged and their weights
    summed. The set is the orbit of one frame under the lattice's point group, so it depends on the lattice
    only: not on its basis, and it rotates with it. A lattice without ties gives T = 1, the frame of
    :func:`reduced_frame`.
    """
    from crystalframer.frames.ties import lattice_frame_set

    F, w = lattice_frame_set(lattice, cap=cap)
    G = gram_schmidt(F[:, 0], F[:, 1])
    key = torch.round(G.reshape(-1, 9) / (lattice.new_tensor(1e-6))).long()
    _, inv = torch.unique(key, dim=0, return_inverse=True)
    T = int(inv.max()) + 1
    weights = w.new_zeros(T).index_add_(0, inv, w)
    frames = G.new_zeros(T, 3, 3).index_add_(0, inv, G) / torch.bincount(inv, minlength=T).to(G.dtype)[:, None, None]
    return frames, weights / weights.sum()


_REDUCED_CACHE: "OrderedDict[bytes, tuple[Tensor, Tensor]]" = OrderedDict()


def primitive_reduced_frame_sets(lattice: Tensor, pos: Tensor, species: Tensor | None, ptr: Tensor,
                                 symprec: float = PRIMITIVE_SYMPREC) -> tuple[Tensor, Tensor]:
    """Reduced-basis frame sets of the crystals' primitive lattices (cell invariant, rotation equivariant).

    Args:
        lattice: (B, 3, 3) rows, Å; pos: (N, 3) Cartesian, Å; species: (N, 98) species vectors (None: the
            input lattices are used as they are, with a warning: a supercell then gets other frames);
        ptr: (B + 1,) atom offsets.
    Returns:
        frames (B, T, 3, 3) and weights (B, T) (0 for padding, each row sums to 1), in ``lattice``'s dtype.

    Each crystal is reduced to its primitive lattice (:func:`primitive_lattice`), whose tied reduced bases
    give the set (:func:`reduced_frame_set`). Results are cached per process by the cell's exact values
    (spglib and the tie search cost ~10 ms per crystal, and a forward calls this once per SPFrame layer).
    """
    from crystalframer.geometry.symmetry import species_types

    if species is None:
        ties_mod._warn_once("spframe-no-species", "SPFrame's reduced global frame got no species: the input "
                                                  "cells are not reduced to primitive cells")
    lat64 = lattice.detach().to("cpu", torch.float64).numpy()
    pos64 = pos.detach().to("cpu", torch.float64).numpy()
    spec = None if species is None else species.detach().to("cpu", torch.float64).numpy()
    bounds = ptr.tolist()
    sets = []
    for b in range(lat64.shape[0]):
        L = lat64[b]
        frac = pos64[bounds[b]:bounds[b + 1]] @ np.linalg.inv(L)
        types = (species_types(spec[bounds[b]:bounds[b + 1]])[0] + 1 if spec is not None
                 else np.ones(frac.shape[0], dtype=np.int64))
        h = hashlib.blake2b(digest_size=16)
        for part in (L, frac, types, np.float64(symprec), np.int8(spec is None)):
            h.update(np.ascontiguousarray(part).tobytes())
        key = h.digest()
        hit = _REDUCED_CACHE.get(key)
        if hit is None:
            prim = primitive_lattice(L, frac, types, symprec, f"structure {b} of the batch") if spec is not None else L
            hit = reduced_frame_set(torch.from_numpy(prim))
            _REDUCED_CACHE[key] = hit
            if len(_REDUCED_CACHE) > REDUCED_CACHE_SIZE:
                _REDUCED_CACHE.popitem(last=False)
        else:
            _REDUCED_CACHE.move_to_end(key)
        sets.append(hit)
    T = max(f.shape[0] for f, _ in sets)
    frames = torch.zeros(len(sets), T, 3, 3, dtype=torch.float64)
    weights = torch.zeros(len(sets), T, dtype=torch.float64)
    for b, (f, w) in enumerate(sets):
        frames[b, :f.shape[0]], weights[b, :f.shape[0]] = f, w
    return frames.to(lattice.device, lattice.dtype), weights.to(lattice.device, lattice.dtype)


def global_frame(lattice: Tensor, method: str = "qr", pca_fallback: str = "qr") -> Tensor:
    """(B, 3, 3) lattices (rows) → (B, 3, 3) global frames (rows = axes), F_g(T Qᵀ) = F_g(T) Qᵀ.

    ``method``: ``"qr"`` (paper default), ``"polar"``, ``"pca"`` (ablation), ``"reduced"`` (invariant to the
    choice of unit cell), ``"identity"`` (Cartesian axes: not rotation invariant, for tests and for
    reproducing the paper's F_g = I remark, spec A.6.2).
    """
    if method == "qr":
        return qr_frame(lattice)
    if method == "polar":
        return polar_frame(lattice)
    if method == "pca":
        return pca_frame(lattice, pca_fallback)
    if method == "reduced":
        return reduced_frame(lattice)
    if method == "identity":
        return torch.eye(3, dtype=lattice.dtype, device=lattice.device).expand(lattice.shape[0], 3, 3)
    raise ValueError(f"global_frame must be one of {GLOBAL_FRAMES}, got {method!r}")


# ------------------------------------------------------------------------------------------------------
# invariant predictors
# ------------------------------------------------------------------------------------------------------
class InvariantMessage(nn.Module):
    """One distance-only Crystalformer attention block on the layer's image slots: z = x + Attn(x).

    Only distances and invariant states enter, so z is invariant [proposal, spec A.10 item 2: the
    "any SO(3)-invariant message passing" the paper uses to produce the quaternion]. It has its own
    distance basis (``dist_bins`` Gaussians up to ``dist_max`` Å) and its own σ calibration.
    """

    def __init__(self, dim: int, heads: int, dist_bins: int = 64, dist_max: float = 14.0):
        super().__init__()
        from crystalframer.nn.attention import DistanceDecayAttention
        from crystalframer.nn.basis import DistanceBasis

        self.basis = DistanceBasis(dist_bins, dist_max)
        self.attn = DistanceDecayAttention(dim, heads, dist_basis=self.basis, frame=None, images="sphere")

    def forward(self, inp: FrameInput) -> Tensor:
        from crystalframer.nn.attention import Geometry

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
    """SPFrame with a quaternion-predicted invariant rotation (the paper's main method, spec A.5.1, A.10).

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
    """SPFrame with a Gram–Schmidt invariant rotation (paper ablation, spec A.5.2).

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
    """SO(3)-equivariant Gram–Schmidt local frames (the paper's "Eq-GS-LF" baseline, spec A.5.3).

    α_ih = Σ_m w_imh φ_α,h(h_i, h_j(m), d_m) r_m and β_ih likewise over the layer's image slots m of atom i
    (r_m the displacement, w the layer's attention weights, which are invariant and make the sums smooth and
    local [proposal: the paper's EGNN sum has no such weight]); φ = Linear ∘ SiLU ∘ (A LN(h_i) + B LN(h_j)
    + C rbf(d)), one scalar per head and vector. F_ih = GS(α_ih, β_ih), no global frame.

    Symmetric environments make α (or β ∥ α) vanish; no equivariant frame exists there. To stay
    equivariant and finite, α and β get a tie-breaker that is exactly 0 for generic environments
    [proposal]: α' = α + τ S_α relu(1 − |α|/(τ S_α))² g1, with S_α = Σ_m |w φ_α| |r_m| the scale of the
    sum and g1 the first axis of the crystal's global frame (``fallback_frame``, QR by default; the tie-breaker
    inherits its dependence on the cell's basis); likewise β' with |β⊥e1| and a generic fixed
    mix of g1, g2, g3. Only environments with |α| < τ S_α (τ = ``tau`` = 1e-3) are affected; a centrosymmetric
    site (α = 0) falls back on the lattice axes.
    """

    name = "equiv_gs_local"
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
