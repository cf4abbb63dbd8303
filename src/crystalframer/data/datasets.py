"""Data sets of crystals: :class:`CrystalDataset`, :class:`DatasetSplits` and target statistics.

A :class:`CrystalDataset` is a list of validated :class:`~crystalframer.data.structures.Crystal` records
with aligned targets (``(n_targets,)`` float64 per crystal, NaN = missing label), the names of those
targets, the entries that could not be read (``errors``) and, optionally, a split label per crystal
("train", "val" or "test") taken from the input.

Splits. :meth:`CrystalDataset.split` uses the split labels when the data set has them, otherwise the seeded
random split of :func:`crystalframer.data.splits.split_indices`: test = the last ⌊f_test·n⌋ entries of the
permutation, val = the ⌊f_val·n⌋ before them, train = the rest (so no entry is lost; see
:func:`crystalframer.data.splits.official_split_indices` for the official rule that leaves the remainder
unused).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from crystalframer.data.batch import CrystalBatch, collate
from crystalframer.data.splits import DEFAULT_FRACTIONS, DEFAULT_SEED, SPLITS, normalize_split_label, split_indices
from crystalframer.data.structures import Crystal


class LoadError(NamedTuple):
    """One entry that could not be used: its position in the source, its id and why."""

    index: int
    id: str
    message: str


@dataclass
class TargetStats:
    """Per-target mean and population std (ddof 0) over the non-missing labels.

    Attributes:
        names: target names.
        mean, std: (n_targets,) float64 in the targets' units; NaN where a target has no label.
        count: (n_targets,) int64, labels used per target.
    """

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    def _safe(self) -> tuple[np.ndarray, np.ndarray]:
        # a constant or unlabelled target would divide by 0; normalise it by 1 instead
        mean = np.where(np.isfinite(self.mean), self.mean, 0.0)
        std = np.where(np.isfinite(self.std) & (self.std > 0), self.std, 1.0)
        return mean, std

    def normalize(self, y):
        """(…, n_targets) labels → (y − mean) / std (numpy array or torch tensor)."""
        mean, std = self._safe()
        return (y - _like(mean, y)) / _like(std, y)

    def denormalize(self, y):
        """Inverse of :meth:`normalize`: y · std + mean."""
        mean, std = self._safe()
        return y * _like(std, y) + _like(mean, y)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "count": self.count.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetStats:
        return cls(tuple(d["names"]), np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64),
                   np.asarray(d["count"], np.int64))


def _like(a: np.ndarray, y):
    if hasattr(y, "new_tensor"):  # torch tensor: same dtype and device
        return y.new_tensor(a)
    return a


def target_stats_of(y: np.ndarray, names: Sequence[str]) -> TargetStats:
    """NaN-aware mean and population std of an (n, n_targets) label array."""
    y = np.asarray(y, dtype=np.float64).reshape(-1, len(names))
    ok = ~np.isnan(y)
    count = ok.sum(axis=0).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, y, 0.0).sum(axis=0) / count
        dev = np.where(ok, y - mean, 0.0)
        std = np.sqrt((dev * dev).sum(axis=0) / count)  # population std (ddof 0): divide by N
    mean = np.where(count > 0, mean, np.nan)
    std = np.where(count > 0, std, np.nan)
    return TargetStats(tuple(names), mean, std, count)


class CrystalDataset(Dataset):
    """Validated crystals with aligned targets; ``dataset[i]`` is a :class:`Crystal`.

    Attributes:
        crystals: the crystals; ``crystals[i].targets`` is (n_targets,) float64 (NaN = missing) or None
            when the data set has no targets.
        target_names: names of the target columns, in order.
        errors: entries of the source that were skipped, as :class:`LoadError` (index, id, message).
        split_labels: per crystal "train" / "val" / "test", or None when the source had no split.
        name: a label for messages.
        from_cache: True when this object was read from the preprocessing cache.
    """

    def __init__(self, crystals: Sequence[Crystal], target_names: Sequence[str] = (),
                 errors: Iterable[Sequence[Any]] = (), split_labels: Sequence[str] | None = None,
                 name: str = "dataset"):
        self.crystals = list(crystals)
        self.target_names = tuple(str(t) for t in target_names)
        self.errors = [LoadError(int(e[0]), str(e[1]), str(e[2])) for e in errors]
        self.name = name
        self.from_cache = False
        self.cache_path: Path | None = None
        nt = len(self.target_names)
        for c in self.crystals:
            got = None if c.targets is None else len(c.targets)
            if (nt == 0 and got not in (None, 0)) or (nt > 0 and got != nt):
                raise ValueError(f"{name}: crystal {c.id!r} has {got} targets, expected {nt} "
                                 f"({', '.join(self.target_names) or 'none'})")
        if split_labels is not None:
            split_labels = [normalize_split_label(s) for s in split_labels]
            if len(split_labels) != len(self.crystals):
                raise ValueError(f"{name}: {len(split_labels)} split labels for {len(self.crystals)} crystals")
        self.split_labels: list[str] | None = split_labels

    # -- sequence protocol -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.crystals)

    def __getitem__(self, i: int) -> Crystal:
        return self.crystals[int(i)]

    def __iter__(self) -> Iterator[Crystal]:
        return iter(self.crystals)

    def __repr__(self) -> str:
        parts = [f"{len(self)} crystals", f"targets={list(self.target_names)}"]
        if self.split_labels is not None:
            counts = {s: self.split_labels.count(s) for s in SPLITS}
            parts.append("splits=" + "/".join(f"{s}:{counts[s]}" for s in SPLITS))
        if self.errors:
            parts.append(f"{len(self.errors)} skipped")
        return f"CrystalDataset({self.name!r}, {', '.join(parts)})"

    # -- views -------------------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.crystals]

    @property
    def targets(self) -> np.ndarray:
        """(n, n_targets) float64 labels (NaN = missing); (n, 0) when there are no targets."""
        nt = len(self.target_names)
        if nt == 0:
            return np.zeros((len(self), 0))
        return np.stack([np.asarray(c.targets, np.float64) for c in self.crystals]) if self.crystals \
            else np.zeros((0, nt))

    @property
    def num_atoms(self) -> np.ndarray:
        """(n,) int64 atoms per crystal."""
        return np.array([c.num_atoms for c in self.crystals], dtype=np.int64)

    def subset(self, indices: Iterable[int], name: str | None = None) -> CrystalDataset:
        """The crystals at ``indices`` (in that order), keeping their split labels; errors are kept."""
        idx = [int(i) for i in indices]
        labels = None if self.split_labels is None else [self.split_labels[i] for i in idx]
        out = CrystalDataset([self.crystals[i] for i in idx], self.target_names, self.errors, labels,
                             name or self.name)
        return out

    @classmethod
    def concat(cls, parts: Sequence[CrystalDataset], name: str | None = None) -> CrystalDataset:
        """Concatenate data sets with the same targets. Split labels survive only if every part has them."""
        if not parts:
            raise ValueError("nothing to concatenate")
        names = parts[0].target_names
        for p in parts[1:]:
            if p.target_names != names:
                raise ValueError(f"cannot concatenate data sets with targets {names} and {p.target_names}")
        labels = None
        if all(p.split_labels is not None for p in parts):
            labels = [s for p in parts for s in p.split_labels]
        return cls([c for p in parts for c in p.crystals], names, [e for p in parts for e in p.errors], labels,
                   name or "+".join(p.name for p in parts))

    # -- splits ------------------------------------------------------------------------------------
    def split(self, fractions: Sequence[float] | None = None, seed: int = DEFAULT_SEED, method: str = "auto",
              from_file: str | os.PathLike | None = None) -> DatasetSplits:
        """Split into train / val / test.

        Args:
            fractions: (train, val, test) for a random split; default (0.8, 0.1, 0.1).
            seed: seed of the random split (see :func:`split_indices`).
            method: "column" uses the split labels of the source; "random" a seeded permutation;
                "auto" (default) the labels when present and ``fractions`` is None, else random.
            from_file: a JSON file written by :meth:`DatasetSplits.save`; the split lists ids, which must
                all be present (and unique) in this data set.
        """
        n = len(self)
        if from_file is not None:
            saved = json.loads(Path(from_file).read_text())
            pos: dict[str, int] = {}
            for i, sid in enumerate(self.ids):
                if sid in pos:
                    raise ValueError(f"{self.name}: id {sid!r} is not unique; a split file needs unique ids")
                pos[sid] = i
            idx = {}
            for s in SPLITS:
                missing = [sid for sid in saved.get(s, []) if sid not in pos]
                if missing:
                    raise ValueError(f"{from_file}: {len(missing)} {s} ids are not in {self.name} "
                                     f"(first: {missing[:3]})")
                idx[s] = np.array([pos[sid] for sid in saved.get(s, [])], dtype=np.int64)
            return self._make_splits(idx, "file", saved.get("seed"), saved.get("fractions"))
        if method not in ("auto", "column", "random"):
            raise ValueError(f"method must be 'auto', 'column' or 'random', got {method!r}")
        use_column = method == "column" or (method == "auto" and fractions is None and self.split_labels is not None)
        if use_column:
            if self.split_labels is None:
                raise ValueError(f"{self.name}: no split labels; pass split_column= when loading, "
                                 "or use method='random'")
            lab = np.array(self.split_labels, dtype=object)
            idx = {s: np.nonzero(lab == s)[0].astype(np.int64) for s in SPLITS}
            return self._make_splits(idx, "column", None, None)
        fr = tuple(DEFAULT_FRACTIONS if fractions is None else fractions)
        return self._make_splits(split_indices(n, fr, seed), "random", seed, fr)

    def _make_splits(self, idx: dict[str, np.ndarray], method: str, seed, fractions) -> DatasetSplits:
        parts = {}
        for s in SPLITS:
            sub = self.subset(idx[s], name=f"{self.name}[{s}]")
            sub.split_labels = [s] * len(sub)
            parts[s] = sub
        return DatasetSplits(parts["train"], parts["val"], parts["test"], idx, method, seed,
                             None if fractions is None else tuple(fractions))

    # -- statistics and batching ---------------------------------------------------------------------
    def target_stats(self, split: str | None = "train") -> TargetStats:
        """Mean and population std of each target, ignoring NaN labels.

        Computed over the entries labelled ``split`` when the data set has split labels (so the full data
        set of a split source gives training-split statistics), otherwise over all entries: call it on the
        training subset (``ds.split().train.target_stats()`` or ``DatasetSplits.target_stats()``).
        ``split=None`` uses every entry.
        """
        if not self.target_names:
            raise ValueError(f"{self.name}: the data set has no targets")
        y = self.targets
        if split is not None and self.split_labels is not None:
            s = normalize_split_label(split)
            y = y[np.array([lab == s for lab in self.split_labels], dtype=bool)]
            if len(y) == 0:
                raise ValueError(f"{self.name}: no entry is labelled {s!r}; pass split=None to use every entry")
        return target_stats_of(y, self.target_names)

    @staticmethod
    def collate_fn(crystals: Sequence[Crystal]) -> CrystalBatch:
        """``DataLoader`` collate function: :func:`crystalframer.data.batch.collate` (float32)."""
        return collate(crystals)

    def dataloader(self, batch_size: int = 32, shuffle: bool = False, **kwargs: Any) -> DataLoader:
        """A ``torch.utils.data.DataLoader`` yielding :class:`CrystalBatch` objects."""
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate_fn, **kwargs)


@dataclass
class DatasetSplits:
    """Train / val / test subsets of one :class:`CrystalDataset`.

    Attributes:
        train, val, test: the subsets (each crystal labelled with its split).
        indices: split → int64 positions in the parent data set.
        method: "column", "random" or "file".
        seed, fractions: of a random split (None otherwise).
    """

    train: CrystalDataset
    val: CrystalDataset
    test: CrystalDataset
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    method: str = "random"
    seed: int | None = None
    fractions: tuple[float, ...] | None = None

    def __getitem__(self, name: str) -> CrystalDataset:
        return getattr(self, normalize_split_label(name))

    def items(self) -> list[tuple[str, CrystalDataset]]:
        return [(s, getattr(self, s)) for s in SPLITS]

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SPLITS}

    def target_stats(self) -> TargetStats:
        """Target statistics of the training split (for normalising every split)."""
        return self.train.target_stats()

    def save(self, path: str | os.PathLike) -> None:
        """Write the split as JSON (ids per split plus how it was made), for :meth:`CrystalDataset.split`."""
        doc = {"method": self.method, "seed": self.seed,
               "fractions": None if self.fractions is None else list(self.fractions)}
        doc.update({s: getattr(self, s).ids for s in SPLITS})
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
