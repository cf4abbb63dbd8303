"""Training, evaluation and run orchestration (the only part of crystalframer that uses Lightning).

Python API::

    from crystalframer.training import TrainConfig, train
    result = train(TrainConfig(data={"dataset": "perov_5", "root": "../shared/data"}, frame="max",
                               preset="quick", output="runs/perov"))
    result.metrics["swa"]["test"]["heat_all"]["mae"]

Lightning is imported lazily, so ``import crystalframer.training`` stays cheap.
"""

from crystalframer.training.metrics import masked_loss, population_stats, regression_metrics
from crystalframer.training.recipe import (PRESETS, Recipe, build_optimizer, build_scheduler, get_recipe,
                                           in_swa_phase, inverse_sqrt_factor, param_groups)
from crystalframer.training.swa import WeightAverager

__all__ = ["PRESETS", "Recipe", "RunResult", "TrainConfig", "WeightAverager", "build_optimizer", "build_scheduler",
           "evaluate_crystals", "get_recipe", "in_swa_phase", "inverse_sqrt_factor", "masked_loss", "param_groups",
           "population_stats", "predict_crystals", "regression_metrics", "train"]


def __getattr__(name: str):
    # Lightning-dependent pieces load on first use.
    if name in ("TrainConfig", "RunResult", "train"):
        from crystalframer.training import trainer

        return getattr(trainer, name)
    if name in ("evaluate_crystals", "predict_crystals"):
        from crystalframer.training import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'crystalframer.training' has no attribute {name!r}")
