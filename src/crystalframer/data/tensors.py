"""Tensor-valued labels: reading them from tables, and checking that they are expressed in the frame of the
stored structure.

A tensor label (a dielectric tensor, an elastic tensor in Voigt notation) is stored in a table as nested
lists, a NumPy array, a monty/pymatgen array dict (``{"@class": "array", "data": ...}``) or their JSON /
Python-literal text. :func:`flatten_tensor_columns` turns each such column into flattened numeric columns
``name[i,j]`` (row-major, see :func:`crystalframer.geometry.tensors.column_names`), which the scalar
machinery (data sets, splits, batches, metrics) carries unchanged.
"""

from __future__ import annotations

import ast
import json
from typing import Any, Mapping, Sequence

import numpy as np

from crystalframer.geometry.tensors import column_names, n_columns, rotate, rotate_voigt, target_kind, target_shape


def tensor_value(v: Any, kind: str, what: str = "value") -> np.ndarray:
    """One label → float64 array of the kind's shape (all NaN when missing).

    Raises:
        ValueError: a value of another shape, or text that is not an array.
    """
    shape = target_shape(kind)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return np.full(shape, np.nan)
    if isinstance(v, str):
        text = v.strip()
        if not text or text.lower() in ("nan", "none", "null"):
            return np.full(shape, np.nan)
        try:
            v = json.loads(text)
        except json.JSONDecodeError:
            try:
                v = ast.literal_eval(text)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"{what} is not an array: {text[:60]!r}") from err
    if isinstance(v, Mapping) and "data" in v:  # monty's encoding of numpy arrays
        v = v["data"]
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not a numeric array") from err
    if a.shape != shape:
        raise ValueError(f"{what} has shape {a.shape}, expected {shape} for a {kind} target")
    return a


def flatten_tensor_columns(df: Any, shapes: Mapping[str, Any], on_error: str = "warn",
                           id_column: str | None = None) -> Any:
    """A DataFrame with each tensor column ``name`` of ``shapes`` replaced by flattened float columns.

    A target already stored as flattened columns (``eps[0,0]``, ``eps[0,1]``, ... all present, no ``eps``
    column) is kept as it is, its cells checked to be numbers. An empty cell (or ``None``/``nan``) is a missing
    label. A cell that cannot be read (not an array, another shape, a NaN inside, text in a flattened column):
    with ``on_error="warn"`` every column of that target becomes NaN (a missing label) with one warning; with
    ``"raise"`` a ``ValueError`` names the row (its ``id_column`` value, else its index) and the column.
    """
    import warnings

    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
    df = df.copy()
    ids = df[id_column].tolist() if id_column and id_column in df.columns else list(df.index)
    who = "id" if id_column and id_column in df.columns else "row"
    for name, shape in shapes.items():
        kind = target_kind(shape)
        if kind == "scalar":
            continue
        cols = column_names(name, kind)
        if name not in df.columns and all(c in df.columns for c in cols):
            for c in cols:  # already flattened: numbers (or empty) only
                vals = []
                for sid, v in zip(ids, df[c]):
                    try:
                        vals.append(float(tensor_value(v, "scalar")))
                    except ValueError:
                        msg = f"column {c!r} of {who} {sid!r} is not a number: {str(v)[:60]!r}"
                        if on_error == "raise":
                            raise ValueError(msg) from None
                        warnings.warn(f"{msg}; set missing", stacklevel=2)
                        vals.append(np.nan)
                df[c] = vals
            continue
        if name not in df.columns:
            columns = ", ".join(map(str, df.columns))
            raise ValueError(f"target {name!r} is not a column of the data, nor are its flattened columns "
                             f"{cols[0]} ... {cols[-1]} (columns: {columns})")
        rows, bad = [], []
        for sid, v in zip(ids, df[name]):
            what = f"column {name!r} of {who} {sid!r}"
            try:
                t = tensor_value(v, kind, what)
                if np.isnan(t).any() and not np.isnan(t).all():
                    raise ValueError(f"{what} has NaN components; give the whole tensor or leave the cell empty")
                rows.append(t.reshape(-1))
            except ValueError as err:
                if on_error == "raise":
                    raise ValueError(f"{err} (a {kind} {name!r} needs {n_columns(kind)} numbers per cell)") from None
                bad.append(str(err))
                rows.append(np.full(n_columns(kind), np.nan))
        if bad:
            warnings.warn(f"{len(bad)} value(s) of target {name!r} unreadable, set missing: {bad[0]}", stacklevel=2)
        flat = np.stack(rows) if rows else np.zeros((0, n_columns(kind)))
        df = df.drop(columns=[name])
        for k, c in enumerate(cols):
            df[c] = flat[:, k]
    return df


def expand_targets(targets: Sequence[str], shapes: Mapping[str, Any] | None) -> list[str]:
    """Target names → the flattened column names (scalars unchanged)."""
    shapes = shapes or {}
    unknown = sorted(set(shapes) - set(targets))
    if unknown:
        raise ValueError(f"target shapes given for {unknown}, which are not among the targets {list(targets)}")
    return [c for t in targets for c in column_names(t, target_kind(shapes.get(t)))]


# -- orientation check ----------------------------------------------------------------------------------


def cartesian_point_group(structure: Any, symprec: float = 1e-3) -> np.ndarray:
    """(n_ops, 3, 3) Cartesian rotation parts R of the space-group operations of a pymatgen Structure.

    With lattice vectors as the rows of L (pymatgen's convention, r = f L) and a fractional operation
    f' = W f (spglib, column vectors), the Cartesian operation is R = Lᵀ W L⁻ᵀ.
    """
    import spglib

    L = structure.lattice.matrix
    cell = (L, structure.frac_coords, [s.specie.Z for s in structure])
    sym = spglib.get_symmetry(cell, symprec=symprec)
    if sym is None:
        return np.eye(3)[None]
    W = np.unique(sym["rotations"], axis=0)
    return np.einsum("ji,njk,lk->nil", L, W, np.linalg.inv(L))


def symmetry_misfit(tensor: np.ndarray, kind: str, rotations: np.ndarray) -> float:
    """max over the operations R of ‖R·T − T‖ / ‖T‖ (0: T respects the point group in this frame)."""
    import torch

    t = torch.as_tensor(np.asarray(tensor, np.float64))
    R = torch.as_tensor(np.asarray(rotations, np.float64))
    kind = target_kind(kind)
    if kind == "6x6":
        rt = rotate_voigt(t.expand((len(R),) + t.shape), R)
    else:
        rt = rotate(t.expand((len(R),) + t.shape), R)
    norm = float(t.norm())
    if norm == 0:
        return 0.0
    return float((rt - t).flatten(1).norm(dim=1).max()) / norm


def orientation_report(structures: Sequence[Any], columns: Mapping[str, Sequence[Any]], kind: str,
                       symprec: float = 1e-3, threshold: float = 1e-2) -> dict[str, dict[str, Any]]:
    """Which tensor column is expressed in the Cartesian frame of the stored structures.

    For every structure the crystal's point-group operations (Cartesian) are applied to each column's tensor
    and the misfit ‖R·T − T‖/‖T‖ (max over operations) is measured; a tensor in the structure's frame has a
    misfit at the level of the DFT noise, one in another frame (e.g. a conventional standard cell's) a misfit
    of order 1 whenever the point group is non-trivial.

    Args:
        structures: pymatgen Structures.
        columns: {column name: tensors aligned with ``structures``} (None/NaN entries skipped).
        kind: the tensors' kind (``"3x3"``, ``"3x3sym"`` or ``"6x6"``).
        threshold: misfit above which a structure counts as misaligned.
    Returns:
        {column: {"median", "p90", "max", "misaligned" (count), "checked" (count with a non-trivial group),
        "misfit" (per-structure array, NaN where missing or the group is trivial)}}.
    """
    rots = [cartesian_point_group(s, symprec) for s in structures]
    out = {}
    for col, values in columns.items():
        mis = np.full(len(structures), np.nan)
        for k, (v, R) in enumerate(zip(values, rots)):
            if len(R) <= 1:
                continue
            t = tensor_value(v, kind, f"{col}[{k}]")
            if np.isnan(t).any():
                continue
            mis[k] = symmetry_misfit(t, kind, R)
        ok = mis[~np.isnan(mis)]
        out[col] = {"median": float(np.median(ok)) if ok.size else float("nan"),
                    "p90": float(np.quantile(ok, 0.9)) if ok.size else float("nan"),
                    "max": float(ok.max()) if ok.size else float("nan"),
                    "misaligned": int((ok > threshold).sum()), "checked": int(ok.size), "misfit": mis}
    return out
