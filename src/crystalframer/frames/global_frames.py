"""Global frames: one frame per crystal from its lattice (and, for ``"reduced"``, its primitive cell).

Used by SPFrame (Hua & Lin, NeurIPS 2025), whose learned predictors live in
:mod:`crystalframer.nn.frame_predictors`. Conventions (row vectors): a lattice ``T`` (3, 3) has the lattice
vectors as rows (``L = Tᵀ`` has them as columns); a frame ``F`` (3, 3) has its axes as rows, and a
displacement r has the coordinates ``u = F r`` in it. A rotation Q maps ``r → Q r`` and ``T → T Qᵀ``; a frame
map is equivariant when ``F(T Qᵀ) = F(T) Qᵀ``, which makes ``u`` invariant.

The paper's QR frame (default) depends on the unit cell given. ``"reduced"`` is the cell-invariant option
[this library's addition]: the crystal is reduced to its primitive lattice (spglib), and the angular features
are averaged over every tied reduced basis of it (:func:`primitive_reduced_frame_sets`), so a change of basis
or a supercell leaves predictions unchanged, also on cubic, tetragonal and hexagonal lattices.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from crystalframer.frames.rotations import gram_schmidt
from crystalframer.frames.ties import lattice_frame_set, warn_once
from crystalframer.geometry.images import lexicographic_shifts, plane_spacings
from crystalframer.geometry.symmetry import primitive_standard_cell, species_types

#: Global-frame constructions: the paper's QR (default), polar and PCA frames, the cell-invariant reduced
#: frame and the Cartesian axes (see :func:`global_frame`).
GLOBAL_FRAMES = ("qr", "polar", "pca", "reduced", "identity")
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


def _fix_det(Q: Tensor) -> Tensor:
    """Negate the first column of (B, 3, 3) orthogonal ``Q`` where det Q = −1 (the SPFrame paper's rule)."""
    det = torch.linalg.det(Q)
    flip = torch.ones_like(Q[:, 0])
    flip[:, 0] = torch.where(det < 0, -1.0, 1.0).to(Q.dtype)
    return Q * flip[:, None, :]


def qr_frame(lattice: Tensor) -> Tensor:
    """QR global frame [the SPFrame paper's default]: L = Tᵀ = Q_L U with diag U > 0; F_g = Q_Lᵀ (first column of
    Q_L negated for a left-handed basis). F_g maps l1 onto +x and l2 into the xy-plane.

    Args: lattice (B, 3, 3) rows. Returns (B, 3, 3) rows = axes.
    """
    Q, U = torch.linalg.qr(lattice.transpose(-1, -2))
    s = torch.sign(torch.diagonal(U, dim1=-2, dim2=-1))
    s = torch.where(s == 0, torch.ones_like(s), s)
    return _fix_det(Q * s[:, None, :]).transpose(-1, -2)


def polar_frame(lattice: Tensor) -> Tensor:
    """Polar global frame [an option of the SPFrame paper]: L = Q_P H with H symmetric positive definite
    (Q_P = U Vᵀ from the SVD L = U Σ Vᵀ); F_g = Q_Pᵀ, with the same determinant fix as :func:`qr_frame`."""
    U, _, Vh = torch.linalg.svd(lattice.transpose(-1, -2))
    return _fix_det(U @ Vh).transpose(-1, -2)


def pca_frame(lattice: Tensor, fallback: str = "qr", tol: float = PCA_TOL) -> Tensor:
    """PCA global frame of the three lattice vectors [an option of the SPFrame paper; the sign rule is ours].

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
    """Reduced-basis global frame [this library's addition]: Gram–Schmidt (= QR with positive diagonal) of the
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
    lattice = np.asarray(lattice, dtype=np.float64)
    out = primitive_standard_cell(lattice, np.asarray(frac, dtype=np.float64), np.asarray(types), symprec)
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
    if species is None:
        warn_once("spframe-no-species", "SPFrame's reduced global frame got no species: the input "
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
    reproducing the SPFrame paper's remark on F_g = I).
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
