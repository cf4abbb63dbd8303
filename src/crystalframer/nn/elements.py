"""Fixed element descriptors for the atom embedding.

A learned one-hot embedding knows an element only from the training rows that contain it. With a few hundred
structures (Matbench ``matbench_jdft2d``: 636) many elements appear a handful of times, so the model cannot
transfer what it learned about Zr to Hf or Y. Composition models (Magpie, Ward et al., npj Comput. Mater.
2016; MODNet, De Breuck et al., npj Comput. Mater. 2021) and CGCNN's atom features (Xie & Grossman, PRL 2018)
describe an element by tabulated properties instead. :func:`element_property_table` builds such a table from
pymatgen's periodic-table data; :class:`~crystalframer.nn.model.CrystalFramer` adds a linear map of it to the
learned embedding when ``element_features=True``.
"""

from __future__ import annotations

import math
import warnings

import torch

#: Column names of :func:`element_property_table`, in order.
PROPERTY_NAMES = (
    "Z", "row", "group", "mendeleev_no", "atomic_mass", "X", "atomic_radius", "atomic_radius_calculated",
    "ionization_energy", "electron_affinity", "molar_volume", "melting_point", "is_metal",
    "block_s", "block_p", "block_d", "block_f", "valence_s", "valence_p", "valence_d", "valence_f",
)


def _valence_counts(el) -> tuple[float, float, float, float]:
    """Electrons in the outermost s and p shells, the (n-1) d and the (n-2) f shells (Magpie's NsValence ...)."""
    shells = el.full_electronic_structure
    n_max = max(n for n, _, _ in shells)
    counts = {"s": 0.0, "p": 0.0, "d": 0.0, "f": 0.0}
    for n, orb, k in shells:
        if (orb in "sp" and n == n_max) or (orb == "d" and n == n_max - 1) or (orb == "f" and n == n_max - 2):
            counts[orb] += k
    return counts["s"], counts["p"], counts["d"], counts["f"]


def _row(z: int) -> list[float]:
    from pymatgen.core import Element

    el = Element.from_Z(z)

    def num(name: str) -> float:
        try:
            v = getattr(el, name)
        except (AttributeError, KeyError, ValueError, TypeError):
            return math.nan
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    block = str(el.block)
    return [float(z), num("row"), num("group"), num("mendeleev_no"), num("atomic_mass"), num("X"),
            num("atomic_radius"), num("atomic_radius_calculated"), num("ionization_energy"),
            num("electron_affinity"), num("molar_volume"), num("melting_point"), float(bool(el.is_metal)),
            *(float(block == b) for b in "spdf"), *_valence_counts(el)]


def element_property_table(n_elements: int = 98) -> torch.Tensor:
    """(n_elements, P) standardised element properties (row k: Z = k + 1; columns :data:`PROPERTY_NAMES`).

    Each column is shifted and scaled to mean 0 and standard deviation 1 over the elements; a property pymatgen
    lacks for an element (e.g. the electron affinity of some noble gases) gets the column mean, i.e. 0.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every missing property
        t = torch.tensor([_row(z) for z in range(1, n_elements + 1)], dtype=torch.float64)
    known = ~torch.isnan(t)
    mean = torch.where(known, t, 0.0).sum(0) / known.sum(0).clamp(min=1)
    t = torch.where(known, t, mean)
    std = t.std(0)
    return ((t - mean) / torch.where(std > 0, std, 1.0)).float()
