"""Data for training: resolving a data description into train/val/test crystals, samplers and loaders.

Sharding. Every rank (DDP) builds the same epoch permutation (seeded by ``seed + epoch``) and takes every
``world_size``-th entry, starting at its rank. With the global batch B split into B/world per rank, the
k-th global batch is ``perm[kB:(k+1)B]`` whatever the number of ranks, so a run on 2 ranks takes the same
optimizer steps as a run on 1 rank with the same global batch (up to float reduction order). Validation
and test sets are sharded without padding, so no structure is counted twice in the metrics.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from crystalframer.data.structures import Crystal

__all__ = ["DataSpec", "Splits", "EpochShardSampler", "ShardSampler", "CrystalDataModule", "resolve_data",
           "SHARED_UNITS", "ListDataset", "select_targets", "check_labels", "data_digest", "load_source",
           "column_units"]

#: Largest finite float32: targets beyond it become inf in the model's float32 arithmetic.
FLOAT32_MAX = float(np.finfo(np.float32).max)

#: Units of the natural targets of the shared data sets (written into checkpoints and CSV headers).
SHARED_UNITS: dict[str, str] = {
    "heat_all": "eV", "heat_ref": "eV", "dir_gap": "eV", "ind_gap": "eV", "prop": "K",
    "energy_per_atom": "eV/atom", "formation_energy_per_atom": "eV/atom", "band_gap": "eV",
    "e_above_hull": "eV/atom", "K_VRH": "GPa", "G_VRH": "GPa", "formation_energy": "eV/atom",
    "formation_energy_peratom": "eV/atom", "e_form": "eV/atom", "bandgap": "eV", "opt_bandgap": "eV",
    "mbj_bandgap": "eV", "ehull": "eV/atom", "total_energy": "eV/atom", "delta_e": "eV/atom",
    "stability": "eV/atom", "bulk_modulus": "log(GPa)", "shear_modulus": "log(GPa)",
    "elastic_tensor": "GPa", "elastic_tensor_original": "GPa",
}


class ListDataset(torch.utils.data.Dataset):
    """A list of crystals as a map-style dataset."""

    def __init__(self, crystals: Sequence[Crystal]):
        self.crystals = list(crystals)

    def __len__(self) -> int:
        return len(self.crystals)

    def __getitem__(self, i: int) -> Crystal:
        return self.crystals[int(i)]


@dataclass
class DataSpec:
    """Where the data comes from (JSON-able; stored in the run's config).

    Exactly one of:
        dataset + root: a shared data set (``crystalframer.data.sources.shared.SHARED_SETS``), e.g. perov_5.
        source: a file or folder for ``crystalframer.data.io.load.load_dataset`` (split by its split
            column when it has one, else randomly with ``split_fractions`` and ``split_seed``).
        train (+ val, test): one file or folder per split.

    Attributes:
        targets: target names (None: the set's natural targets).
        units: units per target (None: known units of the shared sets, else empty).
        limit: keep at most this many structures of each split (quick runs and tests).
        split_fractions, split_seed: random split of a single ``source`` without split labels.
        split_file: a JSON split (ids per split) written by ``DatasetSplits.save``.
        load_options: extra keyword arguments for ``load_dataset``.
        binarize: {target: threshold}: replace the target by the 0/1 label ``value > threshold`` (missing
            stays missing), named ``"<target>><threshold>"``, for classification (``loss: bce``); e.g.
            ``{"band_gap": 0.0}`` labels non-metals 1 and metals 0.
        target_shapes: {target: shape} for vector/tensor targets (``"3"``, ``"3x3"``, ``"3x3sym"``, ``"6x6"``;
            see :mod:`crystalframer.geometry.tensors`), e.g. ``{"e_total": "3x3sym"}``; their columns hold
            arrays and become flattened columns ``e_total[i,j]``. Needs ``targets``.
    """

    dataset: str | None = None
    root: str | None = None
    source: str | None = None
    train: str | None = None
    val: str | None = None
    test: str | None = None
    targets: list[str] | None = None
    units: list[str] | None = None
    limit: int | None = None
    split_fractions: list[float] | None = None
    split_seed: int = 123
    split_file: str | None = None
    load_options: dict[str, Any] = field(default_factory=dict)
    binarize: dict[str, float] | None = None
    target_shapes: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.targets is not None:
            if isinstance(self.targets, str):
                self.targets = [self.targets]
            dup = sorted({t for t in self.targets if list(self.targets).count(t) > 1})
            if dup:
                raise ValueError(f"targets {list(self.targets)} name {dup} more than once")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ValueError(f"limit must be a whole number >= 1, got {self.limit!r}")
        for t, thr in (self.binarize or {}).items():
            _check_threshold(t, thr)
        if self.target_shapes:
            from crystalframer.data.tensors import expand_targets
            from crystalframer.geometry.tensors import target_kind

            if not self.targets:
                raise ValueError(f"target shapes {self.target_shapes} need the targets named (--targets)")
            self.target_shapes = {str(k): target_kind(v) for k, v in self.target_shapes.items()}
            expand_targets(self.targets, self.target_shapes)  # every shaped target must be a target
            if self.binarize:
                raise ValueError("binarize applies to scalar targets only, not with target shapes")

    @property
    def columns(self) -> list[str] | None:
        """The label columns: the targets, with vector/tensor targets flattened (``e_total[0,1]`` ...)."""
        if self.targets is None or not self.target_shapes:
            return self.targets
        from crystalframer.data.tensors import expand_targets

        return expand_targets(self.targets, self.target_shapes)

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.dataset:
            return f"{self.dataset} ({self.root})"
        if self.source:
            return str(self.source)
        return f"train={self.train} val={self.val} test={self.test}"


@dataclass
class Splits:
    """Train/val/test crystals plus target names and units."""

    train: list[Crystal]
    val: list[Crystal]
    test: list[Crystal]
    target_names: list[str]
    target_units: list[str]
    errors: list[tuple[int, str, str]] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_source(path: str, targets: list[str] | None, options: dict[str, Any],
                target_shapes: dict[str, str] | None = None):
    """A file or folder read by ``load_dataset`` with these target columns (``options``: its other arguments).

    Vector/tensor targets (``target_shapes``, e.g. ``{"eps": "3x3sym"}``) are read from a table (CSV, or a
    pandas split/records JSON) whose column holds one array per row (nested lists, JSON text) or from flattened
    columns ``eps[0,0]``, ``eps[0,1]``, ... (any source); a cell that cannot be read is a ``ValueError`` naming
    the row's id and the column.
    """
    from crystalframer.data.io.load import load_dataset

    kw = dict(options)
    if target_shapes:
        from pathlib import Path

        from crystalframer.data.io.entries import ID_CANDIDATES, base_name
        from crystalframer.data.io.tables import read_dataframe, read_table
        from crystalframer.data.tensors import expand_targets, flatten_tensor_columns

        columns = expand_targets(targets or [], target_shapes)
        p = Path(path)
        if p.is_file() and base_name(p).endswith((".csv", ".tsv", ".json")):
            try:
                df = read_table(p)
            except ValueError:
                df = None  # a JSON list of structures, not a table: read below with flattened keys
            if df is not None:
                id_column = kw.get("id_column") or next((c for c in ID_CANDIDATES if c in df.columns), None)
                try:
                    df = flatten_tensor_columns(df, target_shapes, on_error="raise", id_column=id_column)
                except ValueError as err:
                    raise ValueError(f"{p}: {err}") from None
                return read_dataframe(df, targets=columns, base_dir=p.parent, name=p.name, **kw)
        kw["targets"] = columns  # other sources: the flattened names are their columns / keys
        return load_dataset(path, **kw)
    if targets is not None:
        kw["targets"] = list(targets)
    return load_dataset(path, **kw)


def select_targets(ds: Any, targets: list[str] | None) -> tuple[list[Crystal], list[str]]:
    """(crystals of ``ds``, target names), with the labels reordered/subset to ``targets`` when given."""
    names = list(getattr(ds, "target_names", None) or [])
    crystals = list(ds)
    if targets is not None and names and list(names) != list(targets):
        idx = [names.index(t) for t in targets]  # ValueError names the missing target
        out = []
        for c in crystals:
            t = None if c.targets is None else np.asarray(c.targets)[idx]
            out.append(Crystal(c.lattice, c.positions, c.species, c.id, t, dict(c.info)))
        return out, list(targets)
    return crystals, names or list(targets or [])


def binarized_source(name: str) -> tuple[str, float] | None:
    """``"band_gap>0"`` → ``("band_gap", 0.0)``: the property and threshold a binarized target was made of."""
    base, sep, thr = name.rpartition(">")
    if not sep or not base:
        return None
    try:
        return base, float(thr)
    except ValueError:
        return None


def _check_threshold(target: str, thr: Any) -> float:
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(float(thr)):
        raise ValueError(f"binarize threshold of {target!r} must be a finite number, got {thr!r}")
    return float(thr)


def binarize_targets(sets: dict[str, list[Crystal]], names: list[str], units: list[str],
                     thresholds: dict[str, float]) -> tuple[dict[str, list[Crystal]], list[str], list[str]]:
    """Replace each target named in ``thresholds`` by the 0/1 label ``value > threshold`` (NaN stays NaN)."""
    unknown = sorted(set(thresholds) - set(names))
    if unknown:
        raise ValueError(f"cannot binarize {unknown}: not among the targets {names}")
    cols = {names.index(t): _check_threshold(t, v) for t, v in thresholds.items()}
    out = {}
    for split, crystals in sets.items():
        new = []
        for c in crystals:
            if c.targets is None:
                new.append(c)
                continue
            y = np.asarray(c.targets, np.float64).copy()
            for k, thr in cols.items():
                if np.isfinite(y[k]):
                    y[k] = float(y[k] > thr)
            new.append(Crystal(c.lattice, c.positions, c.species, c.id, y, dict(c.info)))
        out[split] = new
    names = [f"{n}>{cols[k]:g}" if k in cols else n for k, n in enumerate(names)]
    units = ["" if k in cols else u for k, u in enumerate(units)]
    return out, names, units


def column_units(spec: DataSpec, names: list[str]) -> list[str]:
    """Units of the label columns ``names``: ``spec.units`` (one per column, or one per target with vector/tensor
    targets), else the known units of the shared sets; a flattened column ``e_total[0,1]`` has its target's unit."""
    units = list(spec.units) if spec.units else [SHARED_UNITS.get(n, SHARED_UNITS.get(n.split("[")[0], ""))
                                                 for n in names]
    if spec.target_shapes and len(units) == len(spec.targets or []) != len(names):  # one unit per tensor target
        from crystalframer.geometry.tensors import n_columns

        units = [u for u, t in zip(units, spec.targets) for _ in range(n_columns(spec.target_shapes.get(t)))]
    return units


def resolve_data(spec: DataSpec) -> Splits:
    """Load and split the data described by ``spec`` (every rank calls this; it is deterministic)."""
    errors: list[tuple[int, str, str]] = []
    if spec.dataset:
        from crystalframer.data.sources.shared import load_shared

        if not spec.root:
            raise ValueError(f"shared data set {spec.dataset!r} needs a data root (--data-root)")
        shaped = dict(targets=spec.targets, target_shapes=spec.target_shapes) if spec.target_shapes else {}
        ds = load_shared(spec.dataset, spec.root, **spec.load_options, **shaped)
        errors += [tuple(e) for e in getattr(ds, "errors", [])]
        parts = ds.split(from_file=spec.split_file) if spec.split_file else ds.split()
        sets = {s: select_targets(getattr(parts, s), spec.columns) for s in ("train", "val", "test")}
    elif spec.source:
        ds = load_source(spec.source, spec.targets, spec.load_options, spec.target_shapes)
        errors += [tuple(e) for e in getattr(ds, "errors", [])]
        if spec.split_file:
            parts = ds.split(from_file=spec.split_file)
        elif spec.split_fractions is not None:
            parts = ds.split(fractions=spec.split_fractions, seed=spec.split_seed, method="random")
        else:
            parts = ds.split(seed=spec.split_seed)
        sets = {s: select_targets(getattr(parts, s), spec.columns) for s in ("train", "val", "test")}
    elif spec.train:
        sets = {}
        for s in ("train", "val", "test"):
            path = getattr(spec, s)
            if path:
                ds = load_source(path, spec.targets, spec.load_options, spec.target_shapes)
                errors += [tuple(e) for e in getattr(ds, "errors", [])]
                sets[s] = select_targets(ds, spec.columns)
            else:
                sets[s] = ([], list(spec.columns or []))
    else:
        raise ValueError("no data given: set a shared data set (dataset + root), a source file/folder, "
                         "or train/val/test files")
    names = sets["train"][1] or sets["val"][1] or sets["test"][1]
    if not names:
        raise ValueError(f"the data ({spec.describe()}) has no targets; name them with --targets")
    out = {s: v[0] for s, v in sets.items()}
    units = column_units(spec, list(names))
    if spec.binarize:
        out, names, units = binarize_targets(out, list(names), units, spec.binarize)
    if spec.limit is not None:
        out = {s: v[: int(spec.limit)] for s, v in out.items()}
    if not out["train"]:
        raise ValueError(f"no training structures in {spec.describe()}")
    if len(units) != len(names):
        raise ValueError(f"{len(units)} units for {len(names)} targets {names}")
    return Splits(out["train"], out["val"], out["test"], list(names), units, errors)


def check_labels(splits: Splits, task: str = "regression") -> None:
    """Refuse data that cannot train a model, before any work is done (``ValueError`` naming the problem).

    * every target needs at least one numeric label among the training structures (a column of text
      reads as all-missing and would train on nothing, with a loss of 0);
    * finite labels must fit in float32 (|y| < 3.4e38), the precision the model computes in;
    * classification needs both classes among the training labels of every target (a threshold above
      every value, or a constant column, would give a model that "scores" accuracy 1.0 by always
      answering the same).
    """
    for split in ("train", "val", "test"):
        for c in getattr(splits, split):
            if c.targets is None:
                continue
            y = np.asarray(c.targets, np.float64).reshape(-1)
            big = np.isfinite(y) & (np.abs(y) > FLOAT32_MAX)
            if big.any():
                k = int(np.argmax(big))
                raise ValueError(f"{split} structure {c.id!r}: {splits.target_names[k]} = {y[k]:g} is beyond the "
                                 f"float32 range (|y| <= {FLOAT32_MAX:.3g}); rescale the target")
    labelled = [c for c in splits.train if c.targets is not None]
    y = (np.stack([np.asarray(c.targets, np.float64).reshape(-1) for c in labelled]) if labelled
         else np.zeros((0, len(splits.target_names))))
    for k, name in enumerate(splits.target_names):
        col = y[:, k][np.isfinite(y[:, k])] if y.shape[1] > k else np.zeros(0)
        if not col.size:
            raise ValueError(f"target {name!r} has no numeric label among the {len(splits.train)} training "
                             "structures (missing or not numbers); check the column")
        if task == "classification" and np.unique(col).size < 2:
            raise ValueError(f"classification target {name!r} has only one class ({col[0]:g}) among the "
                             f"{col.size} labelled training structures; choose a threshold inside the data's range")


def data_digest(splits: Splits) -> str:
    """SHA-256 of the structures, labels and split assignment of ``splits`` (identifies a run's data)."""
    from crystalframer.data.cache import content_digest

    return content_digest([splits.train, splits.val, splits.test, list(splits.target_names)])


class EpochShardSampler(Sampler[int]):
    """Shuffled indices of this rank for each epoch: ``perm(seed + epoch)[rank::world_size]``.

    ``perm`` is ``torch.randperm(n, generator=manual_seed(seed + epoch))``, as in
    :class:`torch.utils.data.DistributedSampler`. With ``drop_last`` the tail that does not fill a full
    global batch is dropped before sharding, so every rank has the same number of full batches.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 123,
                 shuffle: bool = True, drop_last: bool = True):
        self.n, self.batch_size, self.rank, self.world = int(n), int(batch_size), int(rank), int(world_size)
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _global(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        gb = self.batch_size * self.world
        if self.drop_last:
            perm = perm[: (self.n // gb) * gb]
        else:
            # pad by wrapping so every rank gets the same number of batches (collectives stay in step)
            total = math.ceil(self.n / gb) * gb
            perm = (perm * math.ceil(total / max(self.n, 1)))[:total] if self.n else []
        return perm

    def __iter__(self) -> Iterator[int]:
        # Interleave per global batch: rank r takes positions r, r+W, ... of each global batch, so the
        # union over ranks of local batch k is exactly global batch k.
        perm = self._global()
        gb = self.batch_size * self.world
        for start in range(0, len(perm), gb):
            yield from perm[start + self.rank: start + gb: self.world]

    def __len__(self) -> int:
        return len(self._global()) // self.world


class ShardSampler(Sampler[int]):
    """Unshuffled ``range(n)[rank::world_size]`` without padding (for evaluation)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world = int(n), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class CrystalDataModule(L.LightningDataModule):
    """Loaders for the train and val splits; the batch size given is the *global* batch.

    Args:
        collate: ``model.collate`` (crystals → batch).
        batch_size: global training batch (divided by the number of ranks).
        val_batch_size: global evaluation batch.
        num_workers: DataLoader workers (0: load in the main process, the official setting).
    """

    def __init__(self, train: Sequence[Crystal], val: Sequence[Crystal], collate: Callable, batch_size: int,
                 val_batch_size: int | None = None, seed: int = 123, drop_last: bool = True, num_workers: int = 0):
        super().__init__()
        self.train_set, self.val_set = ListDataset(train), ListDataset(val)
        self.collate, self.batch_size = collate, int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.seed, self.drop_last, self.num_workers = int(seed), bool(drop_last), int(num_workers)

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (int(t.global_rank), int(t.world_size)) if t is not None else (0, 1)

    def _local(self, global_batch: int, world: int) -> int:
        if global_batch % world:
            raise ValueError(f"the global batch size {global_batch} is not divisible by the {world} ranks")
        return global_batch // world

    def _loader(self, ds, sampler, batch_size: int) -> DataLoader:
        g = torch.Generator()
        g.manual_seed(self.seed)  # a private generator: creating iterators must not consume the global RNG
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=self.collate,
                          num_workers=self.num_workers, generator=g, drop_last=False,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._world()
        local = self._local(self.batch_size, world)
        if self.drop_last and len(self.train_set) < self.batch_size:
            raise ValueError(f"{len(self.train_set)} training structures are fewer than one batch of "
                             f"{self.batch_size} (drop_last): lower --batch-size")
        sampler = EpochShardSampler(len(self.train_set), local, rank, world, self.seed, True, self.drop_last)
        return self._loader(self.train_set, sampler, local)

    def val_dataloader(self):
        if len(self.val_set) == 0:
            return []
        rank, world = self._world()
        local = max(1, self.val_batch_size // world)
        return self._loader(self.val_set, ShardSampler(len(self.val_set), rank, world), local)


def env_rank() -> int:
    """Global rank from the launcher's environment (0 when not distributed)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            try:
                return int(os.environ[key])
            except ValueError:
                pass
    return 0

