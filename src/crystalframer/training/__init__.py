"""Training, evaluation and run orchestration (the only part of crystalframer that uses Lightning).

Python API::

    from crystalframer.training import TrainConfig, train
    result = train(TrainConfig(data={"dataset": "perov_5", "root": "../shared/data"}, frame="max",
                               preset="quick", output="runs/perov"))
    result.metrics["swa"]["test"]["heat_all"]["mae"]

Every name loads on first use (PEP 562), so ``import crystalframer.training`` imports neither torch nor
Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crystalframer._lazy import lazy_exports

if TYPE_CHECKING:  # static imports for type checkers and IDEs; at run time the names load lazily
    from crystalframer.training.evaluation import evaluate_crystals, predict_crystals
    from crystalframer.training.metrics import masked_loss, population_stats, regression_metrics
    from crystalframer.training.recipe import (PRESETS, Recipe, build_optimizer, build_scheduler, get_recipe,
                                               in_swa_phase, inverse_sqrt_factor, param_groups)
    from crystalframer.training.swa import WeightAverager
    from crystalframer.training.trainer import RunResult, TrainConfig, train

# public name -> defining module
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("masked_loss", "population_stats", "regression_metrics"), "crystalframer.training.metrics"),
    **dict.fromkeys(("PRESETS", "Recipe", "build_optimizer", "build_scheduler", "get_recipe", "in_swa_phase",
                     "inverse_sqrt_factor", "param_groups"), "crystalframer.training.recipe"),
    "WeightAverager": "crystalframer.training.swa",
    **dict.fromkeys(("RunResult", "TrainConfig", "train"), "crystalframer.training.trainer"),
    **dict.fromkeys(("evaluate_crystals", "predict_crystals"), "crystalframer.training.evaluation"),
}

__all__ = ["PRESETS", "Recipe", "RunResult", "TrainConfig", "WeightAverager", "build_optimizer", "build_scheduler",
           "evaluate_crystals", "get_recipe", "in_swa_phase", "inverse_sqrt_factor", "masked_loss", "param_groups",
           "population_stats", "predict_crystals", "regression_metrics", "train"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
