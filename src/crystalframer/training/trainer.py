"""Run orchestration: config → data → model → Lightning fit → final evaluation, files and plots.

A run folder holds::

    config.yaml / config.json     the resolved configuration (data, model, recipe, devices, versions)
    checkpoints/last.ckpt         Lightning state for --resume (optimizer, scheduler, SWA average, RNG)
    checkpoints/last.pt, best.pt  self-describing models (crystalframer.load), updated every epoch
    model.pt                      the final model: the SWA average (the paper's selection), or the last
                                  weights when SWA is off
    history.csv                   one row per epoch (losses, val MAE, LR, time)
    csv/metrics.csv, tensorboard/ step-level logs
    metrics.json                  MAE / RMSE / R² per target of the SWA and best-val models on val and test
    predictions/<model>_<split>.csv, parity_<split>.png, learning_curves.png
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from crystalframer.atomic import check_writable_folder
from crystalframer.checkpoint import CheckpointError, jsonable, library_version, load, safe_torch_load, save_model
from crystalframer.cpu import flush_denormals
from crystalframer.data.structures import Crystal
from crystalframer.training.data import CrystalDataModule, DataSpec, Splits, check_labels, data_digest, resolve_data
from crystalframer.training.evaluation import evaluate_crystals, write_predictions_csv
from crystalframer.training.metrics import check_binary_labels, format_target_metrics, population_stats
from crystalframer.training.recipe import Recipe, get_recipe

__all__ = ["TrainConfig", "RunResult", "train", "build_model", "set_target_normalisation", "RUN_DIR_ENV",
           "format_metrics"]

#: Set by rank 0 so that DDP worker processes (re-launched with the same command line) use its run folder.
RUN_DIR_ENV = "CRYSTALFRAMER_RUN_DIR"


@dataclass
class TrainConfig:
    """Everything a run needs (JSON/YAML-able; ``crystalframer train --config`` reads the same keys).

    Attributes:
        data: where the data comes from (:class:`~crystalframer.training.data.DataSpec` or its dict).
        model_type: model class name in ``crystalframer.models.MODEL_CLASSES``.
        model: constructor keyword arguments (``frame``, ``num_layers``, ...); targets are filled in.
        frame: shortcut for ``model["frame"]`` ("max", "none", "static", "weighted_pca", "pca", "lattice").
        preset: recipe preset (``jarvis``, ``mp``, ``oqmd``, ``quick``).
        recipe: recipe fields overriding the preset (``epochs``, ``batch_size``, ``lr``, ``seed`` ...).
        output: run folder (default ``runs/<data>-<frame>-<preset>-<time>``).
        init_from: start from this checkpoint's weights (fine-tuning); normalisation is re-fitted.
        accelerator, devices, num_nodes, strategy, precision: passed to ``lightning.Trainer``
            (``strategy="auto"`` becomes DDP with more than one device).
        num_workers: DataLoader workers.
        progress_bar: show Lightning's progress bar; tensorboard: also log to TensorBoard.
        plots: write the PNG figures at the end.
        eval_batch_size: batch of the final evaluation (default: the recipe's val batch).
    """

    data: DataSpec | dict[str, Any] = field(default_factory=DataSpec)
    model_type: str = "CrystalFramer"
    model: dict[str, Any] = field(default_factory=dict)
    frame: str | None = None
    preset: str = "jarvis"
    recipe: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    init_from: str | None = None
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    progress_bar: bool = True
    tensorboard: bool = True
    plots: bool = True
    eval_batch_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):
            known = {f.name for f in dataclasses.fields(DataSpec)}
            unknown = set(self.data) - known
            if unknown:
                raise ValueError(f"unknown data settings {sorted(unknown)}; known: {sorted(known)}")
            self.data = DataSpec(**self.data)
        if str(self.precision).startswith("16") or str(self.precision) in ("half", "fp16"):
            # fp16 needs loss scaling, and the recipe clips the raw gradients itself; bf16 needs neither.
            raise ValueError(f"precision {self.precision!r} is not supported; use '32-true' (default), "
                             "'bf16-mixed' or '64-true'")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - {"versions", "resolved"}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: copy.deepcopy(v) for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return jsonable(d)

    def resolved_recipe(self) -> Recipe:
        """The preset with the ``recipe`` overrides; with vector/tensor targets the loss defaults to ``"mse"``.

        Why MSE there: the components of a tensor are signed and its error is measured by the Frobenius
        norm, an L2 quantity; the per-component squared error of the normalised columns sums to ‖ΔT‖²_F,
        which does not depend on the orientation the crystal is stored in (per-component L1 does). Scalar
        targets keep the published L1 loss. A ``loss`` given in ``recipe`` always wins; the loss used is
        recorded with the resolved recipe in the run's ``config.json``.
        """
        recipe = get_recipe(self.preset, **self.recipe)
        shapes = getattr(self.data, "target_shapes", None) or {}
        if self.recipe.get("loss") is None and recipe.loss == "l1" and any(k != "scalar" for k in shapes.values()):
            recipe = dataclasses.replace(recipe, loss="mse")
        return recipe


@dataclass
class RunResult:
    """What :func:`train` returns (on rank 0; other ranks get ``metrics == {}``).

    Attributes:
        run_dir: the run folder.
        metrics: the content of ``metrics.json``.
        model: the final model (SWA average, or last weights without SWA), in eval mode on the CPU.
        best_model: the best-validation model.
        history: one dict per epoch.
    """

    run_dir: Path
    metrics: dict[str, Any]
    model: torch.nn.Module | None = None
    best_model: torch.nn.Module | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def test_metric(self, key: str = "mae", which: str = "swa", target: str | None = None) -> float:
        """Test metric ``key`` ("mae", "r2", "accuracy", "roc_auc", ...) of ``which`` ("swa" or "best") for
        ``target`` (default: the first)."""
        res = self.metrics[which]["test"]
        return float(res[target or next(iter(res))][key])

    def test_mae(self, which: str = "swa", target: str | None = None) -> float:
        """Test MAE of ``which`` ("swa" or "best") for ``target`` (default: the first)."""
        return self.test_metric("mae", which, target)


# -- model -------------------------------------------------------------------------------------------------


def _accepted(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep only keyword arguments ``cls`` accepts (all of them if it takes **kwargs)."""
    sig = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in sig.parameters}


def build_model(config: TrainConfig, recipe: Recipe, target_names: Sequence[str],
                target_units: Sequence[str]) -> torch.nn.Module:
    """A fresh model for these targets (or the ``init_from`` checkpoint's, for fine-tuning)."""
    if config.init_from:
        given = sorted(config.model) + (["frame"] if config.frame is not None else [])
        if given:
            raise ValueError(f"init_from {config.init_from}: the architecture comes from the checkpoint; drop the "
                             f"model settings {given} (they would be ignored)")
        model = load(config.init_from)
        n_old = int(model.target_mean.numel())
        if n_old != len(target_names):
            raise ValueError(f"{config.init_from} predicts {n_old} targets, the data has {len(target_names)} "
                             f"({list(target_names)})")
        return model.train()
    from crystalframer.models import MODEL_CLASSES, CrystalFramer

    if config.model_type not in MODEL_CLASSES:
        raise ValueError(f"unknown model type {config.model_type!r}; known: {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[config.model_type]
    # A preset's model sizes are transformer sizes (ECN's num_layers means something else).
    preset_model = recipe.model if issubclass(cls, CrystalFramer) else {}
    kwargs = {**preset_model, **config.model}
    if config.frame is not None:
        kwargs["frame"] = config.frame
    targets = {"n_targets": len(target_names), "target_names": list(target_names),
               "target_units": list(target_units), "task": recipe_task(recipe)}
    shapes = getattr(config.data, "target_shapes", None)
    if shapes:  # vector/tensor targets: the model gets the targets and their shapes, the data has their columns
        targets = _shaped_targets(config.data, list(target_names), list(target_units), recipe)
        if "target_shapes" not in _accepted(cls, targets):
            raise ValueError(f"{cls.__name__} cannot predict vector or tensor targets ({shapes}); use CrystalFramer "
                             "with a frame method")
    if kwargs.get("task", targets["task"]) != targets["task"]:
        raise ValueError(f"model task {kwargs['task']!r} does not match the recipe's loss {recipe.loss!r} "
                         "(classification is chosen by loss: bce)")
    # Optional protocol keys are passed only to classes that accept them; model kwargs given explicitly win.
    kwargs = {**_accepted(cls, targets), **{k: v for k, v in kwargs.items() if k not in targets}}
    unknown = sorted(set(kwargs) - set(_accepted(cls, kwargs)))
    if unknown:
        known = sorted(k for k in inspect.signature(cls.__init__).parameters if k != "self")
        raise ValueError(f"unknown model settings {unknown} for {cls.__name__}; known: {known}")
    return cls(**kwargs)


def _shaped_targets(data: DataSpec, columns: list[str], units: list[str], recipe: Recipe) -> dict[str, Any]:
    """Model target settings of data with vector/tensor targets: names, shapes and one unit per target."""
    from crystalframer.geometry.tensors import n_columns

    names = list(data.targets or [])
    if data.columns != columns:
        raise ValueError(f"the data has the columns {columns}, expected {data.columns}")
    kinds = [data.target_shapes.get(t, "scalar") for t in names]
    starts = np.cumsum([0] + [n_columns(k) for k in kinds])[:-1]
    return {"n_targets": len(names), "target_names": names, "target_shapes": kinds,
            "target_units": [units[int(k)] for k in starts], "task": recipe_task(recipe)}


def recipe_task(recipe: Recipe) -> str:
    """The model task a recipe trains: ``"classification"`` for the BCE loss, else ``"regression"``."""
    return "classification" if recipe.loss == "bce" else "regression"


def check_model_task(model: torch.nn.Module, recipe: Recipe) -> str:
    """The model's task, checked against the recipe's loss (a regression model cannot learn with BCE)."""
    task = getattr(model, "task", "regression")
    if task != recipe_task(recipe):
        raise ValueError(f"the model is a {task} model but the recipe's loss is {recipe.loss!r}; use loss "
                         f"{'bce' if task == 'classification' else 'l1/mse/smooth_l1'} or another model")
    return task


@torch.no_grad()
def set_target_normalisation(model: torch.nn.Module, train: Sequence[Crystal], normalize: bool = True,
                             transform: str = "none") -> tuple[list[float], list[float]]:
    """Write the training split's mean and population std into ``model.target_mean/target_std``.

    ``normalize=False`` writes 0 and 1 (the model then learns the raw targets). ``transform="log"``: the
    statistics are those of log y (every training target must be > 0), and ``model.target_transform`` is set
    so that predictions are mapped back. Returns (mean, std).
    """
    n_t = int(model.target_mean.numel())
    if transform == "log":
        if getattr(model, "has_geometric_targets", False):
            raise ValueError("target_transform='log' applies to scalar targets, not to vector or tensor targets")
        bad = [c.id for c in train if not bool(np.all(np.asarray(c.targets, np.float64) > 0))]
        if bad:
            raise ValueError(f"target_transform='log' needs targets > 0; {len(bad)} training structures have "
                             f"others, e.g. {bad[:5]}")
    model.target_transform = transform
    if normalize:
        y = np.stack([np.asarray(c.targets, np.float64).reshape(-1) for c in train])
        y = np.log(y) if transform == "log" else y
        if y.shape[1] != n_t:
            raise ValueError(f"the training structures carry {y.shape[1]} targets, the model predicts {n_t}")
        mean, std = population_stats(y)
        if getattr(model, "has_geometric_targets", False):  # isotropic means, one scale per tensor
            from crystalframer.geometry.tensors import tensor_normalisation

            mean, std = tensor_normalisation(y, model.target_kinds)
    else:
        mean, std = np.zeros(n_t), np.ones(n_t)
    model.target_mean.copy_(torch.as_tensor(mean, dtype=model.target_mean.dtype))
    model.target_std.copy_(torch.as_tensor(std, dtype=model.target_std.dtype))
    return mean.tolist(), std.tolist()


# -- run folder --------------------------------------------------------------------------------------------


def _is_main_process() -> bool:
    """True in the launching process (rank 0 of node 0), before Lightning sets anything up."""
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        v = os.environ.get(key)
        if v not in (None, "", "0"):
            return False
    return True


def _default_run_dir(config: TrainConfig) -> Path:
    spec = config.data
    data = spec.dataset or Path(spec.source or spec.train or "data").stem.split(".")[0]
    frame = config.frame or config.model.get("frame", "model")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{data}-{frame}-{config.preset}-{stamp}"


def resolve_run_dir(config: TrainConfig, resume: bool | str = False) -> Path:
    if os.environ.get(RUN_DIR_ENV) and not _is_main_process():
        return Path(os.environ[RUN_DIR_ENV])
    if config.output:
        return Path(config.output)
    if isinstance(resume, str):
        p = Path(resume)
        return p.parent.parent if p.is_file() else p
    if config.num_nodes > 1:
        raise ValueError("multi-node runs need an explicit output folder (--output) shared by every node")
    return _default_run_dir(config)


#: What a finished or started run leaves in its folder; a new run without --resume must not replace these.
RUN_FILES = ("model.pt", "config.json", "config.yaml", "metrics.json", "history.csv", "predictions",
             "checkpoints")
#: The results of a finished run: never replaced by a run started over (even one asked to resume).
RUN_RESULTS = ("model.pt", "metrics.json", "predictions")


def check_new_run_dir(run_dir: Path, overwrite: bool = False, names: Sequence[str] = RUN_FILES) -> None:
    """Refuse to start a run in a folder that already holds one (any of ``names``; unless ``overwrite``), or
    that cannot be written. Raises ``FileExistsError`` naming the folder and what it holds."""
    held = [name for name in names if (run_dir / name).exists()]
    if held and not overwrite:
        raise FileExistsError(f"{run_dir} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                              "--overwrite to replace it, or choose another --output")
    check_writable_folder(run_dir, "run folder")


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], skip: Sequence[str] = ()) -> list[str]:
    """'key: old -> new' for every key whose JSON value differs."""
    old, new = jsonable(dict(old)), jsonable(dict(new))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in sorted(set(old) | set(new))
            if k not in skip and old.get(k) != new.get(k)]


#: Recipe fields that may change on resume (they do not change what is trained).
_RESUMABLE = ("val_batch_size", "test_batch_size", "max_skipped_steps")
#: Recipe fields that may change on resume while no SWA epoch has run under the old or the new plan: the LR
#: schedules other than the cosine never look at the total number of epochs, so until SWA starts the run is
#: the same as one started with the new length.
_LENGTH = ("epochs", "swa_epochs")


def _length_change_ok(ckpt: Mapping[str, Any], old: Mapping[str, Any], new: Recipe) -> bool:
    """Whether ``epochs``/``swa_epochs`` may change from ``old`` (the checkpoint's recipe) to ``new``: the
    checkpoint's run has not reached the SWA phase of either plan and the new run still has epochs to go. A
    cosine schedule is laid out over the planned length, so its run's length is fixed."""
    if new.schedule == "cosine" or old.get("schedule") == "cosine":
        return False
    done = int(ckpt.get("epoch", 0)) + 1  # Lightning stores the index of the epoch being (or just) trained
    try:
        old_start = int(old["epochs"]) - int(old["swa_epochs"])
    except (KeyError, TypeError, ValueError):
        return False
    return done <= min(old_start, new.swa_start_epoch) and new.epochs > done


def check_resume(ckpt: Mapping[str, Any], ckpt_path: Path, model: torch.nn.Module, recipe: Recipe,
                 splits: Splits, data_sha256: str) -> None:
    """Refuse to resume ``ckpt`` with another model class, architecture, recipe, targets or data.

    The run's length (``epochs``, ``swa_epochs``) may change, longer or shorter, as long as the run has not
    yet reached the SWA phase of the old or the new plan.

    ``ckpt`` is the Lightning checkpoint dict (its ``"crystalframer"`` header). Checkpoints written before
    the data digest was stored are checked on the split sizes instead. Raises ``ValueError`` listing every
    difference, before anything in the run folder is written.
    """
    header = ckpt.get("crystalframer")
    if not isinstance(header, Mapping):
        raise CheckpointError(f"checkpoint {ckpt_path}: not a crystalframer training checkpoint (no header)")
    info = header.get("training") or {}
    diffs = []
    if header.get("model_class") != type(model).__name__:
        diffs.append(f"model class: {header.get('model_class')!r} -> {type(model).__name__!r}")
    else:
        diffs += [f"model {d}" for d in _changes(header.get("config") or {}, getattr(model, "config", {}),
                                                 skip=("target_units",))]
    old_recipe = info.get("recipe") or {}
    skip = _RESUMABLE + (_LENGTH if _length_change_ok(ckpt, old_recipe, recipe) else ())
    diffs += [f"recipe {d}" for d in _changes(old_recipe, recipe.to_dict(), skip=skip)]
    if "cosine" in (recipe.schedule, old_recipe.get("schedule")) and any(
            old_recipe.get(k) != getattr(recipe, k) for k in _LENGTH):
        diffs.append("the cosine schedule is laid out over the planned number of epochs, so its length is fixed")
    if info.get("data_sha256") is not None:
        if info["data_sha256"] != data_sha256:
            diffs.append(f"data: SHA-256 {str(info['data_sha256'])[:12]}... -> {data_sha256[:12]}... (other "
                         f"structures or labels; split sizes {info.get('split_sizes')} -> {splits.sizes()})")
    elif info.get("split_sizes") is not None and dict(info["split_sizes"]) != splits.sizes():
        diffs.append(f"data split sizes: {info['split_sizes']} -> {splits.sizes()}")
    if diffs:
        raise ValueError(f"cannot resume from {ckpt_path}: this run differs from the one that wrote it: "
                         + "; ".join(diffs) + ". Resume with the run's own settings and data, or start a new "
                         "run with another --output")


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that reads only with ``torch.load(weights_only=True)``.

    Lightning would otherwise load the resume file itself, without ``weights_only`` on older versions (so
    the environment, e.g. ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, decides whether pickled code runs). The
    resume file is read once by :func:`train`, checked by :func:`check_resume`, and that same dict is
    handed to Lightning here (``preloaded``: (path, dict)).
    """

    def __init__(self, preloaded: tuple[Path, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.preloaded = preloaded

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict[str, Any]:
        if self.preloaded is not None and Path(path) == self.preloaded[0]:
            ckpt, self.preloaded = self.preloaded[1], None
            return ckpt
        return safe_torch_load(path, map_location="cpu")


def _write_config(run_dir: Path, config: TrainConfig, recipe: Recipe, model: torch.nn.Module,
                  splits: Splits, extra: dict[str, Any]) -> dict[str, Any]:
    doc = config.to_dict()
    doc["resolved"] = jsonable({
        "recipe": recipe.to_dict(), "model_class": type(model).__name__, "model_config": model.config,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "target_names": splits.target_names, "target_units": splits.target_units,
        "split_sizes": splits.sizes(), **extra,
    })
    doc["versions"] = {"crystalframer": library_version(), "torch": torch.__version__,
                       "lightning": _lightning_version(),
                       "python": ".".join(map(str, __import__("sys").version_info[:3]))}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(doc, indent=2, default=str))
    try:
        import yaml

        (run_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=False))
    except ImportError:  # pragma: no cover - PyYAML ships with lightning
        pass
    return doc


class _DropAdverts(logging.Filter):
    """Drops Lightning's start-up advertisement for its cloud logger (noise in every run's output)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.getMessage())


def _quiet_lightning() -> None:
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in log.filters):
        log.addFilter(_DropAdverts())


def _lightning_version() -> str:
    import lightning

    return lightning.__version__


# -- training ----------------------------------------------------------------------------------------------


def train(config: TrainConfig | Mapping[str, Any], resume: bool | str = False, splits: Splits | None = None,
          model: torch.nn.Module | None = None, callbacks: Sequence[Any] = (), verbose: bool = True,
          overwrite: bool = False) -> RunResult:
    """Train a model with the published recipe and evaluate the SWA and best-validation models.

    Args:
        config: a :class:`TrainConfig` or its dict.
        resume: continue the run in ``config.output`` from its ``checkpoints/last.ckpt`` (True), or from
            the given checkpoint path. A missing checkpoint starts the run from scratch. The checkpoint is
            read with ``weights_only=True`` and must match this run's model, recipe and data (checked
            before anything is written).
        splits: data already in memory (overrides ``config.data``).
        model: a protocol model to train (overrides ``model_type``/``model``); its target
            normalisation is overwritten with the training split's statistics.
        callbacks: extra Lightning callbacks.
        verbose: print a summary at the start and the metrics at the end (rank 0).
        overwrite: start a new run in a folder that already holds one (otherwise ``FileExistsError``).
    Returns:
        :class:`RunResult` (metrics, final and best models) on rank 0.
    """
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from crystalframer.training.callbacks import RunCheckpoint
    from crystalframer.training.module import CrystalPropertyModule

    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    recipe = config.resolved_recipe()
    main = _is_main_process()
    run_dir = resolve_run_dir(config, resume)
    ckpt_path: Path | None = None
    resume_ckpt: dict[str, Any] | None = None
    if resume:
        ckpt_path = (Path(resume) if isinstance(resume, str) and Path(resume).is_file()
                     else run_dir / "checkpoints" / "last.ckpt")
        if not ckpt_path.is_file():
            if main and verbose:
                print(f"no checkpoint at {ckpt_path}: starting the run from scratch")
            ckpt_path = None
        else:
            resume_ckpt = safe_torch_load(ckpt_path, map_location="cpu")  # never unpickles objects
            if not isinstance(resume_ckpt, dict):
                raise CheckpointError(f"checkpoint {ckpt_path}: not a crystalframer training checkpoint")
    if main and ckpt_path is None:
        # --resume of a run killed before its first checkpoint starts it again; finished results stay
        check_new_run_dir(run_dir, overwrite, RUN_RESULTS if resume else RUN_FILES)
    elif main:
        check_writable_folder(run_dir, "run folder")
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())  # inherited by the DDP processes Lightning launches

    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device`.*")
    # A resumed run appends to its CSV log (Lightning >= 2.2); the warning about deleting it is outdated.
    warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty.*")
    _quiet_lightning()
    L.seed_everything(recipe.seed, workers=True, verbose=False)

    if splits is None:
        splits = resolve_data(config.data)  # type: ignore[arg-type]
    if model is None:
        model = build_model(config, recipe, splits.target_names, splits.target_units)
    if hasattr(model, "filter_splits"):  # a model family's own data filter (ECN: disconnected graphs, warned)
        splits = model.filter_splits(splits)
    task = check_model_task(model, recipe)
    if task == "classification":
        for part in (splits.train, splits.val, splits.test):
            if part and all(c.targets is not None for c in part):
                check_binary_labels(np.stack([np.asarray(c.targets, np.float64).reshape(-1) for c in part]),
                                    splits.target_names, [c.id for c in part])
    check_labels(splits, task)
    data_sha256 = data_digest(splits)
    if resume_ckpt is not None:
        check_resume(resume_ckpt, ckpt_path, model, recipe, splits, data_sha256)  # type: ignore[arg-type]
    # classification: the head outputs logits of the raw 0/1 labels
    mean, std = set_target_normalisation(model, splits.train, recipe.normalize_targets and task == "regression",
                                         recipe.target_transform)

    steps_per_epoch = (len(splits.train) // recipe.batch_size if recipe.drop_last
                       else math.ceil(len(splits.train) / recipe.batch_size))
    run_info = {"data": config.data.to_dict() if isinstance(config.data, DataSpec) else config.data,
                "preset": config.preset, "recipe": recipe.to_dict(), "split_sizes": splits.sizes(),
                "target_mean": mean, "target_std": std, "seed": recipe.seed, "data_sha256": data_sha256}
    if main:
        _write_config(run_dir, config, recipe, model, splits, {"steps_per_epoch": steps_per_epoch,
                                                               "target_mean": mean, "target_std": std})
        if verbose:
            n_par = sum(p.numel() for p in model.parameters())
            print(f"run folder: {run_dir}\n{type(model).__name__} ({n_par:,} parameters), frame "
                  f"{getattr(model, 'config', {}).get('frame', '?')}; data {config.data.describe()}: "  # type: ignore[union-attr]
                  f"train/val/test {len(splits.train)}/{len(splits.val)}/{len(splits.test)}; targets "
                  f"{splits.target_names}; {recipe.epochs} epochs (SWA {recipe.swa_epochs}), batch {recipe.batch_size}"
                  + (f"; resuming from {ckpt_path}" if ckpt_path else ""))

    module = CrystalPropertyModule(model, recipe, run_info, steps_per_epoch=steps_per_epoch)
    dm = CrystalDataModule(splits.train, splits.val, model.collate, recipe.batch_size, recipe.val_batch_size,
                           recipe.seed, recipe.drop_last, config.num_workers)
    ckpt_cb = RunCheckpoint(run_dir, run_info)
    loggers = [CSVLogger(str(run_dir), name="", version="csv")]
    if config.tensorboard:
        loggers.append(TensorBoardLogger(str(run_dir), name="", version="tensorboard", default_hp_metric=False))
    cbs: list[Any] = [ckpt_cb, *callbacks]
    if config.progress_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        cbs.append(TQDMProgressBar(refresh_rate=max(1, steps_per_epoch // 20)))
    strategy = config.strategy
    if strategy == "auto" and _multi_device(config.devices, config.num_nodes):
        strategy = "ddp"
    trainer = L.Trainer(
        max_epochs=recipe.epochs, accelerator=config.accelerator, devices=config.devices,
        num_nodes=config.num_nodes, strategy=strategy, precision=config.precision, logger=loggers,
        callbacks=cbs, default_root_dir=str(run_dir), num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, steps_per_epoch)), enable_progress_bar=config.progress_bar,
        enable_model_summary=False, use_distributed_sampler=False, deterministic=False,
        check_val_every_n_epoch=1,
        plugins=[SafeCheckpointIO((ckpt_path, resume_ckpt) if resume_ckpt is not None else None)],
    )
    t0 = time.perf_counter()
    with flush_denormals():  # far images' weights are denormal floats, slow on x86 CPUs
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
        finally:
            if main:
                os.environ.pop(RUN_DIR_ENV, None)
        fit_time = time.perf_counter() - t0
        if not trainer.is_global_zero:
            return RunResult(run_dir, {}, history=module.history)
        return _finish(run_dir, config, recipe, module, ckpt_cb, splits, trainer, fit_time, verbose)


def _multi_device(devices: Any, num_nodes: int) -> bool:
    if num_nodes > 1:
        return True
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if isinstance(devices, str):
        if devices.strip() in ("auto", "-1"):
            return torch.cuda.device_count() > 1
        try:
            return int(devices) > 1 or int(devices) == -1 and torch.cuda.device_count() > 1
        except ValueError:
            return "," in devices
    return int(devices) > 1 or (int(devices) == -1 and torch.cuda.device_count() > 1)


def _val_stats(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of the validation-loss history (the official hp/min, hp/mean_min10, hp/avr50)."""
    v = np.array([h.get("val_loss", math.nan) for h in history], dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {}
    out = {"val_loss_min": float(v.min()), "val_loss_mean_min10": float(np.sort(v)[:10].mean()),
           "val_loss_last": float(v[-1])}
    if v.size >= 50:
        avr = np.convolve(v, np.ones(50) / 50, mode="valid")
        out["val_loss_min_avr50"] = float(avr.min())
        out["val_loss_avr50"] = float(avr[-1])
    return out


def _finish(run_dir: Path, config: TrainConfig, recipe: Recipe, module, ckpt_cb, splits: Splits, trainer,
            fit_time: float, verbose: bool) -> RunResult:
    """Evaluate the SWA and best models on val/test; write metrics, predictions, plots and model.pt."""
    from crystalframer.training.callbacks import write_history_csv
    from crystalframer.training.plots import learning_curves, parity_plot

    device = trainer.strategy.root_device
    eval_bs = config.eval_batch_size or recipe.test_batch_size or recipe.val_batch_size or recipe.batch_size
    live = module.model
    final_name = "swa" if module.swa is not None and module.swa.n_averaged > 0 else "last"
    final = module.swa_model().to(device).eval()
    best = (load(ckpt_cb.best_path, map_location=device, model_class=type(live)) if ckpt_cb.best_path.exists()
            else copy.deepcopy(live))
    models = {final_name: final, "best": best}
    metrics: dict[str, Any] = {
        "final_model": final_name, "target_names": splits.target_names, "target_units": splits.target_units,
        "epochs": int(trainer.current_epoch), "global_steps": int(trainer.global_step),
        "best_epoch": int(ckpt_cb.best_epoch), "best_val_loss": float(ckpt_cb.best_val_loss),
        "swa_averaged_steps": int(module.swa.n_averaged) if module.swa is not None else 0,
        "skipped_steps": int(module.skipped_steps), "fit_time_s": float(fit_time),
        "num_parameters": int(sum(p.numel() for p in live.parameters())),
        "split_sizes": splits.sizes(), **_val_stats(module.history),
    }
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    log_flat: dict[str, float] = {}
    for name, m in models.items():
        metrics[name] = {}
        for split in ("val", "test"):
            crystals = getattr(splits, split)
            if not crystals:
                continue
            t = time.perf_counter()
            res, preds = evaluate_crystals(m, crystals, eval_bs, device)
            metrics[name][split] = res
            metrics[name][f"{split}_time_s"] = time.perf_counter() - t
            write_predictions_csv(run_dir / "predictions" / f"{name}_{split}.csv", preds)
            panels.setdefault(split, {})[f"{name.upper() if name == 'swa' else name}"] = (preds.y_true, preds.y_pred)
            for tname, r in res.items():
                tag = f"{split}-{name}" if name != "best" else split
                for key in ("mae", "rmse", "r2", "accuracy", "roc_auc", "recall", "recall_0", "log_loss"):
                    if key in r:
                        log_flat[f"{tag}/{key}_{tname}"] = r[key]
    (run_dir / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2))
    for lg in trainer.loggers:
        try:
            lg.log_metrics({k: v for k, v in log_flat.items() if math.isfinite(v)}, step=int(trainer.global_step))
            lg.save()
        except Exception as e:  # noqa: BLE001 - a logger failure must not lose the results
            warnings.warn(f"could not log final metrics to {type(lg).__name__}: {e}")
    write_history_csv(module.history, run_dir / "history.csv")
    final_cpu = final.to("cpu")
    save_model(final_cpu, run_dir / "model.pt",
               training={**module.run_info, "selection": final_name, "epochs": int(trainer.current_epoch),
                         "metrics": {k: metrics[final_name].get(k) for k in ("val", "test")}})
    if config.plots:
        for split, panel in (panels.items() if getattr(live, "task", "regression") == "regression" else ()):
            parity_plot(panel, splits.target_names, splits.target_units, run_dir / f"parity_{split}.png",
                        title=f"{split} set")
        if module.history:
            learning_curves(module.history, run_dir / "learning_curves.png",
                            recipe.swa_start_epoch if module.swa is not None else None,
                            splits.target_names, splits.target_units)
    if verbose:
        print(format_metrics(metrics))
    return RunResult(run_dir, metrics, final_cpu, best.to("cpu"), list(module.history))


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Human-readable summary of ``metrics.json`` (the test metrics of the final and best models first)."""
    lines = []
    names, units = metrics.get("target_names", []), metrics.get("target_units", [])
    final = metrics.get("final_model", "swa")
    for split in ("test", "val"):
        for which in (final, "best"):
            res = (metrics.get(which) or {}).get(split)
            if not res:
                continue
            for t in [*names, *(t for t in res if t not in names)]:  # then each vector/tensor target's own line
                unit = next((u for n, u in zip(names, units) if n == t or n.startswith(f"{t}[")), "")
                lines.append(f"{split} {which:>4} {t}: {format_target_metrics(res[t], unit)}")
    if metrics.get("best_epoch", -1) >= 0:
        lines.append(f"best epoch {metrics['best_epoch'] + 1} "
                     f"(val loss {metrics.get('best_val_loss', float('nan')):.6g}); "
                     f"{metrics.get('epochs')} epochs, {metrics.get('global_steps')} steps, "
                     f"{metrics.get('fit_time_s', 0):.1f} s")
    return "\n".join(lines)
