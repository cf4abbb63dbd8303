"""Angular features of frames: Σ_k W_k,h Σ_slots w · b(e_k · r̂) per (atom, head), for one frame or a weighted
set of frames per (atom, head) (CrystalFramer, Ito et al., ICLR 2025).

* :func:`angle_histogram`: direct evaluation of every basis function, chunked (the published windowed basis);
* :func:`slot_angle_features`, :func:`dense_angle_features`, :func:`direction_angle_features`: the moment and
  Chebyshev expansions of :class:`~crystalframer.nn.basis.AngleBasis` (kernels in :mod:`crystalframer.nn.moments`);
* :func:`frame_set_angle_psi`: frame sets (tie averaging, :mod:`crystalframer.frames.ties`). The angular
  features of a frame set depend on each axis direction separately, so they are computed once per *distinct*
  axis direction (:func:`compact_directions`; directions and their negatives are merged when the basis is
  symmetric): T tied frames do not cost T times one frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crystalframer.nn.basis import AngleBasis
from crystalframer.nn.moments import DenseChebyshevFeatures, DirectionChebyshev, SlotMoments
from crystalframer.numba_support import use_numba

#: quantisation step of directions when merging equal axes (:func:`compact_directions`)
MERGE_STEP = 2.0**-16


class _AngleHistogram(torch.autograd.Function):
    """hist[i, h, k, :] = Σ_m w[i, h, m] · basis(cos[i, h, m, k]), over chunks of atoms.

    Never holds the (N, H, M, 3, D) basis tensor: forward and backward recompute it chunk by chunk, so
    peak memory is bounded by ``chunk`` atoms. The sums over slots are batched matrix products.
    Gradients flow to the weights w and to the cosines (the latter only matter for frames that carry
    gradients, e.g. SPFrame).
    """

    @staticmethod
    def forward(ctx, w: Tensor, cos: Tensor, basis: AngleBasis, chunk: int) -> Tensor:
        N, H, M = w.shape
        K, D = cos.shape[-1], basis.bins
        out = w.new_empty(N, H, K, D)
        for a in range(0, N, chunk):
            b = min(N, a + chunk)
            g = basis.values(cos[a:b]).view((b - a) * H, M, K * D)
            out[a:b] = torch.bmm(w[a:b].reshape(-1, 1, M), g).view(b - a, H, K, D)
        ctx.save_for_backward(w, cos)
        ctx.basis, ctx.chunk = basis, chunk
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, cos = ctx.saved_tensors
        basis, chunk = ctx.basis, ctx.chunk
        N, H, M = w.shape
        K, D = cos.shape[-1], basis.bins
        need_w, need_cos = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gw = torch.empty_like(w) if need_w else None
        gc = torch.empty_like(cos) if need_cos else None
        mu = basis.centers(cos.device, cos.dtype)
        for a in range(0, N, chunk):
            b = min(N, a + chunk)
            c = b - a
            g = basis.values(cos[a:b])  # (c, H, M, K, D)
            gr = grad[a:b].reshape(c * H, K * D, 1)
            if need_w:
                gw[a:b] = torch.bmm(g.view(c * H, M, K * D), gr).view(c, H, M)
            if need_cos:
                # d/dcos exp(-(x-μ)²/2σ²) = (μ-x)/σ² · value; the window edges are piecewise constant.
                g.mul_((mu - cos[a:b, ..., None]) / basis.sigma**2)
                gc[a:b] = torch.einsum("chkd,chmkd->chmk", grad[a:b], g) * w[a:b, :, :, None]
        return gw, gc, None, None


def slot_angle_features(w: Tensor, cos: Tensor, atom: Tensor, n_atoms: int, basis: AngleBasis,
                        proj: Tensor) -> Tensor:
    """Σ_k W_k,h Σ_(slots s of atom i) w_sh b(cos_shk) on a flat list of image slots (no padding), by the
    moment expansion of :class:`AngleBasis` (exact to its truncation, :meth:`AngleBasis.moment_count`).

    Args:
        w: (S, H) attention weights of the slots; cos: (S, H, K) cosines with the frame axes;
        atom: (S,) the atom (row) each slot belongs to; proj: (K, H, C, D).
    Returns:
        (n_atoms, H, C); differentiable in w, cos and proj.
    """
    _require_full_basis(basis)
    S = cos.shape[0]
    if S > 1 and bool((atom[1:] < atom[:-1]).any()):  # the moment sums need each atom's slots together
        order = torch.sort(atom, stable=True).indices
        w, cos, atom = w[order], cos[order], atom[order]
    start = torch.zeros(n_atoms + 1, dtype=torch.long, device=atom.device)
    start[1:] = torch.cumsum(torch.bincount(atom, minlength=n_atoms), 0)
    fast = use_numba(cos)
    acc = SlotMoments.apply(w, cos, start, basis.bins, basis.moment_count(cos.dtype), fast)
    return _project_moments(acc, fast, basis, proj)


def dense_angle_features(w: Tensor, unit: Tensor, axes: Tensor, has_dir: Tensor, floor: float,
                         basis: AngleBasis, proj: Tensor) -> Tensor:
    """:func:`slot_angle_features` of padded slots with one frame per (atom, head), without a flat slot
    list, by the Chebyshev expansion of :class:`AngleBasis`: the Numba kernel forms the cosines e_k · r̂ itself
    (CPU, differentiable in w and proj, not in the directions or axes; see :func:`moment_kernel_applies` for
    when it is used).

    Args:
        w: (N, M, H) attention weights; unit: (N, M, 3) directions r̂; axes: (N, H, K, 3) frame axes;
        has_dir: (N, M) slots with a direction; slots with w <= ``floor`` for every head are left out;
        proj: (K, H, C, D) as in :func:`slot_angle_features`.
    Returns:
        (N, H, C).
    """
    _require_full_basis(basis)
    out = DenseChebyshevFeatures.apply(w, unit, axes, has_dir, floor, _chebyshev_weights(basis, proj, w.dtype),
                                       basis.chebyshev_count(w.dtype))
    return out.transpose(0, 1)


def direction_angle_features(w: Tensor, unit: Tensor, row: Tensor, axis: Tensor, sdir: Tensor, coef: Tensor,
                             basis: AngleBasis, proj: Tensor) -> Tensor:
    """Angular features of weighted frame sets from their distinct axis directions (Numba, CPU; the
    Chebyshev expansion of :class:`AngleBasis`):
    out[n, h] = Σ_(entries e of (n, h)) coef_e Σ_c W_(axis_e),h Σ_m w[n, h, m] b(sdir_e · r̂_nm).

    Args:
        w: (N, H, M) slot weights (0 for slots without a direction); unit: (N, M, 3) directions r̂;
        row: (E,) n·H + h of each entry, non-decreasing; axis: (E,) its frame axis; sdir: (E, 3) its
        direction; coef: (E,) its weight (the frame weights).
    Returns:
        (N, H, C); differentiable in w (see :func:`moment_kernel_applies`).
    """
    _require_full_basis(basis)
    N, H, _ = w.shape
    start = torch.zeros(N * H + 1, dtype=torch.long, device=w.device)
    start[1:] = torch.cumsum(torch.bincount(row, minlength=N * H), 0)
    mu = DirectionChebyshev.apply(w, unit, start, axis, sdir.to(w.dtype), coef.to(w.dtype),
                                  basis.chebyshev_count(w.dtype))
    out = torch.bmm(mu.view(H, N, -1), _chebyshev_weights(basis, proj, w.dtype))
    return _atom_major(out)


def moment_kernel_applies(basis, w: Tensor, *inputs: Tensor) -> bool:
    """Whether the Numba Chebyshev kernels (:func:`dense_angle_features`, :func:`direction_angle_features`)
    serve these inputs: the full (unwindowed) :class:`AngleBasis` with a Chebyshev expansion, the kernels on
    for ``w``, and the other ``inputs`` (directions, axes, frame weights) of ``w``'s dtype without gradients,
    which the kernels do not give."""
    return (isinstance(basis, AngleBasis) and basis.win is None and use_numba(w)
            and all(t.dtype == w.dtype and not t.requires_grad for t in inputs)
            and basis.chebyshev_count(w.dtype) is not None)


def _require_full_basis(basis: AngleBasis) -> None:
    if basis.win is not None:
        raise ValueError("the moment expansion is for the full basis; use angle_histogram with windows")


def _moment_weights(basis: AngleBasis, proj: Tensor, dtype: torch.dtype) -> Tensor:
    """proj (K, H, C, D) → (H, K·D·P, C): each head's map from its power moments (k, j, p) to its features."""
    A = basis.moment_matrix(proj.device, dtype)  # [j, p, d]
    return torch.einsum("jpd,khcd->hkjpc", A, proj).reshape(proj.shape[1], -1, proj.shape[2])


def _chebyshev_weights(basis: AngleBasis, proj: Tensor, dtype: torch.dtype) -> Tensor:
    """proj (K, H, C, D) → (H, K·L, C): each head's map from its Chebyshev moments (k, l) to its features."""
    Cm = basis.chebyshev_matrix(proj.device, dtype)  # [d, l]
    return torch.einsum("dl,khcd->hklc", Cm, proj.to(dtype)).reshape(proj.shape[1], -1, proj.shape[2])


def _atom_major(out: Tensor) -> Tensor:
    """Head-major features (H, N, C) from a matrix product → (N, H, C), a view."""
    if out.requires_grad:  # the caller's gradient arrives as an (N, H, C) tensor: bmm wants it head-major
        out.register_hook(lambda g: None if g is None else g.contiguous())
    return out.transpose(0, 1)


def _project_moments(acc: Tensor, fast: bool, basis: AngleBasis, proj: Tensor) -> Tensor:
    """Moments (H, N, K, D, P) if ``fast`` else (P, H, N, K, D) → Σ_k W_k,h b̄ (N, H, C)."""
    H, C = proj.shape[1], proj.shape[2]
    if fast:  # one matrix product per head
        out = torch.bmm(acc.view(H, acc.shape[1], -1), _moment_weights(basis, proj, acc.dtype))
    else:  # one per (power, head)
        A = basis.moment_matrix(acc.device, acc.dtype)  # [j, p, d]
        P, n_atoms = acc.shape[0], acc.shape[2]
        weights = torch.einsum("jpd,khcd->phkjc", A, proj).reshape(P * H, -1, C)
        out = torch.bmm(acc.view(P * H, n_atoms, -1), weights).view(P, H, n_atoms, C).sum(0)
    return _atom_major(out)


def angle_features(w: Tensor, cos: Tensor, frame_w: Tensor, basis: AngleBasis, proj: Tensor) -> Tensor:
    """Projected angular encodings Σ_t fw_t Σ_k W_k,h Σ_m w_m b(cos_mtk) of padded slots with T candidate
    frames per (atom, head): :func:`slot_angle_features` with every (slot, frame) as a slot.

    Args:
        w: (N, H, M) attention weights; cos: (N, H, M, T, K); frame_w: (N, H, T) frame weights; proj:
        (K, H, C, D).
    Returns:
        (N, H, C); differentiable in w, cos, frame_w and proj.
    """
    N, H, M, T, K = cos.shape
    weight = (w[:, :, :, None] * frame_w[:, :, None, :]).permute(0, 2, 3, 1).reshape(N * M * T, H)
    atom = torch.arange(N, device=cos.device).repeat_interleave(M * T)
    return slot_angle_features(weight, cos.permute(0, 2, 3, 1, 4).reshape(N * M * T, H, K), atom, N, basis,
                               proj)


def row_angle_features(w: Tensor, cos: Tensor, basis: AngleBasis, proj: Tensor) -> Tensor:
    """Σ_k W_k Σ_m w_rm b(cos_rmk) for R rows of padded slots, over the entries with w ≠ 0 only.

    Args:
        w: (R, M) slot weights, 0 for padding; cos: (R, M, K); proj: (K, C, D).
    Returns:
        (R, C). Entries with w = 0 are skipped, so they get no gradient w.r.t. w: callers pass softmax
        weights (times a 0/1 mask), whose backward multiplies that gradient by w = 0 anyway.
    """
    r, m = torch.nonzero(w.detach() != 0, as_tuple=True)
    return slot_angle_features(w[r, m][:, None], cos[r, m][:, None], r, w.shape[0], basis, proj[:, None])[:, 0]


def angle_histogram(w: Tensor, cos: Tensor, basis: AngleBasis, budget: int = 4_000_000) -> Tensor:
    """Attention-weighted angular basis sums b̄ (Ito et al., ICLR 2025), aggregated over every image of atom i.

    Args:
        w: (N, H, M) attention weight of each image slot (0 for slots without a direction).
        cos: (N, H, M, K) direction cosines e_k · r̂ of each slot for each frame axis.
        budget: basis values held at once (bounds peak memory to a few × budget × 4 bytes).
    Returns:
        (N, H, K, D).
    """
    N, H, M, K = cos.shape
    chunk = max(1, budget // max(1, M * H * K * basis.bins))
    return _AngleHistogram.apply(w.contiguous(), cos.contiguous(), basis, chunk)


# -- frame sets → distinct axis directions (for attention) -------------------------------------------------

def compact_directions(frames: Tensor, frame_w: Tensor, symmetric: bool = False, step: float = MERGE_STEP):
    """The distinct axis directions of each atom's weighted frame sets, to compute angular features once each.

    The angular features of axis k depend on the direction of e_k only (and on the head's weights), so
    Σ_t π_t feat(F_t) over a set equals Σ over entries (h, t, k) of π_t · hist_h(e_k^t) placed on axis k.
    Equal directions of an atom (all heads together), found by quantising them to ``step``, are evaluated
    once (a direction split across a quantisation boundary is merely evaluated twice; members of a group
    differ by rounding only). With ``symmetric`` (a basis symmetric under cos → −cos), a direction and its
    negative share one evaluation: hist(−v) is hist(v) reversed.

    Args:
        frames: (N, H, T, 3, 3); frame_w: (N, H, T), 0 for padding.
    Returns:
        ``atom`` (A,) and ``dirs`` (A, 3) of the distinct directions, and per entry: ``target`` (E,) in
        [0, N·H·3) (atom, head, axis), ``head`` (E,), ``group`` (E,) index into the A directions, ``coef``
        (E,) the frame weight, ``flip`` (E,) bool (use the reversed histogram).
    """
    N, H, T = frames.shape[:3]
    active = frame_w > 0
    n, h, t = torch.nonzero(active, as_tuple=True)
    E0 = n.shape[0]
    v = frames[n, h, t].reshape(E0 * 3, 3)
    k = torch.arange(3, device=v.device).repeat(E0)
    n, h = n.repeat_interleave(3), h.repeat_interleave(3)
    coef = frame_w[active].repeat_interleave(3)
    with torch.no_grad():
        q = torch.round(v.detach() / step).long()
        if symmetric:
            first = torch.argmax((q != 0).to(torch.int8), dim=-1)
            flip = torch.gather(q, 1, first[:, None]).squeeze(1) < 0
            q = torch.where(flip[:, None], -q, q)
        else:
            flip = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
        # exact grouping on (atom, q): q offset into [0, 2^20) per component → one 60-bit key, then stable
        # sorts by key and by atom
        half = int(round(1.0 / step)) + 2
        qk = (q[:, 0] + half) * (1 << 40) + (q[:, 1] + half) * (1 << 20) + (q[:, 2] + half)
        o1 = torch.sort(qk, stable=True).indices
        o2 = torch.sort(n[o1], stable=True).indices
        perm = o1[o2]
        ns, ks = n[perm], qk[perm]
        new_grp = torch.ones_like(ns, dtype=torch.bool)
        new_grp[1:] = (ns[1:] != ns[:-1]) | (ks[1:] != ks[:-1])
        gid_sorted = torch.cumsum(new_grp.long(), 0) - 1
        group = torch.empty_like(gid_sorted).scatter_(0, perm, gid_sorted)
        atom = ns[new_grp]
    A = atom.shape[0]
    vc = torch.where(flip[:, None], -v, v)
    dirs = torch.zeros(A, 3, dtype=v.dtype, device=v.device).index_add(0, group, vc)
    dirs = dirs / torch.bincount(group, minlength=A).to(v.dtype)[:, None]
    return atom, dirs, (n * H + h) * 3 + k, h, group, coef, flip


class _SharedDirectionHistogram(torch.autograd.Function):
    """hist[a, h, :] = Σ_m w[atom[a], h, m] · b(cos[a, m]): one basis block (M, D) per direction serves every head.

    Rows are processed in chunks, each truncated to its longest row (``lengths``, non-decreasing: slots at or
    beyond a row's length have zero weight and are skipped; their weight gradient is returned as 0).
    The weights of each chunk are gathered from ``w`` (N, H, M) on the fly, and backward recomputes the
    basis (never holds (A, M, D) or (A, H, M)). Gradients flow to w and to the cosines.
    """

    @staticmethod
    def forward(ctx, w: Tensor, cos: Tensor, atom: Tensor, lengths: Tensor, basis, chunk: int) -> Tensor:
        A = cos.shape[0]
        H = w.shape[1]
        out = w.new_empty(A, H, basis.bins)
        spans = _spans(lengths, chunk)
        for a, b, L in spans:
            out[a:b] = torch.bmm(w[atom[a:b], :, :L], basis.values(cos[a:b, :L]))
        ctx.save_for_backward(w, cos, atom)
        ctx.basis, ctx.spans = basis, spans
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, cos, atom = ctx.saved_tensors
        basis = ctx.basis
        need_w, need_cos = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gw = torch.zeros_like(w) if need_w else None
        gc = torch.zeros_like(cos) if need_cos else None
        mu = basis.centers(cos.device, cos.dtype)
        for a, b, L in ctx.spans:
            B = basis.values(cos[a:b, :L])  # (c, L, D)
            if need_w:
                gw[:, :, :L].index_add_(0, atom[a:b], torch.bmm(grad[a:b], B.transpose(1, 2)))
            if need_cos:
                gwB = torch.bmm(w[atom[a:b], :, :L].transpose(1, 2), grad[a:b])  # (c, L, D)
                B.mul_((mu - cos[a:b, :L, None]) / basis.sigma**2)
                gc[a:b, :L] = (gwB * B).sum(-1)
        return gw, gc, None, None, None, None


def _spans(lengths: Tensor, budget: int) -> list[tuple[int, int, int]]:
    """Chunks (start, stop, length) of rows sorted by non-decreasing length, ≤ ~``budget`` row·slots each
    (equal numbers of rows, each chunk truncated to its longest row)."""
    A = lengths.shape[0]
    if A == 0:
        return []
    rows = max(1, budget // max(1, int(lengths[-1])))
    stops = list(range(rows, A, rows)) + [A]
    ends = lengths[torch.tensor(stops, device=lengths.device) - 1].tolist()
    return [(a, b, max(1, int(L))) for a, b, L in zip([0] + stops[:-1], stops, ends)]


#: a direction used by at least this many heads of an atom is evaluated directly once for all heads (one
#: (M, D) basis block and a bmm); fewer heads use the moment expansion per (direction, head). Measured on
#: 2 CPU threads: ~60 µs per direct direction vs ~12 µs per (direction, head) with moments.
SHARED_HEADS = 5


def frame_set_angle_psi(w: Tensor, unit: Tensor, frames: Tensor, frame_w: Tensor, basis, proj: Tensor,
                        budget: int = 4_000_000) -> Tensor:
    """Σ_t frame_w_t Σ_k W_k,h Σ_slots w · b(e_k^t · r̂) per (atom, head), once per distinct direction.

    Args:
        w: (N, H, M) slot weights (0 for slots without a direction); unit: (N, M, 3);
        frames: (N, H, T, 3, 3); frame_w: (N, H, T); basis: the angular basis; proj: (3, H, C, D).
    Returns:
        (N, H, C), as ``DistanceDecayAttention._angle_psi``, with no padding to the largest set of the batch:

        * rows (atom, head) whose every axis uses one direction v (weight 1 on v, or on −v, or ½ on each:
          sign averaging; for the symmetric full basis b(−c) is b(c) reversed, so ½ on ±v is v with the
          projection ½(W + W reversed)) go through the dense single-frame path (grouped by head and pattern);
        * the other rows: the histogram of each distinct axis direction of an atom is computed once (shared
          by its frames and axes, and by ±v), directly for all heads when ≥ ``SHARED_HEADS`` heads use it,
          else by the moment expansion for each (direction, head).
    """
    N, H, M = w.shape
    C = proj.shape[2]
    dtype = w.dtype
    dev = w.device
    symmetric = getattr(basis, "win", None) is None
    atom, dirs, target, head, group, coef, flip = compact_directions(frames, frame_w, symmetric)
    A = atom.shape[0]
    NH3 = N * H * 3
    out = w.new_zeros(N * H, C)
    with torch.no_grad():
        # merge entries of equal (target, direction, orientation)
        key = (target * A + group) * 2 + flip.long()
        uk, kinv = torch.unique(key, return_inverse=True)
    c_u = torch.zeros(uk.shape[0], dtype=coef.dtype, device=dev).index_add(0, kinv, coef)
    with torch.no_grad():
        t_u, g_u, f_u = uk // (2 * A), (uk // 2) % A, uk % 2
    if moment_kernel_applies(basis, w, unit, dirs, c_u):  # every entry in one kernel, no split
        sdir = torch.where(f_u[:, None].bool(), -dirs[g_u], dirs[g_u])  # hist(−v) = hist(v) reversed
        return direction_angle_features(w, unit, t_u // 3, t_u % 3, sdir, c_u, basis, proj)
    with torch.no_grad():
        if symmetric:
            tg = torch.unique(t_u * A + g_u)
            n_groups = torch.bincount(tg // A, minlength=NH3)
            cp = torch.zeros(NH3, dtype=coef.dtype, device=dev).index_add(0, t_u[f_u == 0], c_u[f_u == 0])
            cm = torch.zeros(NH3, dtype=coef.dtype, device=dev).index_add(0, t_u[f_u == 1], c_u[f_u == 1])
            g_t = torch.zeros(NH3, dtype=torch.long, device=dev).scatter(0, t_u, g_u)
            eps = 1e-6
            pat = torch.where(((cp - 1).abs() < eps) & (cm < eps), 0,
                              torch.where(((cm - 1).abs() < eps) & (cp < eps), 1,
                                          torch.where(((cp - 0.5).abs() < eps) & ((cm - 0.5).abs() < eps), 2, -1)))
            # directions shared by many heads are cheaper in the ragged path (one basis block for all heads)
            pairs = torch.unique(g_u * H + (t_u // 3) % H)
            shared = torch.bincount(pairs // H, minlength=A) >= SHARED_HEADS
            ok_row = ((n_groups == 1) & (pat >= 0) & ~shared[g_t]).view(N * H, 3).all(-1)
        else:
            ok_row = torch.zeros(N * H, dtype=torch.bool, device=dev)
    if ok_row.any():
        rows = torch.nonzero(ok_row).flatten()
        pr = pat.view(N * H, 3)[rows]
        code = ((pr == 2).long() * torch.tensor([1, 2, 4], device=dev)).sum(-1)  # symmetric axes
        sgn = torch.where(pr == 1, -1.0, 1.0).to(dtype)
        dv = dirs[g_t.view(N * H, 3)[rows]].to(dtype) * sgn[..., None]  # (R, 3, 3) rows = axes
        proj_sym = 0.5 * (proj + proj.flip(-1))
        for cd in torch.unique(code).tolist():
            sym = torch.tensor([(cd >> k) & 1 for k in range(3)], dtype=torch.bool, device=dev)
            pj = torch.where(sym[:, None, None, None], proj_sym, proj)
            sel = torch.nonzero(code == cd).flatten()
            rr = rows[sel]
            n_r, h_r = rr // H, rr % H
            cos = (unit[n_r][:, :, None, :] * dv[sel][:, None, :, :]).sum(-1)  # (R, M, 3)
            for hh in torch.unique(h_r).tolist():
                s_h = torch.nonzero(h_r == hh).flatten()
                out = out.index_add(0, rr[s_h], row_angle_features(w[n_r[s_h], hh], cos[s_h], basis, pj[:, hh]))
    rest = ~ok_row[t_u // 3]
    if rest.any():
        out = out + _ragged_angle_psi(w, unit, atom, dirs, t_u[rest], g_u[rest], f_u[rest].bool(), c_u[rest],
                                      basis, proj, symmetric, budget)
    return out.view(N, H, C)


def _ragged_angle_psi(w, unit, atom, dirs, target, group, flip, coef, basis, proj, symmetric: bool,
                      budget: int) -> Tensor:
    """The frame-set angular features of merged entries (target (atom, head, axis), direction group, flip,
    coef) → (N·H, C): one histogram per distinct (direction, head), see :func:`frame_set_angle_psi`."""
    N, H, M = w.shape
    D = basis.bins
    dtype, dev = w.dtype, w.device
    head = (target // 3) % H
    with torch.no_grad():
        used, g_loc = torch.unique(group, return_inverse=True)  # the directions needed
        A = used.shape[0]
        pairs, pair_of_entry = torch.unique(g_loc * H + head, return_inverse=True)
        pg, ph = pairs // H, pairs % H
        n_heads = torch.bincount(pg, minlength=A)
        direct = n_heads >= (SHARED_HEADS if symmetric else 1)  # (A,)
        gd = torch.nonzero(direct).flatten()
        pos_d = torch.full((A,), -1, dtype=torch.long, device=dev)
        pos_d[gd] = torch.arange(gd.shape[0], device=dev)
        pm = torch.nonzero(~direct[pg]).flatten()  # moment pairs
        pos_m = torch.full(pairs.shape, -1, dtype=torch.long, device=dev)
        pos_m[pm] = torch.arange(pm.shape[0], device=dev)
        is_direct = direct[pg[pair_of_entry]]
        # rows sorted by their atom's last slot with a weight: chunks are truncated to their own length
        wmax = w.amax(1) > 0  # (N, M)
        length = M - wmax.to(torch.int8).flip(-1).argmax(-1)
        length = torch.where(wmax.any(-1), length, torch.ones_like(length))
    at = atom[used]
    cos = (unit[at] * dirs[used].to(unit.dtype)[:, None, :]).sum(-1)  # (A, M)
    acc = w.new_zeros(N * H * 3, D)
    if gd.numel():
        od = torch.sort(length[at[gd]], stable=True).indices
        gds = gd[od]
        hd = _SharedDirectionHistogram.apply(w, cos[gds].contiguous(), at[gds], length[at[gds]], basis,
                                             max(1, budget // max(1, D)))
        inv = torch.empty_like(od)
        inv[od] = torch.arange(od.shape[0], device=dev)
        table = hd[inv].reshape(-1, D)  # row pos_d · H + h
        e = torch.nonzero(is_direct).flatten()
        src = pos_d[pg[pair_of_entry[e]]] * H + ph[pair_of_entry[e]]
        rows = table[src]
        if symmetric:
            rows = torch.where(flip[e][:, None], rows.flip(-1), rows)
        acc = acc.index_add(0, target[e], rows * coef[e][:, None].to(dtype))
    if pm.numel():
        eye = torch.eye(D, dtype=dtype, device=dev)[None]
        table = row_angle_features(w[at[pg[pm]], ph[pm]], cos[pg[pm]][:, :, None], basis, eye)  # (Rm, D), row pos_m
        e = torch.nonzero(~is_direct).flatten()
        rows = table[pos_m[pair_of_entry[e]]]
        rows = torch.where(flip[e][:, None], rows.flip(-1), rows)
        acc = acc.index_add(0, target[e], rows * coef[e][:, None].to(dtype))
    return torch.einsum("nhkd,khcd->nhc", acc.view(N, H, 3, D), proj).reshape(N * H, -1)
