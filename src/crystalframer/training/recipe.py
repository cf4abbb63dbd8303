"""The published training recipe (optimizer, LR schedule, SWA, presets), free of Lightning.

Everything here follows the official CrystalFramer code (Ito et al., ICLR 2025; its released training script):

* AdamW, lr 5e-4, betas (0.9, 0.98), eps 1e-8, two parameter groups: ``decay`` (every trainable parameter
  whose name does not contain "bias", weight decay 1e-5) and ``nodecay`` (the biases). The official code
  sets no weight decay for ``nodecay``, so AdamW's default **0.01** applies to biases. That is reproduced
  by default (``bias_weight_decay=0.01``, the "official" behaviour); set it to 0.0 for the conventional
  choice.
* LR factor √(W / (W + t)) with W = 4000 and t the number of scheduler steps (one per optimizer step, no
  warm-up). The scheduler is **not stepped during the last ``swa_epochs`` epochs**, so the LR is frozen.
  A half-cosine decay to ``min_lr`` over the steps before SWA (``schedule="cosine"``, Loshchilov & Hutter,
  ICLR 2017, without restarts) is offered beside it; it is not part of the published recipe.
* Gradient norm clipped to 1.0, L1 loss on targets normalised with the training split's mean and
  population std.
* SWA: an equal-weight average of the weights after every optimizer step of the last ``swa_epochs``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch

from crystalframer.nn.heads import TARGET_TRANSFORMS

__all__ = ["Recipe", "PRESETS", "get_recipe", "param_groups", "build_optimizer", "inverse_sqrt_factor",
           "cosine_factor", "build_scheduler", "in_swa_phase"]


SCHEDULES = ("inverse_sqrt", "constant", "plateau", "cosine")
#: Training losses: three regression losses and binary cross-entropy (classification).
LOSSES = ("l1", "mse", "smooth_l1", "bce")


@dataclass
class Recipe:
    """Training hyperparameters. Defaults are the paper's JARVIS setting (batch 256, 2000 epochs, SWA 50).

    Attributes:
        batch_size: global batch size (split evenly over DDP ranks).
        epochs: total epochs, SWA epochs included.
        swa_epochs: the last ``swa_epochs`` epochs average the weights (0 turns SWA off).
        lr, betas, eps: AdamW settings.
        weight_decay: decay of the ``decay`` group (all non-bias parameters).
        bias_weight_decay: decay of the ``nodecay`` (bias) group; 0.01 is AdamW's default, which the
            official code leaves in place ("official"); 0.0 is the conventional no-decay choice.
        schedule: ``"inverse_sqrt"`` (factor √(W/(W+t)), per step), ``"constant"``, or ``"plateau"`` (ECN's:
            the LR times ``plateau_factor`` after ``plateau_patience`` epochs without a lower validation loss,
            never below ``min_lr``; training stops once the LR reaches ``min_lr``), or ``"cosine"``: the LR
            falls from ``lr`` to ``min_lr`` along a half cosine over the optimizer steps before the SWA phase
            (every step when SWA is off) and stays at ``min_lr`` during SWA. The cosine is the one schedule
            that depends on the run's length, so a cosine run cannot change ``epochs`` on resume.
        schedule_warmup: W of the inverse-sqrt schedule (4000).
        plateau_factor, plateau_patience, min_lr: the plateau schedule (0.5, 25, 1e-6 as ECN); ``min_lr`` is
            also where the cosine schedule ends.
        clip_norm: max global gradient norm (``None`` or 0 disables clipping).
        loss: ``"l1"`` (official), ``"mse"`` or ``"smooth_l1"``, on the normalised scale (a run with vector or
            tensor targets defaults to ``"mse"``, see ``TrainConfig.resolved_recipe``); or ``"bce"``:
            binary classification (labels 0/1, e.g. metal vs non-metal as in ECN): the model is built with
            ``task="classification"``, outputs logits, predicts probabilities, and is scored by accuracy,
            ROC-AUC and per-class recall.
        normalize_targets: learn (y − mean)/std with the training split's mean and population std (ignored
            with ``loss="bce"``).
        target_transform: ``"none"`` or ``"log"``: learn log y (every target > 0) instead of y, normalised as
            above; the model keeps the transform (checkpoints too) and predicts exp(·) in the targets' units.
            With an L1 loss it still aims at the median of y (the median commutes with log), and a
            heavy right tail (e.g. exfoliation energies) no longer dominates the gradients.
        val_batch_size / test_batch_size: evaluation batch sizes (``None``: same as ``batch_size``). The
            official test loader uses batch 1; batching does not change predictions.
        drop_last: drop the last incomplete training batch (official: True).
        seed: seeds Python, numpy and torch (and the shuffling order of every epoch).
        max_skipped_steps: abort when this many optimizer steps in a row were skipped by the NaN guard.
        model: default CrystalFramer keyword overrides of this preset (the command line and config override
            them); other model families (ECN) have their own sizes and ignore them.
    """

    batch_size: int = 256
    epochs: int = 2000
    swa_epochs: int = 50
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 1e-5
    bias_weight_decay: float = 0.01
    schedule: str = "inverse_sqrt"
    schedule_warmup: float = 4000.0
    plateau_factor: float = 0.5
    plateau_patience: int = 25
    min_lr: float = 1e-6
    clip_norm: float | None = 1.0
    loss: str = "l1"
    normalize_targets: bool = True
    target_transform: str = "none"
    val_batch_size: int | None = None
    test_batch_size: int | None = None
    drop_last: bool = True
    seed: int = 123
    max_skipped_steps: int = 100
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        self.betas = tuple(float(b) for b in self.betas)  # JSON/YAML give lists
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise ValueError(f"swa_epochs must be in 0..epochs ({self.epochs}), got {self.swa_epochs}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.target_transform not in TARGET_TRANSFORMS:
            raise ValueError(f"target_transform must be one of {TARGET_TRANSFORMS}, got {self.target_transform!r}")
        if self.target_transform != "none" and self.loss == "bce":
            raise ValueError("target_transform applies to regression targets, not to loss='bce'")

    def _check_types(self) -> None:
        """Raise ``ValueError`` naming the first field whose value has the wrong type (e.g. ``lr="abc"``)."""
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for f in dataclasses.fields(self):
            v, kind = getattr(self, f.name), str(f.type)
            if v is None and "None" in kind:
                continue
            if kind.startswith("int"):
                ok = isinstance(v, int) and not isinstance(v, bool)
                want = "a whole number"
            elif kind.startswith("float"):
                ok, want = number(v), "a finite number"
            elif kind == "bool":
                ok, want = isinstance(v, bool), "true or false"
            elif kind == "str":
                ok, want = isinstance(v, str), "a string"
            elif kind.startswith("tuple"):
                ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(number(b) for b in v)
                want = "two numbers"
            else:
                ok, want = isinstance(v, dict), "a mapping"
            if not ok:
                raise ValueError(f"recipe setting {f.name} must be {want}, got {v!r}")

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @property
    def swa_start_epoch(self) -> int:
        """First epoch (0-based) of the SWA phase; ``epochs`` when SWA is off."""
        return self.epochs - self.swa_epochs


#: Named presets. ``jarvis``/``mp``/``oqmd`` are the paper's settings (Appendix C); ``quick`` is a small
#: CPU-friendly run for smoke tests and demos (smaller model, a few epochs, same optimiser recipe).
PRESETS: dict[str, Recipe] = {
    "jarvis": Recipe(batch_size=256, epochs=2000, swa_epochs=50),
    "mp": Recipe(batch_size=128, epochs=800, swa_epochs=50),
    "oqmd": Recipe(batch_size=1024, epochs=200, swa_epochs=20),
    # Evaluation in batches of 128: on CPU it is ~2.5x faster per structure than batches of 32.
    "quick": Recipe(batch_size=32, epochs=10, swa_epochs=2, val_batch_size=128, test_batch_size=128,
                    model={"num_layers": 2, "model_dim": 64, "num_heads": 4, "ff_dim": 128}),
    # ECN's own recipe (ECN.training_recipe(); spec B.4): MSE on raw targets, plateau schedule, no SWA.
    "ecn": Recipe(batch_size=128, epochs=1000, swa_epochs=0, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-15,
                  bias_weight_decay=1e-15, schedule="plateau", plateau_factor=0.5, plateau_patience=25,
                  min_lr=1e-6, clip_norm=None, loss="mse", normalize_targets=False, drop_last=True, seed=72),
}


def get_recipe(preset: str | Recipe | None = "jarvis", **overrides: Any) -> Recipe:
    """A preset by name (``jarvis``, ``mp``, ``oqmd``, ``quick``, ``ecn``) with some fields overridden.

    ``None`` values in ``overrides`` are ignored, so unset command-line flags keep the preset's value.
    """
    if isinstance(preset, Recipe):
        base = preset
    else:
        name = (preset or "jarvis").lower()
        if name not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        known = [f.name for f in dataclasses.fields(Recipe)]
        raise ValueError(f"unknown recipe settings {sorted(unknown)}; known: {known}")
    if "model" in changes:
        changes["model"] = {**base.model, **changes["model"]}
    return dataclasses.replace(base, **changes)


def param_groups(model: torch.nn.Module, weight_decay: float = 1e-5,
                 bias_weight_decay: float = 0.01) -> list[dict[str, Any]]:
    """The two AdamW groups of the official code.

    ``decay``: trainable parameters whose name does not contain "bias" (``weight_decay``).
    ``nodecay``: trainable parameters whose name contains "bias" (``bias_weight_decay``; the official
    code leaves AdamW's default 0.01 here). Frozen parameters are left out. Each group keeps its
    parameter names under ``"names"`` (ignored by the optimizer, useful for checks).
    """
    decay, nodecay, dn, nn_ = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "bias" in name:
            nodecay.append(p)
            nn_.append(name)
        else:
            decay.append(p)
            dn.append(name)
    groups = [{"params": decay, "weight_decay": float(weight_decay), "group": "decay", "names": dn}]
    if nodecay:
        groups.append({"params": nodecay, "weight_decay": float(bias_weight_decay), "group": "nodecay",
                       "names": nn_})
    return groups


def build_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the recipe's lr, betas and eps."""
    return torch.optim.AdamW(param_groups(model, recipe.weight_decay, recipe.bias_weight_decay),
                             lr=recipe.lr, betas=tuple(recipe.betas), eps=recipe.eps)


def inverse_sqrt_factor(step: int, warmup: float = 4000.0) -> float:
    """LR multiplier √(W / (W + t)) after ``t`` scheduler steps: 1 at t = 0, 1/√2 at t = W."""
    return math.sqrt(warmup / (warmup + step))


class _InverseSqrt:
    """Picklable LR lambda (Lightning saves scheduler state; a closure would be fine too, this is clearer)."""

    def __init__(self, warmup: float):
        self.warmup = float(warmup)

    def __call__(self, step: int) -> float:
        return inverse_sqrt_factor(step, self.warmup)


def cosine_factor(step: int, total: int, final: float) -> float:
    """LR multiplier of the cosine schedule after ``step`` of ``total`` steps: 1 at step 0, ``final`` from
    step ``total`` on, ½(1 + cos(π·step/total)) rescaled to [final, 1] in between."""
    if total <= 0 or step >= total:
        return final
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * step / total))


class _Cosine:
    """Picklable LR lambda of the cosine schedule (its state, ``total`` and ``final``, goes into checkpoints)."""

    def __init__(self, total: int, final: float):
        self.total, self.final = int(total), float(final)

    def __call__(self, step: int) -> float:
        return cosine_factor(step, self.total, self.final)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int | None = None):
    """LambdaLR stepped once per optimizer step outside the SWA phase (the caller decides when), or, for
    ``"plateau"``, ReduceLROnPlateau stepped once per epoch with the validation loss.

    ``steps_per_epoch`` (optimizer steps per epoch) is needed by the cosine schedule only: its length is the
    number of steps before the SWA phase."""
    if recipe.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=recipe.plateau_factor,
                                                          patience=recipe.plateau_patience, min_lr=recipe.min_lr)
    if recipe.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    if recipe.schedule == "cosine":
        if steps_per_epoch is None or steps_per_epoch < 1:
            raise ValueError("the cosine schedule needs the number of optimizer steps per epoch, "
                             f"got {steps_per_epoch!r}")
        final = min(1.0, recipe.min_lr / recipe.lr)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _Cosine(recipe.swa_start_epoch * steps_per_epoch, final))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _InverseSqrt(recipe.schedule_warmup))


def in_swa_phase(epoch: int, recipe: Recipe) -> bool:
    """True during the last ``swa_epochs`` epochs (official test: ``epoch + swa_epochs >= epochs``)."""
    return recipe.swa_epochs > 0 and epoch + recipe.swa_epochs >= recipe.epochs


def frozen_lr(recipe: Recipe, steps_per_epoch: int) -> float:
    """The LR the schedule freezes at during SWA: lr·√(W/(W + steps before the SWA phase)) (inverse-sqrt),
    ``min_lr`` (cosine)."""
    if recipe.schedule in ("constant", "plateau"):  # plateau: the LR reached by then, at most lr
        return recipe.lr
    if recipe.schedule == "cosine":
        return min(recipe.lr, recipe.min_lr)
    return recipe.lr * inverse_sqrt_factor(recipe.swa_start_epoch * steps_per_epoch, recipe.schedule_warmup)


def iter_names(groups: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """{group name: parameter names} of :func:`param_groups` output."""
    return {g["group"]: list(g["names"]) for g in groups}


# Small data sets (hundreds of structures, e.g. Matbench matbench_jdft2d): the quick model, 30 epochs with SWA over
# the last 5. Chosen by nested validation inside the training folds (benchmarks/matbench/explore.json).
PRESETS["matbench"] = Recipe(batch_size=32, epochs=30, swa_epochs=5, val_batch_size=128, test_batch_size=128,
                             model={"num_layers": 2, "model_dim": 64, "num_heads": 4, "ff_dim": 128})

# Small data with a heavy-tailed positive target (Matbench matbench_jdft2d: ~500 training structures, exfoliation
# energies with a long right tail): log targets, a 3-layer width-128 model, 16 epochs with SWA over the last 4
# (validation MAE stops improving after ~15 epochs at this size). Chosen by nested validation inside the
# training folds (benchmarks/matbench/explore.json; BENCHMARKS.md section 7).
PRESETS["small-data"] = Recipe(batch_size=32, epochs=16, swa_epochs=4, val_batch_size=128, test_batch_size=128,
                               target_transform="log",
                               model={"num_layers": 3, "model_dim": 128, "num_heads": 8, "ff_dim": 256})
