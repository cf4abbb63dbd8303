"""Batching crystals into flat tensors (atoms of all structures concatenated)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from crystalframer.data.structures import Crystal


@dataclass
class CrystalBatch:
    """B crystals with N atoms in total.

    Attributes:
        lattice: (B, 3, 3) rows are lattice vectors, Å.
        pos: (N, 3) Cartesian positions, Å (as given, not wrapped).
        species: (N, 98) occupancy-weighted one-hot species vectors.
        batch: (N,) long, structure index of each atom.
        ptr: (B + 1,) long, atom offsets: atoms of structure s are ``ptr[s]:ptr[s+1]``.
        ids: B structure ids.
        y: optional (B, n_targets) targets in original units (NaN = missing).
        sphere: optional sphere images computed beforehand (``geometry.images.SphereCandidates``, on the CPU),
            e.g. by ``CrystalFramer.collate`` in a DataLoader worker; the model searches them itself otherwise.
    """

    lattice: Tensor
    pos: Tensor
    species: Tensor
    batch: Tensor
    ptr: Tensor
    ids: list[str] = field(default_factory=list)
    y: Tensor | None = None
    sphere: Any = None

    @property
    def num_graphs(self) -> int:
        return int(self.lattice.shape[0])

    @property
    def num_atoms(self) -> Tensor:
        """(B,) atoms per structure."""
        return self.ptr[1:] - self.ptr[:-1]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "CrystalBatch":
        """Move to ``device``; ``dtype`` casts the floating tensors (lattice, positions, species, y)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            out[f.name] = v
        return CrystalBatch(**out)

    def __len__(self) -> int:
        return self.num_graphs


def collate(crystals: Sequence[Crystal], dtype: torch.dtype = torch.float32) -> CrystalBatch:
    """Concatenate crystals into a :class:`CrystalBatch`.

    Coordinates and lattices are rounded to ``dtype`` exactly as the official loader does (float32).
    """
    if len(crystals) == 0:
        raise ValueError("cannot collate an empty list of crystals")
    counts = [c.num_atoms for c in crystals]
    ptr = torch.zeros(len(crystals) + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.long), 0)
    lattice = torch.from_numpy(np.stack([c.lattice for c in crystals])).to(dtype)
    pos = torch.from_numpy(np.concatenate([c.positions for c in crystals])).to(dtype)
    species = torch.from_numpy(np.concatenate([c.species for c in crystals])).to(dtype)
    batch = torch.repeat_interleave(torch.arange(len(crystals)), torch.tensor(counts))
    y = None
    if all(c.targets is not None for c in crystals):
        y = torch.from_numpy(np.stack([np.asarray(c.targets, np.float64) for c in crystals])).to(dtype)
    return CrystalBatch(lattice=lattice, pos=pos, species=species, batch=batch, ptr=ptr,
                        ids=[c.id for c in crystals], y=y)
