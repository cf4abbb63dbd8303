"""Lattice frames (Yan et al., ICML 2024, as compared in Ito et al., ICLR 2025): axes from the shortest lattice
vectors."""

from __future__ import annotations

import torch
from torch import Tensor

from crystalframer.frames.base import FrameInput, FrameMethod, register_frame
from crystalframer.frames.ties import lattice_frame_set
from crystalframer.geometry.images import lexicographic_shifts, plane_spacings


def lattice_frame(lattice: Tensor, noise: float = 0.0) -> Tensor:
    """(3, 3) lattice (rows) → (3, 3) lattice frame, rows e1, e2, e3 (unit, not orthogonal, det > 0).

    e1: shortest non-zero lattice vector; e2: shortest one not parallel to e1 (1 − |cos| > 1e-5), signed so
    e1·e2 >= 0; e3: shortest one out of the (e1, e2) plane (|r̂·c| > 1e-5, c = e1 × e2 normalised), signed
    so e1·e3 >= 0; all three negated if e3·c < 0. Ties: first lattice point in lexicographic order of n,
    or the noise u ~ U(−½, ½)·noise (Å²) on the squared lengths.
    """
    reach = lattice.norm(dim=-1).max()
    R = torch.ceil(reach / plane_spacings(lattice)).long()
    n = lexicographic_shifts(R).to(lattice.device)
    pts = n.to(lattice.dtype) @ lattice
    d2 = (pts * pts).sum(-1)
    d2 = d2 + (torch.rand_like(d2) - 0.5) * noise if noise else d2
    nonzero = (n != 0).any(-1)
    unit = pts / pts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    inf = torch.tensor(float("inf"), dtype=d2.dtype, device=d2.device)

    e1 = unit[torch.where(nonzero, d2, inf).argmin()]
    cos1 = unit @ e1
    e2 = unit[torch.where(nonzero & (1 - cos1.abs() > 1e-5), d2, inf).argmin()]
    e2 = e2 * torch.where(e1 @ e2 < 0, -1.0, 1.0).to(e2.dtype)
    c = torch.cross(e1, e2, dim=-1)
    c = c / c.norm()
    e3 = unit[torch.where(nonzero & ((unit @ c).abs() > 1e-5), d2, inf).argmin()]
    e3 = e3 * torch.where(e1 @ e3 < 0, -1.0, 1.0).to(e3.dtype)
    frame = torch.stack([e1, e2, e3])
    return frame * torch.where(e3 @ c < 0, -1.0, 1.0).to(frame.dtype)


@register_frame
class LatticeFrame(FrameMethod):
    """Lattice frames: one per crystal, from its shortest lattice vectors.

    The ± ambiguity of each vector cancels through the sign rules, so for a generic lattice the frame is
    a function of the lattice alone. In lattices with several equally short vectors (cubic, tetragonal,
    hexagonal, ...), which one is taken depends on the basis given, so predictions change with the
    choice of unit cell (the weakness the CrystalFramer paper points out) under the ``"noise"`` and
    ``"first"`` tie policies. Under ``"average"`` the features are averaged over every tied choice (the
    orbit of the frame under the lattice's point group; 48 entries for a cubic lattice), which makes the
    frame set a function of the lattice alone, independent of the basis given and equivariant with rotation.
    """

    name = "lattice"
    equivariant = True
    cell_invariant = False  # a supercell has another lattice
    per_structure = True

    def forward(self, inp: FrameInput) -> Tensor | tuple[Tensor, Tensor]:
        H = inp.a.shape[1]
        mode = self.tie_mode(inp)
        if mode == "average":
            sets = [lattice_frame_set(T, cap=self.tie_cap) for T in inp.lattice]
            Tm = max(f.shape[0] for f, _ in sets)
            axes = inp.lattice.new_zeros(len(sets), Tm, 3, 3)
            wts = inp.lattice.new_zeros(len(sets), Tm)
            for b, (f, w) in enumerate(sets):
                axes[b, :f.shape[0]] = f
                wts[b, :f.shape[0]] = w
            return (axes[inp.batch][:, None].expand(-1, H, -1, -1, -1),
                    wts[inp.batch][:, None].expand(-1, H, -1))
        noise = inp.noise if mode == "noise" else 0.0
        frames = torch.stack([lattice_frame(T, noise) for T in inp.lattice])
        return frames[inp.batch][:, None].expand(-1, H, -1, -1)
