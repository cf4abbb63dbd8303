"""Batches: crystals as flat tensors (atoms of all structures concatenated) and ECN supercell graphs.

The networks import these types only; building the batches is the data layer's job (:func:`collate` here,
:mod:`crystalframer.data.transforms.ecn` for ECN).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from crystalframer.data.structures import Crystal


def _moved(batch: Any, device, dtype: torch.dtype | None) -> Any:
    """A copy of a batch dataclass with its tensors on ``device``; ``dtype`` casts the floating ones only."""
    out = {}
    for f in fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, Tensor):
            v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
        out[f.name] = v
    return type(batch)(**out)


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
        return _moved(self, device, dtype)

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


@dataclass
class ECNBatch:
    """B supercell graphs with N nodes and E edges in total (self-loops included when requested).

    Attributes:
        species: (N, 98) species vector of each node (its unit-cell atom's).
        cell: (N,) long cell index c ∈ 0..7 of each node.
        atom: (N,) long batch-global unit-cell atom id (nodes of one atom share it across the 8 cells).
        hubbard: (B,) Hubbard-U flag per structure.
        batch: (N,) long structure index of each node.
        ptr: (B + 1,) long node offsets.
        edge_src, edge_dst: (E,) long batch-global node ids (message src → dst).
        edge_dist: (E,) distances, Å (0 for self-loops).
        edge_identity: (E,) bool, both ends are images of the same unit-cell atom (self-loops included).
        ids: B structure ids.
        y: optional (B, n_targets) targets in original units (NaN = missing).
    """

    species: Tensor
    cell: Tensor
    atom: Tensor
    hubbard: Tensor
    batch: Tensor
    ptr: Tensor
    edge_src: Tensor
    edge_dst: Tensor
    edge_dist: Tensor
    edge_identity: Tensor
    ids: list[str] = field(default_factory=list)
    y: Tensor | None = None

    @property
    def num_graphs(self) -> int:
        return int(self.ptr.shape[0] - 1)

    @property
    def num_nodes(self) -> int:
        return int(self.cell.shape[0])

    def __len__(self) -> int:
        return self.num_graphs

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ECNBatch":
        """Move to ``device``; ``dtype`` casts the floating tensors (species, hubbard, distances, y)."""
        return _moved(self, device, dtype)
