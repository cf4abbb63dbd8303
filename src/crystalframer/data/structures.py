"""Crystal structures in, validated arrays out.

A :class:`Crystal` is the library's one structure record: lattice vectors (rows, Å), Cartesian positions
(Å), 98-dimensional species vectors (one-hot of Z, occupancy-weighted for disordered sites), an id and
optional targets. :func:`to_crystal` builds one from a pymatgen ``Structure``, an ASE ``Atoms``, a file
path (CIF, POSCAR/CONTCAR/``*.vasp``, extxyz, or anything ASE/pymatgen read) or a ``Structure`` dict,
and validates it: every problem raises :class:`InvalidStructureError` (a ``ValueError``) naming the
structure and the problem. A :class:`Crystal` built directly is validated the same way.

Unphysical but usable cells (a lattice given in nm where Å was meant, atoms closer than any real bond)
are accepted with a :class:`UnphysicalStructureWarning`; overlapping atoms are an error.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

N_ELEMENTS = 98
#: Two atoms (periodic images included) closer than this are rejected, in Å.
MIN_DISTANCE = 0.1
#: Nearest-neighbour distances below this (Å) are warned about. The shortest bond in any solid or molecule
#: is H–H in H2, 0.74 Å (CRC Handbook of Chemistry and Physics); 0.5 Å is well below every real one.
WARN_DISTANCE = 0.5
#: Densities above this (g/cm³) are warned about. The densest known solid at ambient pressure is osmium,
#: 22.59 g/cm³ (Arblaster, Platinum Metals Rev. 33, 14 (1989)); 30 g/cm³ leaves a wide margin, while
#: lengths given in nm instead of Å make a cell 1000 times too dense.
WARN_DENSITY = 30.0
#: ``on_error`` values accepted by every reader and by ``predict``.
ON_ERROR = ("raise", "skip")
#: g/mol per Å³ → g/cm³ (1 / (N_A · 1e-24)).
_AMU_PER_A3_TO_G_PER_CM3 = 1.0 / 0.602214076


class UnphysicalStructureWarning(UserWarning):
    """A structure that is valid but almost certainly not what was meant (density, bond lengths)."""


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

    def __post_init__(self) -> None:
        """Convert the fields to float64 arrays and validate them (raises :class:`InvalidStructureError`)."""
        self.id = str(self.id)
        self.lattice, self.positions, self.species, self.targets = check_crystal(
            self.lattice, self.positions, self.species, self.targets, self.id)

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


def _as_array(x: Any, what: str, structure_id: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidStructureError(structure_id, f"{what} is not an array of numbers ({type(x).__name__}: "
                                                  f"{str(x)[:60]!r})") from e


def check_crystal(lattice: Any, positions: Any, species: Any, targets: Any, structure_id: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The arrays of a :class:`Crystal` as float64, checked; the one validation every structure goes through.

    Shapes: lattice (3, 3) Å, positions (n, 3) Å, species (n, 98) occupancies in [0, 1] per element with a
    positive sum ≤ 1 per site, targets (k,) or None. Then :func:`validate_arrays` (volume, overlaps).
    """
    lattice = _as_array(lattice, "lattice", structure_id)
    positions = _as_array(positions, "coordinates", structure_id)
    species = _as_array(species, "species", structure_id)
    if positions.size == 0 and species.size == 0:
        raise InvalidStructureError(structure_id, "empty structure (no atoms)")
    if species.ndim != 2 or species.shape[1] != N_ELEMENTS:
        raise InvalidStructureError(structure_id, f"species must be (n, {N_ELEMENTS}) occupancy vectors, "
                                                  f"got shape {species.shape}")
    if positions.ndim == 2 and positions.shape[1] == 3 and species.shape[0] != positions.shape[0]:
        raise InvalidStructureError(structure_id, f"{species.shape[0]} species for {positions.shape[0]} "
                                                  "coordinates: every site needs one of each")
    if not np.all(np.isfinite(species)) or np.any(species < 0) or np.any(species > 1 + 1e-6):
        bad = int(np.nonzero(~(np.isfinite(species) & (species >= 0) & (species <= 1 + 1e-6)).all(axis=1))[0][0])
        raise InvalidStructureError(structure_id, f"site {bad}: occupancies must be finite numbers in [0, 1]")
    total = species.sum(axis=1)
    if np.any(total > 1 + 1e-6):
        bad = int(np.argmax(total > 1 + 1e-6))
        raise InvalidStructureError(structure_id, f"site {bad}: occupancies sum to {total[bad]:.6g} > 1")
    if np.any(total <= 0):
        bad = int(np.argmax(total <= 0))
        raise InvalidStructureError(structure_id, f"site {bad}: no species (occupancy sums to 0)")
    validate_arrays(lattice, positions, structure_id, species)
    if targets is not None:
        targets = np.atleast_1d(_as_array(targets, "targets", structure_id))
        if targets.ndim != 1:
            raise InvalidStructureError(structure_id, f"targets must be one number per target, got shape "
                                                      f"{targets.shape}")
    return lattice, positions, species, targets


def validate_arrays(lattice: np.ndarray, positions: np.ndarray, structure_id: str,
                    species: np.ndarray | None = None) -> None:
    """Check shapes, finiteness, cell volume and minimum interatomic distance (images included).

    Also warns (:class:`UnphysicalStructureWarning`) when two atoms are closer than
    :data:`WARN_DISTANCE` or, given ``species``, the density exceeds :data:`WARN_DENSITY`.
    """
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InvalidStructureError(structure_id, f"coordinates must be (n, 3), got shape {positions.shape}")
    if positions.shape[0] == 0:
        raise InvalidStructureError(structure_id, "empty structure (no atoms)")
    if lattice.shape != (3, 3):
        raise InvalidStructureError(structure_id, f"lattice must be (3, 3), got shape {lattice.shape}")
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
    i, j = pair
    what = "an atom and its own periodic image" if i == j else f"sites {i} and {j}"
    if dmin < MIN_DISTANCE:
        raise InvalidStructureError(
            structure_id, f"overlapping atoms: {what} are {dmin:.4f} Å apart (minimum {MIN_DISTANCE} Å)"
        )
    if dmin < WARN_DISTANCE:
        warnings.warn(f"structure {structure_id!r}: {what} are only {dmin:.3f} Å apart (no real bond is shorter "
                      f"than {WARN_DISTANCE} Å); are the lengths in Å?", UnphysicalStructureWarning, stacklevel=4)
    if species is not None:
        rho = density(lattice, species)
        if rho > WARN_DENSITY:
            warnings.warn(f"structure {structure_id!r}: density {rho:.4g} g/cm³ is above {WARN_DENSITY} g/cm³ "
                          "(osmium, the densest solid, is 22.6); are the lengths in Å (not nm)?",
                          UnphysicalStructureWarning, stacklevel=4)


def density(lattice: np.ndarray, species: np.ndarray) -> float:
    """Mass density in g/cm³ of a cell: Σ occupancy · atomic mass / volume (pymatgen's atomic masses)."""
    return float(species.sum(axis=0) @ _atomic_masses()) / abs(float(np.linalg.det(lattice))) \
        * _AMU_PER_A3_TO_G_PER_CM3


_MASSES: np.ndarray | None = None


def _atomic_masses() -> np.ndarray:
    """(98,) atomic masses in g/mol, Z = 1..98."""
    global _MASSES
    if _MASSES is None:
        from pymatgen.core.periodic_table import Element

        _MASSES = np.array([float(Element.from_Z(z).atomic_mass) for z in range(1, N_ELEMENTS + 1)])
    return _MASSES


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
    z0 = int(np.nonzero(np.all(shifts == 0, axis=1))[0][0])
    best, pair = math.inf, (0, 0)
    n = len(positions)
    frac = positions @ inv
    rows = max(1, 200_000 // (len(shifts) * n))  # (S, rows, n, 3) blocks of at most ~5 MB
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        f = frac[None, :, :] - frac[start:stop, None, :]  # (r, n, 3)
        f = f - np.round(f)
        d = (f[None] + shifts[:, None, None, :]) @ lattice  # (S, r, n, 3)
        d2 = np.einsum("srnk,srnk->srn", d, d)
        own = np.arange(start, stop)
        d2[z0, own - start, own] = np.inf  # an atom is not its own neighbour; its other images are
        k = int(np.argmin(d2))
        if d2.flat[k] < best:
            _, r, j = np.unravel_index(k, d2.shape)
            best, pair = float(d2.flat[k]), (start + int(r), int(j))
    return math.sqrt(best), pair


def to_crystal(obj: Any, id: str | None = None, targets: Iterable[float] | None = None) -> Crystal:
    """Build a validated :class:`Crystal` from a pymatgen ``Structure``, ASE ``Atoms``, path, dict or Crystal.

    A file holding several structures (a multi-block CIF) is refused here; :func:`read_structures` and
    the readers give one crystal per block.

    Raises:
        InvalidStructureError: the input cannot be read or fails validation; the message names it.
    """
    if isinstance(obj, Crystal):
        sid = id or obj.id
        tg = obj.targets if targets is None else targets
        return Crystal(lattice=obj.lattice, positions=obj.positions, species=obj.species, id=sid, targets=tg,
                       info=dict(obj.info))
    if isinstance(obj, (str, os.PathLike)):
        found = read_path(obj, id)
        if len(found) > 1:
            raise InvalidStructureError(found[0][0].split("#")[0], f"{obj} holds {len(found)} structures; "
                                        "read it with read_structures or load_dataset (one crystal per block)")
        id, obj = found[0]
    sid, lattice, positions, species_list = _read_any(obj, id)
    if isinstance(species_list, (str, bytes)) or not hasattr(species_list, "__len__"):
        raise InvalidStructureError(sid, f"species must be a list with one entry per site, got {species_list!r}")
    species = species_vectors(list(species_list), sid)
    return Crystal(lattice=lattice, positions=positions, species=species, id=sid, targets=targets)


def read_path(path: str | os.PathLike, id: str | None = None) -> list[tuple[str, Any]]:
    """Every structure of one file as (id, pymatgen ``Structure`` or ASE ``Atoms``).

    Ids: ``id`` (default the file name), or ``<id>#<k>`` with k = 0, 1, ... when the
    file holds several structures (the data blocks of a CIF, in file order).
    """
    path = Path(path)
    sid = id or path.name
    if not path.is_file():
        raise InvalidStructureError(sid, f"file not found: {path}")
    return block_ids(read_structure_file(path, sid), sid)


def block_ids(structs: list, sid: str) -> list[tuple[str, Any]]:
    """(id, structure) pairs: ``sid`` for a single structure, ``<sid>#<k>`` (k = 0, 1, ...) for several."""
    return [(sid, structs[0])] if len(structs) == 1 else [(f"{sid}#{k}", s) for k, s in enumerate(structs)]


def _read_any(obj: Any, id: str | None) -> tuple[str, Any, Any, Any]:
    if isinstance(obj, dict):
        sid = id or str(obj.get("id", obj.get("material_id", "structure")))
        if "lattice" in obj and "cart_coords" in obj and "species" in obj:
            return sid, obj["lattice"], obj["cart_coords"], obj["species"]
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
        return _read_atoms(obj, id)
    raise InvalidStructureError(id or cls, f"cannot read a structure from an object of type {cls}")


def _read_atoms(atoms: Any, id: str | None) -> tuple[str, np.ndarray, np.ndarray, list]:
    """ASE ``Atoms`` → (id, lattice, positions, species). Partial occupancies of an ASE-read CIF are kept.

    ASE's CIF reader (``ase.spacegroup.crystal``) stores them in ``info["occupancy"]`` = {kind: {symbol:
    occupancy}}, keyed by the crystallographic site of each atom, ``arrays["spacegroup_kinds"]`` (older
    ASE versions: the tags); every atom's own symbol must be among its site's species.
    """
    numbers = np.asarray(atoms.get_atomic_numbers())
    sid = id or atoms.info.get("id")
    if sid is None:
        from ase.data import chemical_symbols

        ok = bool(numbers.size) and bool(np.all((numbers >= 1) & (numbers < len(chemical_symbols))))
        sid = (atoms.get_chemical_formula() if ok else "") or "atoms"
    sid = str(sid)
    if not all(atoms.pbc):
        raise InvalidStructureError(sid, f"ASE Atoms must be periodic in all three directions, pbc={atoms.pbc}")
    bad = np.nonzero((numbers < 1) | (numbers > N_ELEMENTS))[0]
    if bad.size:
        raise InvalidStructureError(sid, f"site {int(bad[0])}: atomic number {int(numbers[bad[0]])} is not an "
                                         f"element with Z in 1..{N_ELEMENTS}")
    species: list = [int(z) for z in numbers]
    occ = atoms.info.get("occupancy")
    if occ is not None and not isinstance(occ, dict):
        raise InvalidStructureError(sid, f"atoms.info['occupancy'] must be a dict {{site kind: {{symbol: "
                                         f"occupancy}}}}, got {type(occ).__name__}")
    if occ:
        kinds = atoms.arrays.get("spacegroup_kinds")
        kinds = atoms.get_tags() if kinds is None else kinds
        symbols = atoms.get_chemical_symbols()
        for i, (kind, sym) in enumerate(zip(kinds, symbols)):
            site = occ.get(str(int(kind)), occ.get(int(kind)))
            if site is None or sym not in site:
                raise InvalidStructureError(sid, f"site {i} ({sym}): atoms.info['occupancy'] has no entry with "
                                                 f"{sym} for its site kind {int(kind)}; the occupancies do not "
                                                 "match the atoms")
            species[i] = site
    return sid, np.asarray(atoms.cell[:], dtype=np.float64), atoms.get_positions(), species


def _pmg_id(s) -> str:
    props = getattr(s, "properties", None) or {}
    return str(props.get("id", props.get("material_id", s.composition.reduced_formula)))


def read_structure_file(path: Path, structure_id: str) -> list:
    """Read every structure of a file with pymatgen (CIF, POSCAR, ...) or ASE (extxyz and the rest).

    Gzipped files are accepted. Returns a list of pymatgen ``Structure`` or ASE ``Atoms`` (several for a
    multi-block CIF, in file order).

    Raises:
        InvalidStructureError: unreadable, or a POSCAR without element names (VASP 4 format with no
            POTCAR beside it), whose species would be guessed.
    """
    name = path.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    errors = []
    try:
        if base.endswith(".cif") or base.endswith(".mcif"):
            return parse_cif_text(_read_text(path), structure_id)
        from pymatgen.core import Structure

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = Structure.from_file(str(path))
        check_poscar_warnings(caught, structure_id, path)
        return [s]
    except InvalidStructureError:
        raise
    except Exception as e:  # noqa: BLE001 - fall back to ASE, report both failures
        errors.append(f"pymatgen: {type(e).__name__}: {e}")
    try:
        from ase.io import read

        return [read(str(path))]
    except Exception as e:  # noqa: BLE001
        errors.append(f"ASE: {type(e).__name__}: {e}")
    raise InvalidStructureError(structure_id, f"could not read {path} ({'; '.join(errors)})")


def parse_cif_text(text: str, structure_id: str) -> list:
    """CIF text → pymatgen ``Structure`` of every data block holding one, cells kept as given."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns per odd tag; a failure raises
        structs = CifParser.from_str(text).parse_structures(primitive=False, on_error="raise")
    if not structs:
        raise InvalidStructureError(structure_id, "no structure in the CIF")
    return structs


def check_poscar_warnings(caught: list, structure_id: str, source: Any) -> None:
    """Raise where pymatgen had to invent element names for a POSCAR; re-issue its other warnings."""
    for w in caught:
        if "cannot be determined" in str(w.message):
            raise InvalidStructureError(structure_id, f"{source} gives no element names (VASP 4 POSCAR without a "
                                        "POTCAR beside it); add the line of element symbols above the counts")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _read_text(path: Path) -> str:
    if path.name.lower().endswith(".gz"):
        import gzip

        with gzip.open(path, "rt") as f:
            return f.read()
    return path.read_text()


def check_on_error(on_error: str) -> None:
    """Raise ValueError unless ``on_error`` is one of :data:`ON_ERROR`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def warn_duplicate_ids(ids: Sequence[str], source: str, stacklevel: int = 3) -> None:
    """One warning naming the ids that occur more than once (outputs keyed by id would mix them up)."""
    seen: set[str] = set()
    dup: dict[str, None] = {}
    for i in ids:
        if i in seen:
            dup[i] = None
        seen.add(i)
    if dup:
        names = list(dup)
        warnings.warn(f"{source}: {len(names)} duplicate id(s): {', '.join(map(repr, names[:10]))}"
                      f"{' ...' if len(names) > 10 else ''}", UserWarning, stacklevel=stacklevel)


def as_structure_list(structures: Any) -> list:
    """One structure or an iterable of them → a list; names the problem for None and non-structures."""
    if structures is None:
        raise TypeError("no structures given (None); pass a structure, a file path or a list of them")
    if isinstance(structures, (str, os.PathLike, dict, Crystal)) or hasattr(structures, "sites") or (
            hasattr(structures, "get_positions") and hasattr(structures, "cell")):
        return [structures]
    try:
        return list(structures)
    except TypeError:
        raise TypeError(f"cannot read structures from an object of type {type(structures).__name__}; pass "
                        "pymatgen Structures, ASE Atoms, file paths, structure dicts or Crystals") from None


def read_structures(items: Any, on_error: str = "raise", ids: Sequence[str] | None = None):
    """Convert one structure or many (file paths give one crystal per structure in the file).

    ``on_error="skip"`` reports bad ones and keeps the rest; any other value than "raise" or "skip" is
    a ValueError. Duplicate ids are warned about once.

    Returns (crystals, errors) where errors is a list of (index, id, message).
    """
    check_on_error(on_error)
    items = as_structure_list(items)
    if ids is not None and len(ids) != len(items):
        raise ValueError(f"{len(ids)} ids for {len(items)} structures")
    crystals, errors = [], []

    def fail(k: int, e: InvalidStructureError) -> None:
        if on_error == "raise":
            raise e
        errors.append((k, e.structure_id, str(e)))

    for k, obj in enumerate(items):
        sid = None if ids is None else str(ids[k])
        try:
            parts = read_path(obj, sid) if isinstance(obj, (str, os.PathLike)) else [(sid, obj)]
        except InvalidStructureError as e:
            fail(k, e)
            continue
        for part_id, part in parts:  # one crystal per block of a file; a bad block loses nothing else
            try:
                crystals.append(to_crystal(part, id=part_id))
            except InvalidStructureError as e:
                fail(k, e)
    warn_duplicate_ids([c.id for c in crystals], "structures")
    return crystals, errors
