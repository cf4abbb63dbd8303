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

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from crystalframer.data.structures import Crystal, read_structures
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
    """(n, Σ columns) flattened outputs → ``{name: (n, *shape)}`` (see :mod:`crystalframer.nn.tensor_heads`)."""
    from crystalframer.nn.tensor_heads import n_columns, target_shape

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

    def collate(self, crystals: Sequence[Crystal]):
        from crystalframer.data.batch import collate

        return collate(crystals)


class ECN(PredictorMixin, ECNNet):
    """Equivariant Crystal Networks on 2×2×2 supercell graphs (``group="p1"`` or ``"s8"``).

    See :class:`crystalframer.nn.ecn.ECNNet` for the hyperparameters and ``ECN.training_recipe()`` for
    the published recipe.
    """


#: Model classes by the name stored in checkpoints.
MODEL_CLASSES: dict[str, type] = {"CrystalFramer": CrystalFramer, "ECN": ECN}


def register_model(cls: type) -> type:
    """Make a model class loadable from checkpoints by its name."""
    MODEL_CLASSES[cls.__name__] = cls
    return cls
