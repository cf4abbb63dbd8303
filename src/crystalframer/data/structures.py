"""Crystal structures in, validated arrays out.

A :class:`Crystal` is the library's one structure record: lattice vectors (rows, Å), Cartesian positions
(Å), 98-dimensional species vectors (one-hot of Z, occupancy-weighted for disordered sites), an id and
optional targets. :func:`to_crystal` builds one from a pymatgen ``Structure``, an ASE ``Atoms``, a file
path (CIF, POSCAR/CONTCAR/``*.vasp``, extxyz, or anything ASE/pymatgen read) or a ``Structure`` dict,
and validates it: every problem raises :class:`InvalidStructureError` (a ``ValueError``) naming the
structure and the problem.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

N_ELEMENTS = 98
#: Two atoms (periodic images included) closer than this are rejected, in Å.
MIN_DISTANCE = 0.1


class InvalidStructureError(ValueError):
    """A structure that cannot be used. The message names the structure and the problem."""

    def __init__(self, structure_id: str, problem: str):
        self.structure_id = structure_id
        self.problem = problem
        super().__init__(f"structure {structure_id!r}: {problem}")


@dataclass
class Crystal:
    """One validated crystal.

    Attributes:
        lattice: (3, 3) float64, rows are the lattice vectors l1, l2, l3, in Å.
        positions: (n, 3) float64 Cartesian coordinates in Å, as given (not wrapped).
        species: (n, 98) float64; row i is Σ occupancy · onehot(Z − 1) of site i.
        id: a name used in every message and output.
        targets: optional (n_targets,) float64 labels (NaN marks a missing label).
    """

    lattice: np.ndarray
    positions: np.ndarray
    species: np.ndarray
    id: str = "structure"
    targets: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def atomic_numbers(self) -> np.ndarray:
        """Majority element of each site (Z), for display and for ordered structures."""
        return np.argmax(self.species, axis=1) + 1

    def to_pymatgen(self):
        """Return a pymatgen ``Structure`` (disordered sites keep their occupancies)."""
        from pymatgen.core import Composition, Lattice, Structure

        comps = []
        for row in self.species:
            nz = np.nonzero(row)[0]
            comps.append(Composition({int(z) + 1: float(row[z]) for z in nz}))
        return Structure(Lattice(self.lattice), comps, self.positions, coords_are_cartesian=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (atomic numbers only where every site is ordered)."""
        return {
            "id": self.id,
            "lattice": self.lattice.tolist(),
            "cart_coords": self.positions.tolist(),
            "species_vectors": {int(i): {int(z) + 1: float(v) for z, v in enumerate(row) if v}
                                for i, row in enumerate(self.species)},
            "targets": None if self.targets is None else self.targets.tolist(),
        }


def species_vectors(species: Sequence[Any], structure_id: str) -> np.ndarray:
    """Species → (n, 98) occupancy-weighted one-hot vectors.

    ``species`` items may be atomic numbers, element symbols, pymatgen ``Element``/``Species``, or
    mappings {species: occupancy} (pymatgen ``Composition`` of a disordered site).
    """
    out = np.zeros((len(species), N_ELEMENTS), dtype=np.float64)
    for i, sp in enumerate(species):
        items = sp.items() if hasattr(sp, "items") else [(sp, 1.0)]
        for s, occ in items:
            z = _atomic_number(s, structure_id, i)
            occ = float(occ)
            if not math.isfinite(occ) or occ < 0:
                raise InvalidStructureError(structure_id, f"site {i}: invalid occupancy {occ!r} for {s}")
            out[i, z - 1] += occ
        total = out[i].sum()
        if total > 1.0 + 1e-6:
            raise InvalidStructureError(structure_id, f"site {i}: occupancies sum to {total:.6g} > 1")
        if total <= 0:
            raise InvalidStructureError(structure_id, f"site {i}: no species (occupancy sums to 0)")
    return out


def _atomic_number(s: Any, structure_id: str, site: int) -> int:
    z = None
    if isinstance(s, (int, np.integer)):
        z = int(s)
    elif hasattr(s, "Z"):
        try:  # pymatgen Element / Species; DummySpecies raises or gives Z = 0
            z = int(s.Z)
        except Exception:  # noqa: BLE001 - pymatgen raises several types for dummies
            z = None
    elif isinstance(s, str):
        from pymatgen.core.periodic_table import Element

        sym = "".join(ch for ch in s if ch.isalpha())
        try:
            z = int(Element(sym).Z)
        except (ValueError, KeyError):
            z = None
    if z is None or not 1 <= z <= N_ELEMENTS:
        raise InvalidStructureError(
            structure_id, f"site {site}: species {s!s} is not an element with Z in 1..{N_ELEMENTS}"
        )
    return z


def validate_arrays(lattice: np.ndarray, positions: np.ndarray, structure_id: str) -> None:
    """Check shapes, finiteness, cell volume and minimum interatomic distance (images included)."""
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InvalidStructureError(structure_id, f"positions must be (n, 3), got {positions.shape}")
    if positions.shape[0] == 0:
        raise InvalidStructureError(structure_id, "empty structure (no atoms)")
    if lattice.shape != (3, 3):
        raise InvalidStructureError(structure_id, f"lattice must be (3, 3), got {lattice.shape}")
    if not np.all(np.isfinite(lattice)):
        raise InvalidStructureError(structure_id, "lattice contains NaN or inf")
    if not np.all(np.isfinite(positions)):
        bad = int(np.nonzero(~np.isfinite(positions).all(axis=1))[0][0])
        raise InvalidStructureError(structure_id, f"coordinates of site {bad} contain NaN or inf")
    det = float(np.linalg.det(lattice))
    scale = float(np.prod(np.linalg.norm(lattice, axis=1)))
    if scale <= 0 or abs(det) <= 1e-8 * scale:
        raise InvalidStructureError(structure_id, f"zero cell volume ({det:.3g} Å^3): lattice vectors are degenerate")
    if det < 0:
        raise InvalidStructureError(
            structure_id,
            f"negative cell volume ({det:.6g} Å^3): the lattice is left-handed; swap two lattice vectors",
        )
    dmin, pair = min_distance(lattice, positions)
    if dmin < MIN_DISTANCE:
        i, j = pair
        what = "an atom and its own periodic image" if i == j else f"sites {i} and {j}"
        raise InvalidStructureError(
            structure_id, f"overlapping atoms: {what} are {dmin:.4f} Å apart (minimum {MIN_DISTANCE} Å)"
        )


def min_distance(lattice: np.ndarray, positions: np.ndarray, reach: float = 1.0) -> tuple[float, tuple[int, int]]:
    """Smallest distance (Å) between two distinct points of the periodic crystal within ``reach``.

    Returns (distance, (i, j)); distance is ``inf`` if no two points are closer than ``reach``.
    Differences are reduced to the nearest image first, so the result does not depend on which
    periodic image of each atom was given.
    """
    from crystalframer.geometry.images import shift_range

    inv = np.linalg.inv(lattice)
    rng = [np.arange(-r, r + 1) for r in shift_range(lattice, reach)]
    shifts = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    zero = np.all(shifts == 0, axis=1)
    best, pair = math.inf, (0, 0)
    n = len(positions)
    for i in range(n):
        f = (positions - positions[i]) @ inv
        f = f - np.round(f)
        d = (f[None, :, :] + shifts[:, None, :]) @ lattice  # (S, n, 3)
        d2 = np.einsum("snk,snk->sn", d, d)
        d2[zero, i] = np.inf  # an atom is not its own neighbour; its other images are
        k = int(np.argmin(d2))
        if d2.flat[k] < best:
            best, pair = float(d2.flat[k]), (i, k % n)
    return math.sqrt(best), pair


def to_crystal(obj: Any, id: str | None = None, targets: Iterable[float] | None = None) -> Crystal:
    """Build a validated :class:`Crystal` from a pymatgen ``Structure``, ASE ``Atoms``, path, dict or Crystal.

    Raises:
        InvalidStructureError: the input cannot be read or fails validation; the message names it.
    """
    if isinstance(obj, Crystal):
        c = obj
        sid = id or c.id
        lattice, positions, species = c.lattice, c.positions, c.species
        tg = c.targets if targets is None else targets
    else:
        sid, lattice, positions, species_list = _read_any(obj, id)
        tg = targets
        species = species_vectors(species_list, sid)
    lattice = np.asarray(lattice, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3) if np.size(positions) else np.zeros((0, 3))
    validate_arrays(lattice, positions, sid)
    tarr = None if tg is None else np.atleast_1d(np.asarray(tg, dtype=np.float64))
    return Crystal(lattice=lattice, positions=positions, species=np.asarray(species, np.float64), id=sid,
                   targets=tarr)


def _read_any(obj: Any, id: str | None) -> tuple[str, np.ndarray, np.ndarray, list]:
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        sid = id or path.name
        if not path.exists():
            raise InvalidStructureError(sid, f"file not found: {path}")
        obj = read_structure_file(path, sid)
        return _read_any(obj, sid)
    if isinstance(obj, dict):
        sid = id or str(obj.get("id", obj.get("material_id", "structure")))
        if "lattice" in obj and "cart_coords" in obj and "species" in obj:
            lat = np.asarray(obj["lattice"], dtype=np.float64)
            return sid, lat, np.asarray(obj["cart_coords"], dtype=np.float64), list(obj["species"])
        try:
            from pymatgen.core import Structure

            obj = Structure.from_dict(obj)
        except Exception as e:  # noqa: BLE001 - report any parse failure with the id
            raise InvalidStructureError(sid, f"not a pymatgen Structure dict ({type(e).__name__}: {e})") from e
        return _read_any(obj, sid)
    cls = type(obj).__name__
    if hasattr(obj, "lattice") and hasattr(obj, "sites"):  # pymatgen Structure
        sid = id or _pmg_id(obj)
        species = [site.species for site in obj.sites]
        return sid, np.asarray(obj.lattice.matrix), np.asarray(obj.cart_coords), species
    if hasattr(obj, "get_positions") and hasattr(obj, "cell"):  # ASE Atoms
        sid = id or str(obj.info.get("id", obj.get_chemical_formula() or "atoms"))
        if not all(obj.pbc):
            raise InvalidStructureError(sid, f"ASE Atoms must be periodic in all three directions, pbc={obj.pbc}")
        occ = obj.info.get("occupancy")  # ASE stores CIF partial occupancies here: {site: {sym: occ}}
        tags = obj.get_tags()
        if occ:
            species = [occ.get(str(t), occ.get(t, {sym: 1.0})) for t, sym in zip(tags, obj.get_chemical_symbols())]
        else:
            species = list(obj.get_atomic_numbers())
        return sid, np.asarray(obj.cell[:], dtype=np.float64), obj.get_positions(), species
    raise InvalidStructureError(id or cls, f"cannot read a structure from an object of type {cls}")


def _pmg_id(s) -> str:
    props = getattr(s, "properties", None) or {}
    return str(props.get("id", props.get("material_id", s.composition.reduced_formula)))


def read_structure_file(path: Path, structure_id: str):
    """Read one structure file with pymatgen (CIF, POSCAR, ...) or ASE (extxyz and the rest).

    Gzipped files are accepted. Returns a pymatgen ``Structure`` or ASE ``Atoms``.
    """
    name = path.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    errors = []
    try:
        from pymatgen.core import Structure

        if base.endswith(".cif") or base.endswith(".mcif"):
            import warnings

            from pymatgen.io.cif import CifParser

            text = _read_text(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parser = CifParser.from_str(text)
                structs = parser.parse_structures(primitive=False, on_error="raise")
            if not structs:
                raise ValueError("no structure in CIF")
            return structs[0]
        return Structure.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - fall back to ASE, report both failures
        errors.append(f"pymatgen: {type(e).__name__}: {e}")
    try:
        from ase.io import read

        return read(str(path))
    except Exception as e:  # noqa: BLE001
        errors.append(f"ASE: {type(e).__name__}: {e}")
    raise InvalidStructureError(structure_id, f"could not read {path} ({'; '.join(errors)})")


def _read_text(path: Path) -> str:
    if path.name.lower().endswith(".gz"):
        import gzip

        with gzip.open(path, "rt") as f:
            return f.read()
    return path.read_text()


def read_structures(items: Iterable[Any], on_error: str = "raise", ids: Sequence[str] | None = None):
    """Convert many inputs. ``on_error="skip"`` reports bad ones and keeps the rest.

    Returns (crystals, errors) where errors is a list of (index, id, message).
    """
    crystals, errors = [], []
    for k, obj in enumerate(items):
        try:
            crystals.append(to_crystal(obj, id=None if ids is None else ids[k]))
        except InvalidStructureError as e:
            if on_error == "raise":
                raise
            errors.append((k, e.structure_id, str(e)))
    return crystals, errors
