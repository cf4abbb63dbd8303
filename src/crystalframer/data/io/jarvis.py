"""JARVIS-Tools ``Atoms`` dicts (Choudhary et al., npj Comput. Mater. 6, 173 (2020)) → :class:`Crystal`."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from crystalframer.data.structures import Crystal, InvalidStructureError, to_crystal


def jarvis_atoms_to_crystal(atoms: Mapping[str, Any], id: str, targets: Sequence[float] | None = None,
                            strip_elements: bool = True) -> Crystal:
    """A jarvis ``Atoms`` dict (``lattice_mat`` rows Å, ``coords``, ``elements``, ``cartesian``) → Crystal.

    Reproduces ``Atoms(...).pymatgen_converter().cart_coords``: fractional coordinates are ``coords``
    (or ``coords @ inv(lattice_mat)`` when Cartesian) and positions = frac @ lattice_mat, no wrapping.
    """
    try:
        lat = np.asarray(atoms["lattice_mat"], dtype=np.float64)
        coords = np.asarray(atoms["coords"], dtype=np.float64)
        elements = list(atoms["elements"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidStructureError(id, f"not a jarvis atoms dict ({type(e).__name__}: {e})") from e
    if lat.shape != (3, 3):
        raise InvalidStructureError(id, f"lattice_mat must be 3x3, got shape {lat.shape}")
    coords = coords.reshape(-1, 3) if coords.size else np.zeros((0, 3))
    if len(elements) != len(coords):
        raise InvalidStructureError(id, f"{len(elements)} elements for {len(coords)} coordinates")
    if strip_elements:
        elements = [str(e).strip() for e in elements]
    if atoms.get("cartesian", False):
        try:
            frac = coords @ np.linalg.inv(lat)
        except np.linalg.LinAlgError as e:
            raise InvalidStructureError(id, "singular lattice (zero cell volume)") from e
    else:
        frac = coords
    return to_crystal({"lattice": lat, "cart_coords": frac @ lat, "species": elements}, id=id, targets=targets)
