"""Tie policies of frame methods: deterministic, exactly invariant frames on symmetric crystals.

Every frame method chooses axes by maximising scores (max / static frames), by ordering eigenvalues
(PCA frames) or by shortest vectors (lattice frames). In symmetric crystals several candidates tie exactly,
and which one wins then depends on float rounding (rotation, another unit cell) or on random noise (the
published code). Policies (frame option ``ties``):

* ``"average"``: the angular features are averaged over the **tie set**: every candidate frame whose
  choices lie within a tolerance of the best (weighted, see below). The set is a function of the crystal's
  geometry and of the layer's attention only, not of slot order, axes or noise, so it is mapped onto
  itself by every isometry of the crystal and the averaged features are invariant (rotation, translation,
  permutation, periodic image, supercell, unimodular change of cell). For max and static frames with
  *exact* ties, the averaged angular features of a layer are the expectation of those of the published
  stochastic policy (each tied candidate wins with equal probability, see the weights below), computed
  exactly. Two cases are not that expectation: near-ties inside the tolerance (see docs/frames.md), and
  degenerate PCA covariances, where the published noisy ``eigh`` draws axes from a continuous distribution
  over the eigenspace; the PCA frames therefore use their deterministic set in training as well
  (``FrameMethod.average_in_training``), so that training and evaluation follow one rule.
* ``"noise"``: the published policy: tie-breaking noise of amplitude ``frame_noise`` (Å², 1e-5 published),
  a different frame at every call; with ``frame_noise = 0`` the first candidate in (j, n) slot order wins.
* ``"first"``: deterministic first-wins order (the published kernels with noise 0).
* ``"auto"`` (default): ``"first"`` when ``frame_noise == 0`` (the documented deterministic order, used
  for parity with the published kernels), otherwise ``"noise"`` in training mode (published training) and ``"average"``
  in evaluation mode (``predict``, validation, test); ``"average"`` in both for the PCA frames.

Tolerances and tie weights (scores are log-weights, dimensionless):

* a candidate whose score is within t0 = ``atol + rtol · mag`` of the best gets tie weight 1, where ``mag``
  is the magnitude of the best candidate's score terms (|q·k/√d_h| + |a d²| + |log(1 − |cos|)|), plus
  ``COS_EPS / (1 − |cos|)`` for second-axis scores (the sensitivity of the log to the rounding of the cosine).
  Defaults atol = 2e-5, rtol = 2e-6: measured rounding spreads of tied scores reach ~1e-5 when atoms are
  given as far periodic images (float32 positions of ~30 Å carry ~2e-6 Å), so they all count as ties;
* from t0 on the weight falls linearly to 0 at t0 + ``RAMP`` (4e-4): a genuine gap of 5e-4 gets no weight.
  Without the ramp an accidental near-tie whose gap happens to lie at the tolerance would switch a whole
  frame under rounding-level changes (measured: 2.6e-4 relative on mp-30180); with it the weight moves by
  (change / RAMP) only (3e-5 there with a ramp of 8e-5, 9e-6 with 4e-4);
* eigenvalues of PCA covariances tie when they differ by at most ``EIG_RTOL · trace`` (1e-4, a hard
  switch between constructions; PCA axes with gaps near that are unstable under any policy);
* the sign of a PCA axis is undecided (both signs, weight 1 each) when its third moment is within ``tol``
  of 0 (``MOMENT_RTOL`` of its scale plus the first-order effect of a ``COV_EPS`` covariance error through
  the eigengaps), decided beyond 3 · tol, and the other sign's weight is linear in between;
* lattice vector lengths tie when their squared lengths differ by at most ``LATTICE_RTOL`` (1e-5) relative.

The contract of ``"average"`` and how the sets and their weights are built are described in docs/frames.md.

Cap: at most ``cap`` frames per (atom, head) (default 256; the largest sets seen are 96 for max frames on
batch48 and 48 for static frames of bcc metals). Above the cap whole e1 groups are kept in slot order
while they fit (a first group larger than the cap is cut) and the weights renormalised; exact invariance is
then lost for that (atom, head) and a warning is issued.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from crystalframer.frames.axes import orthonormal_from_two
from crystalframer.geometry.images import lexicographic_shifts, plane_spacings

TIE_MODES = ("auto", "average", "noise", "first")
#: absolute and relative score tolerances (see module docstring)
ATOL = 2e-5
RTOL = 2e-6
#: width of the linear ramp of tie weights above the tolerance (full weight up to the tolerance, none from
#: tolerance + RAMP on; with the defaults a gap above ~4.2e-4 gets no weight). Float32 scores carry ~1e-6 of
#: rounding, which moves a weight inside the ramp by ~1e-6 / RAMP: 8e-5 left a near-tie of mp-30180
#: at 3e-5 relative change under re-imaging; 4e-4 gives 9e-6 and still leaves the low-symmetry
#: structures we tested untouched (2e-3 does not: 3e-3 relative change there).
RAMP = 4e-4
#: assumed rounding of a cosine, for the tolerance of log(1 − |cos|)
COS_EPS = 1e-6
#: eigenvalues within EIG_RTOL · trace are degenerate
EIG_RTOL = 1e-4
#: third moments within MOMENT_RTOL · Σ w |e·p|³ (+ the eigenvector's uncertainty, see COV_EPS) of 0 leave
#: the sign of an axis undecided
MOMENT_RTOL = 1e-5
#: assumed rounding of a float32 covariance relative to its trace (weights w carry ~|logit|·ε ≈ 1e-7 .. 1e-6):
#: it makes an eigenvector, and so its third moment, uncertain in proportion to 1 / eigengap
COV_EPS = 3e-7
#: squared lattice-vector lengths within this relative tolerance tie; dot products within it are 0
LATTICE_RTOL = 1e-5
#: frames per (atom, head) at most
CAP = 256

_warned = set()


def warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def resolve_mode(ties: str, training: bool, noise: float) -> str:
    """The effective policy: ``"average"``, ``"noise"`` or ``"first"`` (``"auto"`` resolved)."""
    if ties != "auto":
        return ties
    if noise == 0:
        return "first"
    return "noise" if training else "average"


def check_mode(ties: str) -> str:
    if ties not in TIE_MODES:
        raise ValueError(f"ties must be one of {TIE_MODES}, got {ties!r}")
    return ties


def tie_weight(score: Tensor, allowed: Tensor, mag: Tensor, atol: float, rtol: float, ramp: float = RAMP,
               dim: int = -1, slack: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Tie weights in [0, 1] of the entries of ``score`` along ``dim``: 1 within t0 = atol + rtol · mag (+ slack)
    of the maximum (read at the maximum), 0 from t0 + ``ramp`` on, linear in between (0 where not allowed).

    The ramp makes the weights a continuous function of the scores: rounding-level changes of a gap that
    happens to lie near the tolerance move a weight by (change / ramp), instead of switching a whole frame.
    Returns the weights, the maximum and the outer edge t0 + ramp (keepdim).
    """
    s = score.masked_fill(~allowed, float("-inf"))
    best, arg = s.max(dim, keepdim=True)
    t0 = atol + rtol * torch.gather(mag, dim, arg)
    if slack is not None:
        t0 = t0 + torch.gather(slack, dim, arg)
    gap = best - s
    w = torch.clamp((t0 + ramp - gap) / ramp, 0.0, 1.0).masked_fill(~allowed, 0.0)
    w = torch.where(gap <= t0, torch.ones_like(w), w).masked_fill(~allowed, 0.0)
    return w, best, t0 + ramp


def pack(row: Tensor, group: Tensor, axes: Tensor, weight: Tensor, n_rows: int, cap: int = CAP,
         what: str = "frame") -> tuple[Tensor, Tensor]:
    """Entries (sorted by row, groups contiguous) → padded sets (n_rows, T, 3, 3) and weights (n_rows, T).

    Every row must have at least one entry. Above ``cap`` entries in a row, whole groups are kept in order
    while they fit (the first group is cut if it alone is larger) and the weights renormalised.
    """
    E = row.shape[0]
    dev = row.device
    counts = torch.bincount(row, minlength=n_rows)
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(E, device=dev) - start[row]
    if E and int(counts.max()) > cap:
        # group extents within the row
        first_of_group = torch.ones(E, dtype=torch.bool, device=dev)
        first_of_group[1:] = (group[1:] != group[:-1]) | (row[1:] != row[:-1])
        gid = torch.cumsum(first_of_group.long(), 0) - 1
        g_start = pos[first_of_group][gid]
        g_size = torch.bincount(gid)[gid]
        keep = (g_start + g_size <= cap) | ((g_start == 0) & (pos < cap))
        warn_once(f"cap-{what}", f"{what} tie set larger than the cap ({int(counts.max())} > {cap}): whole tie "
                                  "groups beyond the cap are dropped; exact invariance is lost for those atoms")
        row, group, axes, weight = row[keep], group[keep], axes[keep], weight[keep]
        total = torch.zeros(n_rows, dtype=weight.dtype, device=dev).index_add_(0, row, weight)
        weight = weight / total[row]
        counts = torch.bincount(row, minlength=n_rows)
        start = torch.cumsum(counts, 0) - counts
        pos = torch.arange(row.shape[0], device=dev) - start[row]
    T = max(1, int(counts.max())) if row.numel() else 1
    out = axes.new_zeros((n_rows, T) + tuple(axes.shape[1:]))
    wout = weight.new_zeros(n_rows, T)
    out[row, pos] = axes
    wout[row, pos] = weight
    return out, wout


# -- max / static frames -------------------------------------------------------------------------------

#: the second axis is first searched among the TOP_K candidates with the largest first score (exact: rows
#: where a candidate outside could reach the tolerance are redone over every slot)
TOP_K = 24


def two_axis_frame_set(unit: Tensor, candidate: Tensor, s1: Tensor, mag1: Tensor, second, collinear: float,
                       log_floor: float, atol: float = ATOL, rtol: float = RTOL, cap: int = CAP,
                       bounded: bool = True):
    """Tie set of two-axis frames (max / static) → ``(axes (N, H, T, 3, 3), weights (N, H, T))``.

    Args:
        unit: (N, M, 3) slot unit vectors; candidate: (N, M, H) or (N, M, 1); s1, mag1: (N, M, H) first score
            and its magnitude. ``second(s1_rows, mag1_rows, cos, n, slots) -> (score, magnitude)`` gives the
            second score of the slots ``slots`` (R, K) of atoms ``n`` (R,), with their first scores and
            magnitudes (R, K) and their cosines (R, K) with a candidate e1.

    Both searches run over the ``TOP_K`` slots of largest first score: the first axis's weights vanish beyond
    the ramp, and the second score is at most the first (log(1 − |cos|) <= 0), so a slot whose first score is
    below the best second score minus the ramp's outer edge can carry no weight. Rows where the next slot
    does not pass these tests are redone over every slot (exact). ``bounded=False`` (a second score not
    bounded by the first, e.g. the literal static variant) searches the second axis over every slot.
    """
    N, M, H = s1.shape
    dev = s1.device
    inf = float("-inf")
    cand_t = candidate.expand(N, M, H).permute(0, 2, 1).reshape(N * H, M)
    s1_t = s1.permute(0, 2, 1).reshape(N * H, M).masked_fill(~cand_t, inf)
    mag_t = mag1.expand(N, M, H).permute(0, 2, 1).reshape(N * H, M)
    unit_flat = unit.reshape(N * M, 3)
    row_atom = torch.arange(N * H, device=dev) // H
    K = min(TOP_K, M)
    top_s, top_i = s1_t.topk(min(K + 1, M), dim=-1)  # (NH, K(+1)), descending
    nxt1 = top_s[:, K] if K < M else torch.full((N * H,), inf, dtype=s1.dtype, device=dev)
    ts, ti = top_s[:, :K], top_i[:, :K]

    # first axis: tie weights over the top K (rows whose (K+1)-th slot is inside the ramp: over all slots)
    ok = torch.isfinite(ts)
    pi1, best1, edge1 = tie_weight(ts, ok, torch.gather(mag_t, 1, ti), atol, rtol, dim=1)
    none = ~ok[:, 0]  # no candidate at all → slot 0 with weight 1, as the first-wins path
    if none.any():
        ti = torch.where(none[:, None] & (torch.arange(K, device=dev) == 0), torch.zeros_like(ti), ti)
        pi1[:, 0] = torch.where(none, torch.ones_like(pi1[:, 0]), pi1[:, 0])
    r0, k0 = torch.nonzero(pi1 > 0, as_tuple=True)
    row1, m1, p1 = r0, ti[r0, k0], pi1[r0, k0]
    full1 = torch.nonzero(nxt1 > best1[:, 0] - edge1[:, 0]).flatten()
    if full1.numel():
        pf, _, _ = tie_weight(s1_t[full1], cand_t[full1], mag_t[full1], atol, rtol, dim=1)
        keep = ~torch.isin(row1, full1)
        rf, mf = torch.nonzero(pf > 0, as_tuple=True)
        row1 = torch.cat([row1[keep], full1[rf]])
        m1 = torch.cat([m1[keep], mf])
        p1 = torch.cat([p1[keep], pf[rf, mf]])
    order = torch.sort(row1 * M + m1).indices  # rows, then slots ascending
    row1, m1, p1 = row1[order], m1[order], p1[order]
    c1 = torch.zeros(N * H, dtype=s1.dtype, device=dev).index_add_(0, row1, p1)
    R1 = row1.shape[0]
    n1 = row_atom[row1]
    e1 = unit_flat[n1 * M + m1]  # (R1, 3)

    def stage(rows: Tensor, slots: Tensor, s_rows: Tensor, mag_rows: Tensor, cand_rows: Tensor):
        """Second-axis tie weights of e1 entries ``rows`` over slots (R, K) with their first scores etc."""
        nr = n1[rows]
        u = unit_flat[(nr * M)[:, None] + slots]  # (R, K, 3)
        cos = (u * e1[rows][:, None, :]).sum(-1)
        allowed = cand_rows & (cos.abs() < collinear)
        s2, mag2 = second(s_rows, mag_rows, cos, nr, slots)
        slack = COS_EPS / torch.clamp(1 - cos.abs(), min=log_floor)
        pi, best, edge = tie_weight(s2, allowed, mag2, atol, rtol, dim=1, slack=slack)
        return pi, best[:, 0], edge[:, 0], allowed.any(1)

    if bounded:
        mag_top = torch.gather(mag_t, 1, ti)
        pi, best, edge, has = stage(torch.arange(R1, device=dev), ti[row1], ts[row1], mag_top[row1],
                                    torch.isfinite(ts[row1]))
        nxt = nxt1[row1]  # the largest first score outside the top K
        redo = torch.where(has, nxt > best - edge, torch.isfinite(nxt))
    else:  # the top K of the first score says nothing about the second: every row searches every slot
        pi = s1_t.new_zeros(R1, K)
        has = torch.zeros(R1, dtype=torch.bool, device=dev)
        redo = torch.ones(R1, dtype=torch.bool, device=dev)
    keep = ~redo
    r_a, k_a = torch.nonzero((pi > 0) & keep[:, None], as_tuple=True)
    r1, m2, p2 = [r_a], [ti[row1[r_a], k_a]], [pi[r_a, k_a]]
    has2 = has.clone()
    rr = torch.nonzero(redo).flatten()
    if rr.numel():
        full = torch.arange(M, device=dev).expand(rr.shape[0], M)
        rw = row1[rr]
        pi_f, _, _, has_f = stage(rr, full, s1_t[rw], mag_t[rw], cand_t[rw])
        has2[rr] = has_f
        r_b, k_b = torch.nonzero(pi_f > 0, as_tuple=True)
        r1.append(rr[r_b])
        m2.append(k_b)
        p2.append(pi_f[r_b, k_b])
    none2 = torch.nonzero(~has2).flatten()  # no admissible second direction: one documented fallback entry
    r1.append(none2)
    m2.append(torch.zeros_like(none2))
    p2.append(torch.ones(none2.shape[0], dtype=s1.dtype, device=dev))
    r1, m2, p2 = torch.cat(r1), torch.cat(m2), torch.cat(p2)
    order = torch.sort(r1 * M + m2).indices  # e1 groups in slot order, second slots ascending
    r1, m2, p2 = r1[order], m2[order], p2[order]
    c2 = torch.zeros(R1, dtype=s1.dtype, device=dev).index_add_(0, r1, p2)
    frames = orthonormal_from_two(e1[r1], unit_flat[n1[r1] * M + m2], has2[r1])
    weight = (p1[r1] / c1[row1[r1]]) * (p2 / c2[r1])
    axes, w = pack(row1[r1], r1, frames, weight, N * H, cap, "max-frame")
    return axes.view(N, H, *axes.shape[1:]), w.view(N, H, -1)


# -- PCA frames -------------------------------------------------------------------------------------------

def _sym_eig(cov: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 3, 3) → eigenvalues (B, 3) descending and eigenvectors as rows (B, 3, 3), float64."""
    lam, vec = torch.linalg.eigh(cov.double())
    return lam.flip(-1), vec.flip(-1).transpose(-1, -2)


def _right_handed(F: Tensor) -> Tensor:
    e3 = torch.cross(F[..., 0, :], F[..., 1, :], dim=-1)
    return torch.stack([F[..., 0, :], F[..., 1, :], e3], -2)


def pca_frame_set(cov: Tensor, pts: Tensor, row_pts: Tensor, wts: Tensor, logw: Tensor, mag: Tensor,
                  signs: str, collinear: float = 0.9999, log_floor: float = 1e-5, atol: float = ATOL,
                  rtol: float = RTOL, eig_rtol: float = EIG_RTOL, cap: int = CAP, return_undetermined: bool = False):
    """Tie set of PCA frames for B rows → ``(axes (B, T, 3, 3), weights (B, T))``.

    Args:
        cov: (B, 3, 3) covariance Σ_s wts_s p_s p_sᵀ of each row.
        pts: (P, M, 3) points; row b uses ``pts[row_pts[b]]``.
        wts: (B, M) weights (0: absent); logw, mag: (B, M) log-weight (−inf: absent) and its magnitude,
            for the scores of candidate axes.
        signs: how the sign of an eigenvector axis is chosen: ``"average"`` (both signs, det +1 kept),
            ``"moment"`` (third moment; both signs when it is 0 within tolerance) or ``"random"``.

    Eigenvalues within ``eig_rtol · trace`` are degenerate. Cases:

    * no degeneracy: the eigenvectors, largest first; the signs of e1 and e2 are free (e3 = e1 × e2), so
      ``"average"`` gives the 4 sign combinations with det +1;
    * a degenerate pair spanning a plane ⊥ u (u the eigenvector of the third eigenvalue): the in-plane
      axes are a = the in-plane direction of a point with the largest score log w + log |p_⊥| (every tied
      point), and u × a; u's sign is free (flipped together with u × a);
    * isotropic (all three equal, e.g. cubic sites): the two-axis construction of max frames on the points
      (score log w + log |p|, then + log(1 − |cos|)); no free sign.

    The pointing axes (a, and the max-frame axes) carry their sign. All constructions are closed under
    the symmetries of the weighted points. Where no point has a component in the degenerate subspace
    (collinear or no points: the axes are undetermined, no finite invariant set exists) the first slot is
    used; ``return_undetermined`` also returns those rows (B,) bool so that the caller can do better.
    """
    B = cov.shape[0]
    dev, dt = cov.device, pts.dtype
    lam, V = _sym_eig(cov)
    pnorm = pts.norm(dim=-1)  # (P, M)
    tol_e = eig_rtol * lam.sum(-1).abs() + 1e-12
    d12 = (lam[:, 0] - lam[:, 1]) <= tol_e
    d23 = (lam[:, 1] - lam[:, 2]) <= tol_e
    case = torch.where(d12 & d23, 3, torch.where(d12, 1, torch.where(d23, 2, 0)))
    V = _right_handed(V).to(dt)
    # per entry: row, group, frame, weight, and which axis pair may be flipped together:
    # free = 0: e1 & e2 free (4 combos), 1: flip (e2, e3), 2: flip (e1, e3), 3: none
    rows, groups, frames, weights, free = [], [], [], [], []
    undetermined = torch.zeros(B, dtype=torch.bool, device=dev)

    b0 = torch.nonzero(case == 0).flatten()
    rows.append(b0)
    groups.append(torch.zeros_like(b0))
    frames.append(V[b0])
    weights.append(torch.ones(b0.shape[0], dtype=dt, device=dev))
    free.append(torch.zeros_like(b0))

    for c, u_idx in ((1, 2), (2, 0)):
        b = torch.nonzero(case == c).flatten()
        if b.numel() == 0:
            continue
        u = V[b, u_idx]  # (R, 3)
        p = pts[row_pts[b]]  # (R, M, 3)
        q = p - (p * u[:, None, :]).sum(-1, keepdim=True) * u[:, None, :]
        qn = q.norm(dim=-1)
        ok = torch.isfinite(logw[b]) & (qn > 1e-6 * pnorm[row_pts[b]].amax(-1, keepdim=True).clamp_min(1e-30))
        lq = torch.log(qn.clamp_min(1e-30))
        pi, _, _ = tie_weight(logw[b] + lq, ok, mag[b] + lq.abs(), atol, rtol, dim=1,
                              slack=COS_EPS / qn.clamp_min(1e-30) ** 2)
        pi[:, 0] = torch.where(ok.any(1), pi[:, 0], torch.ones_like(pi[:, 0]))
        undetermined[b] |= ~ok.any(1)
        r, m = torch.nonzero(pi > 0, as_tuple=True)
        a = q[r, m] / qn[r, m, None].clamp_min(1e-30)
        ur = u[r]
        F = (torch.stack([a, torch.cross(ur, a, dim=-1), ur], -2) if c == 1
             else torch.stack([ur, a, torch.cross(ur, a, dim=-1)], -2))
        rows.append(b[r])
        groups.append(torch.arange(r.shape[0], device=dev))
        frames.append(F)
        weights.append(pi[r, m] / pi.sum(1)[r])
        free.append(torch.full_like(r, c))

    b = torch.nonzero(case == 3).flatten()
    if b.numel():
        p = pts[row_pts[b]]
        pn = pnorm[row_pts[b]]
        ok = torch.isfinite(logw[b]) & (pn > 1e-6 * pn.amax(-1, keepdim=True).clamp_min(1e-30))
        un = p / pn[..., None].clamp_min(1e-30)
        lp = torch.log(pn.clamp_min(1e-30))
        undetermined[b] |= ok.sum(1) < 2  # fewer than two points with a direction: no second axis

        def second(s1r, m1r, cos, n, slots):
            lg = torch.log(torch.clamp(1 - cos.abs(), min=log_floor))
            return s1r + lg, m1r + lg.abs()

        axes, w = two_axis_frame_set(un, ok[:, :, None], (logw[b] + lp)[:, :, None], (mag[b] + lp.abs())[:, :, None],
                                     second, collinear, log_floor, atol, rtol, cap=1 << 30)
        axes, w = axes[:, 0], w[:, 0]  # (R, T3, 3, 3)
        r, t = torch.nonzero(w > 0, as_tuple=True)
        rows.append(b[r])
        groups.append(torch.arange(r.shape[0], device=dev))
        frames.append(axes[r, t])
        weights.append(w[r, t])
        free.append(torch.full_like(r, 3))

    row = torch.cat(rows)
    order = torch.sort(row, stable=True).indices
    row, group, F = row[order], torch.cat(groups)[order], torch.cat(frames)[order]
    wgt, free = torch.cat(weights)[order], torch.cat(free)[order]
    # sign options per entry: (4, 3) sign patterns, allowed per free-sign case
    combos = torch.tensor([[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]], dtype=dt, device=dev)
    allowed = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool,
                           device=dev)[free]  # (E, 4)
    sign_w = allowed.to(dt)
    if signs == "random":
        pick = torch.multinomial(allowed.to(dt), 1).squeeze(1)
        sign_w = torch.zeros_like(sign_w).scatter_(1, pick[:, None], 1.0)
    elif signs == "moment":
        # the sign of a free axis makes its weighted third moment Σ w (e·p)³ >= 0; undecided (0 within
        # tolerance): both signs. Free axes per case: 0: e1, e2; 1: e3 (= ±u); 2: e1 (= ±u); 3: none.
        p = pts[row_pts[row]]  # (E, M, 3)
        proj = torch.einsum("ekc,emc->ekm", F, p)  # (E, 3, M)
        ww = wts[row][:, None, :]
        m3 = (ww * proj**3).sum(-1)  # (E, 3)
        # first-order uncertainty of m3_k from a covariance error δΣ (|v_jᵀ δΣ v_k| <= COV_EPS · trace):
        # δm3_k = Σ_(j≠k) 3 Σ w p_k² p_j · (v_jᵀ δΣ v_k) / (λ_k − λ_j)
        dm = 3 * torch.einsum("ekm,ejm->ekj", ww * proj**2, proj)  # (E, 3, 3)
        lr = lam[row].to(dt)  # (E, 3), frame axes are in eigenvalue order
        dl = (lr[:, :, None] - lr[:, None, :]).abs()
        off = ~torch.eye(3, dtype=torch.bool, device=dev)
        sens = torch.where(off, dm.abs() / dl.clamp_min(1e-30), torch.zeros_like(dm)).sum(-1)
        tol = MOMENT_RTOL * (ww * proj.abs() ** 3).sum(-1) + COV_EPS * lr.sum(-1, keepdim=True) * sens + 1e-12
        # weight of the sign that makes the moment negative: 1 within tol of 0, 0 beyond 3 tol, linear between
        minority = torch.clamp((3 * tol - m3.abs()) / (2 * tol), 0.0, 1.0)  # (E, 3)
        decides = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool, device=dev)[free]
        against = (combos[None] * torch.sign(m3)[:, None, :]) < 0  # (E, 4, 3): combo makes axis k's moment < 0
        factor = torch.where(against & decides[:, None, :], minority[:, None, :], torch.ones_like(against, dtype=dt))
        sign_w = factor.prod(-1) * allowed.to(dt)  # (E, 4)
    elif signs != "average":
        raise ValueError(f"unknown sign mode {signs!r}")
    e_idx, c_idx = torch.nonzero(sign_w > 0, as_tuple=True)
    F = F[e_idx] * combos[c_idx][:, :, None]
    wgt = wgt[e_idx] * sign_w[e_idx, c_idx] / sign_w.sum(1)[e_idx]
    axes, w = pack(row[e_idx], group[e_idx], F, wgt, B, cap, "pca-frame")
    return (axes, w, undetermined) if return_undetermined else (axes, w)


# -- lattice frames ----------------------------------------------------------------------------------------

def lattice_frame_set(lattice: Tensor, rtol: float = LATTICE_RTOL, cap: int = CAP) -> tuple[Tensor, Tensor]:
    """Tie set of the lattice frame of one (3, 3) lattice → ``(axes (T, 3, 3), weights (T,))``.

    The rules of :func:`crystalframer.frames.lattice.lattice_frame`, with every tied choice kept: e1 ∈ all
    shortest non-zero vectors; e2 ∈ the shortest non-parallel ones, signed e1·e2 >= 0 (both signs when
    e1·e2 = 0); e3 ∈ the shortest out-of-plane ones, signed e1·e3 >= 0 (both when 0); all three negated when
    e3·(e1 × e2) < 0. Weights per e1, then per e2, then per e3. The set is the orbit of one frame under
    the lattice's point group, so it does not depend on the basis given.
    """
    dt, dev = lattice.dtype, lattice.device
    reach = lattice.norm(dim=-1).max() * (1 + 1e-3)
    R = torch.ceil(reach / plane_spacings(lattice)).long()
    n = lexicographic_shifts(R).to(dev)
    pts = n.to(dt) @ lattice
    d2 = (pts * pts).sum(-1)
    nonzero = (n != 0).any(-1)
    unit = pts / pts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    inf = torch.tensor(float("inf"), dtype=dt, device=dev)

    def shortest(ok):
        d = torch.where(ok, d2, inf)
        return torch.nonzero(ok & (d <= d.min() * (1 + rtol))).flatten()

    def signed(cands, ref, ok_dot):
        """Candidates signed so that ref·v >= 0; with ref·v = 0 both signs stay (the set holds ±v)."""
        dot = unit[cands] @ ref
        keep = (dot > ok_dot) | (dot.abs() <= ok_dot)
        return cands[keep]

    frames, weights = [], []
    E1 = shortest(nonzero)
    for i1 in E1.tolist():
        e1 = unit[i1]
        cos1 = unit @ e1
        E2 = signed(shortest(nonzero & (1 - cos1.abs() > 1e-5)), e1, rtol)
        for i2 in E2.tolist():
            e2 = unit[i2]
            c = torch.cross(e1, e2, dim=-1)
            c = c / c.norm()
            E3 = signed(shortest(nonzero & ((unit @ c).abs() > 1e-5)), e1, rtol)
            for i3 in E3.tolist():
                F = torch.stack([e1, e2, unit[i3]])
                F = F * torch.where(unit[i3] @ c < 0, -1.0, 1.0).to(dt)
                frames.append(F)
                weights.append(1.0 / (len(E1) * len(E2) * len(E3)))
    F = torch.stack(frames)
    w = torch.tensor(weights, dtype=dt, device=dev)
    if F.shape[0] > cap:
        warn_once("cap-lattice", f"lattice frame tie set larger than the cap ({F.shape[0]} > {cap}): truncated")
        F, w = F[:cap], w[:cap] / w[:cap].sum()
    return F, w
