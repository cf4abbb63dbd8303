"""User-facing models: the pure networks of :mod:`crystalframer.nn` plus prediction on structures.

Every model class follows one protocol, which the trainer, the checkpoint code and the command line use:

* ``model.config``: JSON-able constructor arguments; ``type(model)(**model.config)`` rebuilds it.
* buffers ``target_mean`` / ``target_std`` (n_targets,): outputs of ``forward`` are on the normalised
  scale, ``ŷ · std + mean`` is in the targets' units; ``model.task`` (``config["task"]``) is
  ``"regression"`` or ``"classification"`` (outputs are logits, predictions probabilities).
* ``model.collate(crystals) -> batch`` with ``.to(device)``, ``.y``, ``.ids``, ``.num_graphs``.
* ``model(batch) -> (B, n_targets)``; ``model.embed_batch(batch) -> (B, d)``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from crystalframer.cpu import flush_denormals
from crystalframer.data.batch import ECNBatch
from crystalframer.data.structures import Crystal, read_structures
from crystalframer.data.transforms.ecn import ECNGraphTransform
from crystalframer.data.transforms.ecn_graph import ECNGraph, ECNGraphSettings, connected_only
from crystalframer.geometry.images import IMAGE_TOL, pool_radius, sphere_candidates
from crystalframer.nn.ecn import ECNNet
from crystalframer.nn.heads import to_target_units
from crystalframer.nn.model import CrystalFramerNet


class PredictorMixin:
    """``predict`` and ``embed`` on pymatgen Structures, ASE Atoms, file paths or Crystals."""

    def _batches(self, structures: Any, batch_size: int, on_error: str):
        crystals, errors = read_structures(structures, on_error=on_error)
        for k in range(0, len(crystals), batch_size):
            yield crystals[k:k + batch_size]
        self.last_errors = errors

    def _device(self, device):
        return torch.device(device) if device is not None else next(self.parameters()).device

    @torch.no_grad()
    def _run_batches(self, fn, structures, batch_size: int, device, on_error: str) -> list[np.ndarray]:
        """fn(batch) on every chunk of the structures, in eval mode; training mode is restored after."""
        was_training = self.training
        self.eval()
        dev = self._device(device)
        dtype = next(self.parameters()).dtype
        try:
            with flush_denormals():
                return [fn(self.collate(chunk).to(dev, dtype)).double().cpu().numpy()
                        for chunk in self._batches(structures, batch_size, on_error)]
        finally:
            self.train(was_training)

    def predict(self, structures: Iterable[Any], batch_size: int = 64, device: str | torch.device | None = None,
                on_error: str = "raise") -> np.ndarray:
        """Predict targets in their original units (probabilities of class 1 for a classification model).

        Args:
            structures: pymatgen ``Structure`` / ASE ``Atoms`` / file paths (``str`` or ``Path``; a
                multi-block CIF gives one row per block) / structure dicts / :class:`Crystal`, or one of them.
            on_error: ``"raise"`` (default) or ``"skip"``: bad structures are left out and listed in
                ``model.last_errors`` as (index, id, message). Any other value is a ValueError.
        Returns:
            (n, n_targets) float64 array; for a model with vector or tensor targets (``target_shapes``) a dict
            ``{name: (n, *shape)}`` instead (scalars (n,), vectors (n, 3), tensors (n, 3, 3) or (n, 6, 6)).
        """
        task = getattr(self, "task", "regression")
        transform = getattr(self, "target_transform", "none")
        out = self._run_batches(lambda b: to_target_units(self(b), self.target_mean, self.target_std, task, transform),
                                structures, batch_size, device, on_error)
        flat = np.concatenate(out) if out else np.zeros((0, int(self.target_mean.shape[0])))
        if getattr(self, "has_geometric_targets", False):
            return split_columns(flat, self.config["target_names"], self.target_kinds)
        return flat

    def embed(self, structures: Iterable[Any], batch_size: int = 64, device: str | torch.device | None = None,
              on_error: str = "raise") -> np.ndarray:
        """Pooled embeddings (n, d) of the structures (the input of the prediction head)."""
        out = self._run_batches(self.embed_batch, structures, batch_size, device, on_error)
        return np.concatenate(out) if out else np.zeros((0, 0))


def split_columns(flat: np.ndarray, names: Sequence[str], kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """(n, Σ columns) flattened outputs → ``{name: (n, *shape)}`` (see :mod:`crystalframer.geometry.tensors`)."""
    from crystalframer.geometry.tensors import n_columns, target_shape

    out, k = {}, 0
    for name, kind in zip(names, kinds):
        n = n_columns(kind)
        out[name] = flat[:, k:k + n].reshape((len(flat),) + target_shape(kind))
        k += n
    return out


class CrystalFramer(PredictorMixin, CrystalFramerNet):
    """CrystalFramer (Ito et al., ICLR 2025) and, with ``frame="none"``, Crystalformer (Taniai et al., ICLR 2024).

    ``CrystalFramer(frame="max")`` builds the paper's default model (951,821 parameters);
    ``frame="none"`` the baseline (853,517). See :class:`crystalframer.nn.model.CrystalFramerNet` for
    every hyperparameter.
    """

    def image_radius(self) -> float | None:
        """The largest sphere radius (Å) this model's forward can ask for (None with the box images): the fixed
        ``cutoff``, or the σ-following pool's radius at σ_max = r0 / √sigma_lb, the bound of the σ
        parametrisation (ρ > sigma_lb)."""
        c = self.config
        if c["images"] != "sphere":
            return None
        if c["cutoff"] is not None:
            return float(c["cutoff"])
        return pool_radius(c["r0"] / math.sqrt(c["sigma_lb"]), c.get("image_tol", IMAGE_TOL))

    def collate(self, crystals: Sequence[Crystal], images: bool | None = None):
        """Crystals → :class:`~crystalframer.data.batch.CrystalBatch`.

        ``images``: also search the sphere images up to :meth:`image_radius` (they depend only on the
        structures), so that the forward pass only selects from them. Default: in DataLoader workers only,
        where it runs beside the training step; in the main process the forward searches just the radius it
        needs.
        """
        from crystalframer.data.batch import collate

        batch = collate(crystals)
        if images is None:
            images = torch.utils.data.get_worker_info() is not None
        radius = self.image_radius()
        if images and radius is not None:
            batch.sphere = sphere_candidates(batch.lattice, batch.pos, batch.ptr, radius)
        return batch


class ECN(PredictorMixin, ECNNet):
    """Equivariant Crystal Networks (Kaba & Ravanbakhsh, NeurIPS 2022) on 2×2×2 supercell graphs.

    The network is :class:`crystalframer.nn.ecn.ECNNet` (see there for the hyperparameters); this class adds
    the graphs (:class:`~crystalframer.data.transforms.ecn.ECNGraphTransform`) and prediction on structures.
    ``ECN.training_recipe()`` gives the published recipe.

    Args (besides those of :class:`ECNNet`):
        self_loops: add a distance-0 self-loop per node when collating (paper code).
        graph: :class:`~crystalframer.data.transforms.ecn_graph.ECNGraphSettings` fields as a dict (default:
            IsayevNN, tol 0.5 Å, cutoff 6 Å).
        graph_cache_dir: optional folder for the on-disk graph cache used by :meth:`collate`.
        graph_memo_size: graphs kept in memory by :meth:`collate` (0 disables), keyed by structure hash.
        drop_disconnected: apply ECN's dataset filter in training (:meth:`filter_splits`): structures whose
            graph is not strongly connected are left out of the train, validation and test sets, with a
            warning giving the count (the paper drops them). Prediction is never filtered.

    ``config`` holds every constructor argument (JSON-able), so ``ECN(**model.config)`` rebuilds it.
    """

    def __init__(self, group: str = "s8", n_targets: int = 1, target_names: Sequence[str] | None = None, *,
                 width: int = 100, edge_dim: int = 20, num_layers: int = 6, num_rbf: int = 20,
                 rbf_max: float = 6.0, rbf_width: float | None = None, readout_dim: int | None = None,
                 species_encoding: str = "onehot", hubbard: bool = False, edge_function: str = "slots",
                 self_loops: bool = True, graph: dict[str, Any] | None = None,
                 graph_cache_dir: str | None = None, graph_memo_size: int = 50000,
                 target_units: Sequence[str] | None = None, task: str = "regression",
                 drop_disconnected: bool = True):
        super().__init__(group, n_targets, target_names, width=width, edge_dim=edge_dim, num_layers=num_layers,
                         num_rbf=num_rbf, rbf_max=rbf_max, rbf_width=rbf_width, readout_dim=readout_dim,
                         species_encoding=species_encoding, hubbard=hubbard, edge_function=edge_function,
                         target_units=target_units, task=task)
        self.graphs = ECNGraphTransform(graph, graph_cache_dir, graph_memo_size, self_loops)
        net = {k: v for k, v in self.config.items() if k != "task"}
        self.config = {**net, "self_loops": bool(self_loops), "graph": self.graphs.settings.to_dict(),
                       "graph_cache_dir": None if graph_cache_dir is None else str(graph_cache_dir),
                       "graph_memo_size": int(graph_memo_size), "task": task,
                       "drop_disconnected": bool(drop_disconnected)}

    def build_graph(self, crystal: Crystal | Any) -> ECNGraph:
        """The supercell graph of one structure under this model's graph settings (memoised, cached)."""
        return self.graphs.graph(crystal)

    def collate(self, crystals: Sequence[Crystal | ECNGraph | Any]) -> ECNBatch:
        """Build (or reuse) the graphs of ``crystals`` and batch them (float64; ``.to(device, dtype)`` casts).

        Items may also be prebuilt :class:`ECNGraph` objects, or anything :func:`to_crystal` reads.
        """
        return self.graphs(crystals)

    def prepare(self, crystals: Sequence[Crystal | Any]) -> list[ECNGraph]:
        """Build the graphs of many structures ahead of training (fills the memo and the disk cache).

        Graph building (spglib + Voronoi) costs about 0.05–0.15 s per small structure, so build once:
        DataLoader workers that are not persistent start with an empty memo, use ``graph_cache_dir``
        for them. The returned graphs carry ``connected`` (ECN's dataset filter drops the others).
        """
        return [self.graphs.graph(c) for c in crystals]

    def filter_splits(self, splits: Any) -> Any:
        """ECN's dataset filter on a trainer's ``Splits`` (train, val, test): without
        ``drop_disconnected`` the splits are returned unchanged; otherwise structures with disconnected
        graphs are removed from each split (:func:`~crystalframer.data.transforms.ecn_graph.connected_only`,
        which warns with the count), and the dropped ids are recorded in ``splits.errors``.
        """
        if not self.config.get("drop_disconnected", True):
            return splits
        errors = list(splits.errors)
        parts = {}
        for name in ("train", "val", "test"):
            kept, dropped = connected_only(getattr(splits, name), self.graphs.graph, name)
            parts[name] = kept
            errors += [(-1, i, f"{name}: ECN graph not strongly connected (dropped)") for i in dropped]
        return replace(splits, errors=errors, **parts)

    def clear_graph_memo(self) -> None:
        self.graphs.clear_memo()

    @classmethod
    def training_recipe(cls, task: str = "regression") -> dict[str, Any]:
        """ECN's own training recipe (Kaba & Ravanbakhsh, NeurIPS 2022, and its code) as a plain dict.

        * ``"recipe"``: the settings that map onto the library trainer's ``Recipe`` fields (AdamW lr 1e-3,
          weight decay 1e-15 on every parameter, batch 128 with the last partial batch dropped, 1000
          epochs, no SWA, no clipping, MSE, no target scaling, seed 72, the plateau schedule below); the
          trainer's ``ecn`` preset.
        * ``"lr_schedule"``: ReduceLROnPlateau on validation MAE (factor 0.5, patience 25, min lr 1e-6);
          training stops once the lr reaches 1e-6.
        * ``"metric"`` and ``"checkpoint"``: MAE, best-validation checkpoint kept.
        * ``"graph"``: graph settings per dataset (IsayevNN for MP 2021.05, 5 Å cutoff for Perov-5).

        Args:
            task: ``"regression"`` (MSE) or ``"classification"`` (BCE with logits; metal = gap > 1e-5 eV,
                the metric is the recall of each class, which the paper calls "precision").
        """
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        return {
            "recipe": {
                "batch_size": 128, "epochs": 1000, "swa_epochs": 0, "lr": 1e-3, "betas": [0.9, 0.999],
                "eps": 1e-8, "weight_decay": 1e-15, "bias_weight_decay": 1e-15, "schedule": "plateau",
                "plateau_factor": 0.5, "plateau_patience": 25, "min_lr": 1e-6,
                "clip_norm": None, "loss": "mse", "normalize_targets": False, "drop_last": True, "seed": 72,
            },
            "optimizer": "AdamW",
            "loss": "mse" if task == "regression" else "bce_with_logits",
            "lr_schedule": {"name": "reduce_on_plateau", "monitor": "val_mae", "mode": "min", "factor": 0.5,
                            "patience": 25, "min_lr": 1e-6, "stop_when_lr_at_most": 1e-6},
            "metric": "mae" if task == "regression" else "per_class_recall",
            "checkpoint": "best_val_metric",
            "dropout": 0.0,
            "graph": {"mp_2021_05": ECNGraphSettings().to_dict(), "perov_5": ECNGraphSettings.perov5().to_dict()},
        }


#: Model classes by the name stored in checkpoints.
MODEL_CLASSES: dict[str, type] = {"CrystalFramer": CrystalFramer, "ECN": ECN}


def register_model(cls: type) -> type:
    """Make a model class loadable from checkpoints by its name."""
    MODEL_CLASSES[cls.__name__] = cls
    return cls
