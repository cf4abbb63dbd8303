"""Periodic images: which translated copies of each atom an atom attends to.

The infinitely connected attention of Crystalformer (Taniai et al., ICLR 2024) is a sum over every
periodic image j(n) of every atom j, seen from atom i. It is evaluated on a finite set of images, held
per atom i as a padded list of "slots" (:class:`Images`):

* ``sphere`` (the library default): all images within a radius of atom i, the self image included. The set
  is a set of physical points, so it does not depend on the unit cell chosen, the periodic image given for
  each atom, rotation or atom order. The radius either follows the model's σ (the default,
  :class:`SpherePool`): per layer and atom, R_i = k · max_h σ_ih, with k = :func:`sphere_factor` (tol) = 5.83
  for the default ``tol`` = 1e-6 (the χ₃ quantile of tol / 5, see below); or it is a fixed ``cutoff`` in Å
  given by the user.

  Tail bound: for equal q·k over the images, the weight an atom drops is the Gaussian mass
  Σ_(d > R) exp(−d²/2σ²) relative to Σ_all exp(−d²/2σ²). Where the images are dense on the scale of σ the
  sums are integrals and the ratio is P(χ₃ > R/σ) = erfc(k/√2) + √(2/π) k exp(−k²/2), which is ``tol`` at
  R = kσ; where they are sparse the self image (weight 1) dominates the total and the ratio is smaller.
  Measured on bcc Fe, Si and NaCl at σ = σ_max = r0/√b = 1.98 Å (the largest σ of the parametrisation)
  against a 30 Å sphere: at most 7e-7 already with 5.54 σ_max = 10.96 Å (the continuum quantile of 1e-6), against
  7.9e-3 for the former fixed default 6.93 Å (3.5 σ_max, the released box rule's factor). The discrete shells of
  real lattices exceed the continuum bound by up to 3.4× (:data:`TAIL_MARGIN`), so the radius is taken for
  tol / 5: 5.83 σ, 11.54 Å at σ_max. A spread Δ of q·k over the neighbours
  scales the relative dropped weight by at most exp(Δ).
* ``box`` (the rule of the released Crystalformer/CrystalFramer code): per atom i and head h, every shift n
  with |n_k| <= R_k(i, h), centred on n = 0 with the raw (unwrapped) coordinates. Used for parity with the
  published model.

Slots of an atom are ordered by neighbour j (ascending), then by shift n in lexicographic order (n1
outermost, each from −R to +R): the deterministic tie order of the published kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor


def plane_spacings(lattice: Tensor) -> Tensor:
    """(..., 3, 3) lattice (rows) → (..., 3) spacings h_k between lattice planes (Å).

    h_k = |det T| / |l_{k+1} × l_{k+2}| = 1 / (|b_k| / 2π).
    """
    l1, l2, l3 = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]
    cross = torch.stack([torch.cross(l2, l3, dim=-1), torch.cross(l3, l1, dim=-1), torch.cross(l1, l2, dim=-1)], -2)
    det = torch.linalg.det(lattice).abs()
    return det[..., None] / cross.norm(dim=-1)


def shift_range(lattice: np.ndarray, radius: float) -> np.ndarray:
    """Half-widths R_k such that every image within ``radius`` Å of a point is reached.

    Valid for nearest-image-reduced differences (fractional components in [−0.5, 0.5]).
    """
    lat = np.asarray(lattice, dtype=np.float64)
    cross = np.stack([np.cross(lat[1], lat[2]), np.cross(lat[2], lat[0]), np.cross(lat[0], lat[1])])
    h = abs(np.linalg.det(lat)) / np.linalg.norm(cross, axis=1)
    return np.floor(radius / h + 0.5 + 1e-9).astype(np.int64)


def lexicographic_shifts(R: Tensor | np.ndarray | tuple) -> Tensor:
    """All integer shifts with |n_k| <= R_k, n1 outermost, as an (S, 3) long tensor."""
    r = [int(x) for x in (R.tolist() if hasattr(R, "tolist") else R)]
    axes = [torch.arange(-x, x + 1) for x in r]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


@dataclass
class Images:
    """Padded per-atom image lists for a batch of N atoms with M slots each.

    Attributes:
        j: (N, M) long, the neighbour atom of each slot (padding: the atom itself).
        vec: (N, M, 3) r = p_j + nᵀT − p_i in Å (padding: 0).
        d2: (N, M) squared distance, Å².
        mask: (N, M) or (N, M, H) bool, valid slots (per head for the official box).
        shift: (N, M, 3) long, n relative to the raw positions.
        pair: (N, M) long, index of (i, j) in the pair list.
        pair_i, pair_j: (P,) long, the ordered atom pairs (i, j) of each structure, i-major; empty when
            there are more pairs than slots (large cells), where the layers work per slot instead.
    """

    j: Tensor
    vec: Tensor
    d2: Tensor
    mask: Tensor
    shift: Tensor
    pair: Tensor
    pair_i: Tensor
    pair_j: Tensor

    @property
    def use_pairs(self) -> bool:
        """Whether per-pair sums (Σ n² pairs) are cheaper than per-slot gathers (N · M slots)."""
        return self.pair_i.numel() > 0 and self.pair_i.numel() <= self.j.numel()

    # cached: every layer of a model shares the sphere images of a batch
    @cached_property
    def self_image(self) -> Tensor:
        """(N, M) bool: the slot is at distance 0 (the atom itself, no direction)."""
        return self.d2 <= SELF_D2

    @cached_property
    def unit(self) -> Tensor:
        """(N, M, 3) unit vectors r̂ of the slots, 0 for the self image and padding."""
        with torch.no_grad():
            unit = self.vec / self.d2.clamp_min(1e-30).sqrt()[..., None]
            return unit.masked_fill_(self.self_image[..., None], 0.0)


#: Squared distance (Å²) under which an image is the atom itself (the released code's rule; the frame
#: methods skip it).
SELF_D2 = 1e-5


def pair_list(ptr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All ordered pairs (i, j) within each structure, i-major. Returns (pair_i, pair_j, pair_offsets)."""
    sizes = ptr[1:] - ptr[:-1]
    sq = sizes * sizes
    off = torch.zeros(sizes.shape[0] + 1, dtype=torch.long)
    off[1:] = torch.cumsum(sq, 0)
    struct = torch.repeat_interleave(torch.arange(sizes.shape[0]), sq)
    local = torch.arange(int(off[-1])) - off[struct]
    n = sizes[struct]
    return ptr[struct] + local // n, ptr[struct] + local % n, off


def _pad(per_atom: list[dict], n_atoms: int, device, dtype, mask_heads: int | None = None) -> dict:
    M = max(1, max(len(d["j"]) for d in per_atom))
    out = {
        "j": torch.zeros(n_atoms, M, dtype=torch.long),
        "vec": torch.zeros(n_atoms, M, 3, dtype=dtype),
        "shift": torch.zeros(n_atoms, M, 3, dtype=torch.long),
        "pair": torch.zeros(n_atoms, M, dtype=torch.long),
        "mask": torch.zeros((n_atoms, M) + ((mask_heads,) if mask_heads else ()), dtype=torch.bool),
    }
    for i, d in enumerate(per_atom):
        m = len(d["j"])
        out["j"][i] = i
        out["j"][i, :m] = d["j"]
        out["vec"][i, :m] = d["vec"]
        out["shift"][i, :m] = d["shift"]
        out["pair"][i, :m] = d["pair"]
        out["pair"][i, m:] = d["self_pair"]
        out["mask"][i, :m] = d["mask"] if "mask" in d else True
    return {k: v.to(device) for k, v in out.items()}


@dataclass
class SphereCandidates:
    """Every image within ``radius`` Å of each atom of a batch, as flat lists in slot order (what
    :func:`sphere_images` packs into padded slots). Depends only on the structures and the radius, so a
    DataLoader worker can compute it (:func:`sphere_candidates`) and the model restrict it to the radius it
    needs (:meth:`within`), which gives exactly the images of that radius.

    Attributes:
        radius: Å. ptr: (B + 1,) atom offsets of the batch.
        i, j: (E,) long, centre atom and neighbour of each image, in (i, j, lexicographic n) order.
        vec: (E, 3) float64 r = p_j + nᵀT − p_i, Å. d2: (E,) float64 |r|².
        shift: (E, 3) long, n relative to the raw positions.
    """

    radius: float
    ptr: Tensor
    i: Tensor
    j: Tensor
    vec: Tensor
    d2: Tensor
    shift: Tensor

    def within(self, radius: float) -> "SphereCandidates":
        """The images within ``radius`` <= ``self.radius`` Å (same selection rule, same order)."""
        if radius > self.radius:
            raise ValueError(f"the sphere candidates reach {self.radius} Å, {radius} Å asked for")
        keep = self.d2 <= radius * radius
        return SphereCandidates(radius, self.ptr, self.i[keep], self.j[keep], self.vec[keep], self.d2[keep],
                                self.shift[keep])


def sphere_candidates(lattice: Tensor, pos: Tensor, ptr: Tensor, cutoff: float,
                      chunk: int = 1_000_000) -> SphereCandidates:
    """Every image within ``cutoff`` Å of each atom, the self image included (selection in float64, on the CPU).

    Differences p_j − p_i are first reduced to the nearest image, so the result does not depend on which
    periodic image of each atom is given. Each structure is searched over its own box of shifts
    (|n_k| <= round(cutoff / h_k), h_k the lattice plane spacings); structures whose boxes are equal are
    handled together, in chunks of at most ``chunk`` (pair, shift) candidates; where the boxes are similar, the
    largest serves the whole batch. Per-structure boxes matter for mixed batches: one small cell would
    otherwise make every pair of the batch try its large box (6× the time on batches of 32 elastic-tensor
    structures at 11.5 Å).

    Args:
        lattice: (B, 3, 3), pos: (N, 3), ptr: (B + 1,).
        cutoff: radius in Å.
    """
    lat = lattice.detach().to("cpu", torch.float64)
    p64 = pos.detach().to("cpu", torch.float64)
    ptr_c = ptr.cpu()
    sizes = ptr_c[1:] - ptr_c[:-1]
    B = lat.shape[0]
    R_struct = torch.floor(cutoff / plane_spacings(lat) + 0.5 + 1e-9).long()  # (B, 3)
    inv = torch.linalg.inv(lat)
    struct = torch.repeat_interleave(torch.arange(B), sizes)  # (N,)
    c2 = cutoff * cutoff

    pair_i, pair_j, _ = pair_list(ptr_c)  # all pairs (i, j) of each structure, i-major
    pair_struct = struct[pair_i]
    boxes, box_of = torch.unique(R_struct, dim=0, return_inverse=True)
    n_shifts = (2 * boxes + 1).prod(1)  # (G,)
    pairs_per_box = torch.bincount(box_of[pair_struct], minlength=boxes.shape[0])
    if 2 * int((pairs_per_box * n_shifts).sum()) > pair_i.shape[0] * int(n_shifts.max()):
        # similar boxes: one box for the whole batch is less work than a pass per box size
        boxes, box_of = R_struct.amax(0, keepdim=True), torch.zeros(B, dtype=torch.long)
    E_p, E_n, E_vec, E_d2 = [], [], [], []
    for g in range(boxes.shape[0]):
        shifts = lexicographic_shifts(boxes[g])  # (S, 3)
        S = shifts.shape[0]
        tvec = torch.einsum("sk,bkc->bsc", shifts.to(torch.float64), lat)  # (B, S, 3)
        pairs = torch.nonzero(box_of[pair_struct] == g).flatten()
        step = max(1, chunk // S)
        for c0 in range(0, pairs.shape[0], step):
            pidx = pairs[c0:c0 + step]
            pi, pj = pair_i[pidx], pair_j[pidx]
            sp = struct[pi]
            f = torch.einsum("pc,pck->pk", p64[pj] - p64[pi], inv[sp])
            m = torch.round(f)
            red = torch.einsum("pk,pkc->pc", f - m, lat[sp])  # nearest-image difference vectors
            vec = red[:, None, :] + tvec[sp]  # (p, S, 3)
            d2 = (vec * vec).sum(-1)
            pp, ss = torch.nonzero(d2 <= c2, as_tuple=True)  # pair order (i, then j), then lexicographic n
            E_p.append(pidx[pp])
            E_n.append(shifts[ss] - m[pp].long())
            E_vec.append(vec[pp, ss])
            E_d2.append(d2[pp, ss])
    ep, en, evec, ed2 = torch.cat(E_p), torch.cat(E_n), torch.cat(E_vec), torch.cat(E_d2)
    if boxes.shape[0] > 1:  # back to pair order; the stable sort keeps each pair's lexicographic shift order
        order = torch.sort(ep, stable=True).indices
        ep, en, evec, ed2 = ep[order], en[order], evec[order], ed2[order]
    return SphereCandidates(float(cutoff), ptr_c, pair_i[ep], pair_j[ep], evec, ed2, en)


def pack_images(cand: SphereCandidates, dtype: torch.dtype, device) -> Images:
    """Padded per-atom slots (:class:`Images`) of sphere candidates; padding is the atom itself at distance 0."""
    ptr_c = cand.ptr.cpu()
    sizes = ptr_c[1:] - ptr_c[:-1]
    N, B = int(ptr_c[-1]), sizes.shape[0]
    struct = torch.repeat_interleave(torch.arange(B), sizes)  # (N,)
    pair_i, pair_j, pair_off = pair_list(ptr_c)
    P = pair_i.shape[0]
    ei, ej = cand.i.cpu(), cand.j.cpu()
    counts = torch.bincount(ei, minlength=N)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(ei.shape[0]) - first[ei]
    M = max(1, int(counts.max()))
    j = torch.arange(N)[:, None].repeat(1, M)
    j[ei, slot] = ej
    vec = torch.zeros(N, M, 3, dtype=torch.float64)
    vec[ei, slot] = cand.vec.cpu()
    shift = torch.zeros(N, M, 3, dtype=torch.long)
    shift[ei, slot] = cand.shift.cpu()
    mask = torch.zeros(N, M, dtype=torch.bool)
    mask[ei, slot] = True
    if P <= N * M:
        local_i = torch.arange(N) - ptr_c[struct]
        pair = pair_off[struct][:, None] + local_i[:, None] * sizes[struct][:, None] + (j - ptr_c[struct][:, None])
    else:  # more pairs than slots: the layers gather per slot
        pair_i = pair_j = torch.zeros(0, dtype=torch.long)
        pair = torch.zeros(N, M, dtype=torch.long)
    vec = vec.to(dtype)
    return Images(j=j.to(device), vec=vec.to(device), d2=(vec * vec).sum(-1).to(device), mask=mask.to(device),
                  shift=shift.to(device), pair=pair.to(device), pair_i=pair_i.to(device), pair_j=pair_j.to(device))


def sphere_images(lattice: Tensor, pos: Tensor, ptr: Tensor, cutoff: float, chunk: int = 1_000_000,
                  candidates: SphereCandidates | None = None) -> Images:
    """Every image within ``cutoff`` Å of each atom, the self image included, as padded slots (:class:`Images`
    in the dtype and on the device of ``pos``); see :func:`sphere_candidates`.

    ``candidates``: sphere candidates of this batch computed beforehand (e.g. in a DataLoader worker) for a
    radius >= ``cutoff``; used instead of searching the images again (same result, bit for bit).
    """
    if candidates is not None and candidates.radius >= cutoff:
        cand = candidates.within(cutoff)
    else:
        cand = sphere_candidates(lattice, pos, ptr, cutoff, chunk)
    return pack_images(cand, pos.dtype, pos.device)


def official_box_radius(sigma: Tensor, lattice_atoms: Tensor, cutoff_sigma: float = 3.5,
                        r_min: int = 2) -> Tensor:
    """Box half-widths of the released code: R_k(i,h) = max(R_min, ceil((c_ih + 0.01) / h_k)), c = 3.5 σ.

    Args:
        sigma: (N, H) Gaussian widths σ_ih in Å.
        lattice_atoms: (N, 3, 3) the lattice of each atom's structure.
    Returns:
        (N, H, 3) long.
    """
    inv_h = 1.0 / plane_spacings(lattice_atoms)  # (N, 3)
    c = cutoff_sigma * sigma + 0.01
    R = torch.ceil(c[:, :, None] * inv_h[:, None, :]).long()
    return R.clamp(min=r_min)


def box_images(lattice: Tensor, pos: Tensor, ptr: Tensor, R: Tensor) -> Images:
    """The released code's per-(atom, head) shift box, centred on n = 0 with raw coordinates.

    Args:
        R: (N, H, 3) long half-widths; the slots of a structure span the largest box of its atoms
            and heads, and ``mask`` (N, M, H) keeps |n_k| <= R_k(i, h).
    """
    device, dtype = pos.device, pos.dtype
    pair_i, pair_j, pair_off = pair_list(ptr.cpu())
    H = R.shape[1]
    per_atom: list[dict] = []
    Rc = R.cpu()
    for s in range(lattice.shape[0]):
        a0, a1 = int(ptr[s]), int(ptr[s + 1])
        n = a1 - a0
        Rmax = Rc[a0:a1].reshape(-1, 3).amax(0)
        shifts = lexicographic_shifts(Rmax).to(device)
        S = shifts.shape[0]
        tvec = shifts.to(dtype) @ lattice[s]  # (S, 3), the emulation's r + n @ T
        p = pos[a0:a1]
        jj = torch.arange(n, device=device).repeat_interleave(S)
        ss = torch.arange(S, device=device).repeat(n)
        for li in range(n):
            r = p - p[li]  # (n, 3)
            vec = (r[:, None, :] + tvec[None, :, :]).reshape(-1, 3)
            inside = (shifts.abs()[None, :, :] <= Rc[a0 + li].to(device)[:, None, :]).all(-1)  # (H, S)
            per_atom.append({
                "j": jj + a0,
                "vec": vec,
                "shift": shifts[ss],
                "pair": int(pair_off[s]) + li * n + jj,
                "self_pair": int(pair_off[s]) + li * n + li,
                "mask": inside[:, ss].T,
            })
    t = _pad(per_atom, pos.shape[0], device, dtype, mask_heads=H)
    d2 = (t["vec"] * t["vec"]).sum(-1)
    return Images(j=t["j"], vec=t["vec"], d2=d2, mask=t["mask"], shift=t["shift"], pair=t["pair"],
                  pair_i=pair_i.to(device), pair_j=pair_j.to(device))


def default_cutoff(r0: float = 1.4, b: float = 0.5, tail: float = 3.5) -> float:
    """Sphere radius covering ``tail`` × the largest possible σ (σ_max = r0 / sqrt(b) = 1.98 Å)."""
    return tail * r0 / math.sqrt(b)


#: default tail tolerance of the σ-following sphere (relative attention weight left out, equal q·k)
IMAGE_TOL = 1e-6


def tail_factor(tol: float = IMAGE_TOL) -> float:
    """k with P(χ₃ > k) = erfc(k/√2) + √(2/π) k exp(−k²/2) = ``tol``: the fraction of an isotropic 3-D Gaussian's
    mass beyond k σ (5.09 for 1e-5, 5.54 for 1e-6, 5.95 for 1e-7). Bisection, exact to 1e-12."""
    if not 0 < tol < 1:
        raise ValueError(f"image tolerance must be in (0, 1), got {tol!r}")

    def mass(k: float) -> float:
        return math.erfc(k / math.sqrt(2)) + math.sqrt(2 / math.pi) * k * math.exp(-k * k / 2)

    lo, hi = 0.0, 40.0  # mass is decreasing in k
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mass(mid) > tol else (lo, mid)
    return hi


#: the continuum bound P(χ₃ > k) is exceeded by the discrete sums of real lattices (a shell just outside R):
#: by up to 3.4× in a scan of σ ∈ [1, σ_max] over bcc Fe, fcc Al, Si, NaCl and 16 MP cells, so the radius is
#: chosen for tol / TAIL_MARGIN
TAIL_MARGIN = 5.0


def sphere_factor(tol: float = IMAGE_TOL) -> float:
    """The radius factor k of the σ-following sphere (R = k σ): :func:`tail_factor` (tol / TAIL_MARGIN),
    5.82 for tol = 1e-6."""
    return tail_factor(tol / TAIL_MARGIN)


def restrict(img: Images, keep: Tensor) -> Images:
    """The slots of ``img`` where ``keep`` (N, M) is True, in their order, re-padded (padding: the atom itself,
    distance 0, as :func:`sphere_images`). The cached unit vectors are carried over."""
    N = keep.shape[0]
    M = max(1, int(keep.sum(1).max()))
    order = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :M]
    mask = torch.gather(keep, 1, order)

    def take(t: Tensor) -> Tensor:
        idx = order if t.dim() == 2 else order[..., None].expand(-1, -1, t.shape[-1])
        return torch.gather(t, 1, idx)

    me = torch.arange(N, device=keep.device)[:, None]
    j = torch.where(mask, take(img.j), me)
    vec = take(img.vec) * mask[..., None]
    shift = take(img.shift) * mask[..., None]
    if img.pair_i.numel():  # padding points at the atom's own pair, as in sphere_images
        self_pair = torch.gather(img.pair, 1, torch.argmax((img.j == me).to(torch.int8), 1, keepdim=True))
        pair = torch.where(mask, take(img.pair), self_pair)
    else:
        pair = torch.zeros_like(j)
    out = Images(j=j, vec=vec, d2=(vec * vec).sum(-1), mask=mask, shift=shift, pair=pair, pair_i=img.pair_i,
                 pair_j=img.pair_j)
    if "unit" in img.__dict__:
        out.__dict__["unit"] = take(img.unit) * mask[..., None]
    return out


#: rounding of the pool radius of :class:`SpherePool`, Å
POOL_STEP = 0.5


def pool_radius(sigma_max: float, tol: float = IMAGE_TOL, step: float = POOL_STEP) -> float:
    """The largest radius a :class:`SpherePool` asks for when every σ is below ``sigma_max`` Å: the σ-following
    radius k · σ_max rounded up to ``step``, as the pool rounds it."""
    return math.ceil(sphere_factor(tol) * sigma_max / step + 1e-9) * step


class SpherePool:
    """Sphere images of one batch for per-atom radii that are known only layer by layer (σ-following sphere).

    The sphere is computed once at the largest radius asked for so far (rounded up to ``step`` Å, so that
    layers with similar σ share it), and each layer takes the slots within its atoms' radii
    (:func:`restrict`). The distance basis of the pool is computed once and gathered.

    Args:
        lattice: (B, 3, 3); pos: (N, 3); ptr: (B + 1,); dist_basis: the model's distance basis module.
        tol: tail tolerance (:func:`tail_factor`); step: rounding of the pool radius, Å.
        candidates: the batch's sphere candidates computed beforehand for a radius that covers every layer
            (:func:`pool_radius`), or None to search the images here.
    """

    def __init__(self, lattice: Tensor, pos: Tensor, ptr: Tensor, dist_basis, tol: float = IMAGE_TOL,
                 step: float = POOL_STEP, candidates: SphereCandidates | None = None):
        self.lattice, self.pos, self.ptr, self.dist_basis = lattice, pos, ptr, dist_basis
        self.candidates = candidates
        self.k = sphere_factor(tol)
        self.step = step
        self.radius = 0.0
        self.images: Images | None = None
        self.basis: Tensor | None = None

    def within(self, radius: Tensor) -> tuple[Images, Tensor]:
        """(N,) radii in Å → (images within each atom's radius, their (N, M, K) distance basis)."""
        r = radius.detach().to(torch.float64)
        need = float(r.max())
        if self.images is None or need > self.radius:
            with torch.no_grad(), torch.autocast(self.pos.device.type, enabled=False):
                self.radius = math.ceil(need / self.step + 1e-9) * self.step
                self.images = sphere_images(self.lattice, self.pos, self.ptr, self.radius,
                                            candidates=self.candidates)
                self.basis = self.dist_basis(self.images.d2.sqrt())
        img = self.images
        keep = img.mask & (img.d2.to(torch.float64) <= (r * r)[:, None].to(img.d2.device))
        if bool((keep == img.mask).all()):
            return img, self.basis
        with torch.no_grad():
            sub = restrict(img, keep)
            idx = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :sub.j.shape[1]]
            basis = torch.gather(self.basis, 1, idx[..., None].expand(-1, -1, self.basis.shape[-1]))
            basis = basis * sub.mask[..., None]
        return sub, basis
