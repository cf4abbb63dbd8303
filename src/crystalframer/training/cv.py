"""k-fold cross-validation: one model (or a small seed ensemble) per fold, each fold's test rows predicted once.

Protocol. The rows are cut into k test folds (seeded :func:`~crystalframer.data.sources.matbench.kfold_test_indices`,
the official Matbench folds, or a JSON file of ids per fold). For fold k the model trains on the other folds
only; its validation rows (for the best-epoch checkpoint and for choosing settings) are drawn, seeded, from
those training rows, never from fold k. The test rows of fold k are predicted once, by the final model (the
SWA average, or ``select="best"``: the best-validation checkpoint); an ensemble averages its members'
predictions.

Run folder::

    cv.json                the settings of the run (a rerun with other settings is refused)
    fold_<k>/fold.json     one finished fold, written atomically: test ids, predictions, labels, train/val
                           ids, metrics, wall time (a rerun skips folds that have it)
    fold_<k>/member_<j>/   the training run of ensemble member j (resumed from its last epoch after a kill)
    results.json           every finished fold: ``{"folds": {"fold_0": {"ids", "predictions", ...}}, "wall_s",
                           "metrics", "settings", "versions", ...}``
    summary.md             per-fold table and the mean ± std beside the published leaderboard (Matbench)
    parity.png             predicted vs true over the test rows of every finished fold

A vector or tensor target (``config.data.target_shapes``, e.g. ``{"e_electronic": "3x3sym"}``) is scored per
fold with the tensor metrics of :meth:`~crystalframer.training.evaluation.Predictions.metrics` (mean Frobenius
error, relative error, EwT 25/10/5 % and the mean component MAE); its predictions and labels are stored per row
as the flattened components (``results["columns"]``, row-major) and the parity plot pools the components.

Folds may run in parallel processes (``jobs``), each with ``cores // jobs`` torch threads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from crystalframer.atomic import atomic_open
from crystalframer.checkpoint import jsonable, library_version
from crystalframer.data.datasets import CrystalDataset
from crystalframer.data.sources.matbench import MATBENCH_SEED, kfold_test_indices, load_matbench, matbench_ids
from crystalframer.data.splits import split_indices
from crystalframer.data.structures import Crystal
from crystalframer.geometry.tensors import column_names

__all__ = ["CVResult", "cross_validate", "fold_sets", "read_fold_file", "fold_metrics", "read_leaderboard",
           "JDFT2D_LEADERBOARD", "MATBENCH_UNITS", "TENSOR_KEYS"]

#: Units of the Matbench v0.1 targets.
MATBENCH_UNITS = {"exfoliation_en": "meV/atom", "last phdos peak": "cm^-1", "n": "", "log10(G_VRH)": "log10(GPa)",
                  "log10(K_VRH)": "log10(GPa)", "e_form": "eV/atom", "gap pbe": "eV"}

#: Published Matbench v0.1 ``matbench_jdft2d`` 5-fold mean test MAE ± std (meV/atom), as printed in the
#: "Fold score stats" of ``docs_src/Full Benchmark Data/matbench_v0.1_<algorithm>.md`` of
#: github.com/materialsproject/matbench at commit 936176db18ca4cd7b38cbd957c017a5bac770c6b.
JDFT2D_LEADERBOARD: dict[str, tuple[float, float]] = {
    "MODNet v0.1.12": (33.19, 7.34), "coNGN": (36.17, 11.60), "coGN": (37.17, 13.68),
    "SchNet (kgcnn 2.1.0)": (42.66, 13.72), "ALIGNN": (43.42, 8.95), "DeeperGATGNN": (45.46, 11.68),
    "CrabNet (composition only)": (45.61, 12.25), "DimeNet++ (kgcnn 2.1.0)": (49.02, 11.90),
    "CGCNN (v2019)": (49.24, 11.59), "RF-SCM/Magpie": (50.04, 8.63), "MEGNet (kgcnn 2.1.0)": (54.17, 11.43),
    "Dummy (predicts the mean)": (67.29, 10.18),
}
#: Per-fold metrics of a vector/tensor target summarised over folds (see ``Predictions.metrics``).
TENSOR_KEYS = ("fnorm", "rel_fnorm", "ewt25", "ewt10", "ewt5", "mae")

LEADERBOARD_SOURCE = ("Matbench v0.1 leaderboard: github.com/materialsproject/matbench @ 936176db, "
                      "docs_src/Full Benchmark Data, 'Fold score stats' (mae)")


@dataclass
class CVResult:
    """What :func:`cross_validate` returns.

    Attributes:
        run_dir: the run folder.
        results: the content of ``results.json``.
        trained: the folds trained by this call (the others were finished before and skipped).
    """

    run_dir: Path
    results: dict[str, Any]
    trained: list[int] = field(default_factory=list)

    @property
    def mae(self) -> float:
        """Mean over the finished folds of the test MAE (of a vector/tensor target: the mean component MAE)."""
        return float(self.results["metrics"]["mae_mean"])


# -- folds and metrics ----------------------------------------------------------------------------------------


def fold_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and max absolute error of one target over the labelled rows (NaN labels left out)."""
    t, p = np.asarray(y_true, np.float64).reshape(-1), np.asarray(y_pred, np.float64).reshape(-1)
    ok = np.isfinite(t)
    err = p[ok] - t[ok]
    if not err.size:
        return {"mae": math.nan, "rmse": math.nan, "max_error": math.nan, "n": 0}
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "max_error": float(np.max(np.abs(err))), "n": int(err.size)}


def fold_sets(crystals: Sequence[Crystal], test_ids: Sequence[str], fold: int, val_fraction: float = 0.1,
              val_seed: int = 0) -> tuple[list[Crystal], list[Crystal], list[Crystal]]:
    """(train, val, test) crystals of one fold: test = ``test_ids`` in that order; val = a seeded share
    ``val_fraction`` of the other rows (:func:`~crystalframer.data.splits.split_indices` with seed
    ``val_seed + fold``); train = the rest, in data order."""
    by_id = {c.id: c for c in crystals}
    test = set(test_ids)
    pool = [c for c in crystals if c.id not in test]
    if float(val_fraction) > 0:
        idx = split_indices(len(pool), (1 - float(val_fraction), float(val_fraction), 0.0), int(val_seed) + int(fold))
        train_set, val_set = [pool[i] for i in sorted(idx["train"])], [pool[i] for i in sorted(idx["val"])]
    else:
        train_set, val_set = list(pool), []
    return train_set, val_set, [by_id[x] for x in test_ids]


def read_fold_file(path: str | os.PathLike, ids: Sequence[str]) -> list[list[str]]:
    """Test ids of each fold from a JSON file.

    Accepted layouts: ``{"folds": {"fold_0": ..., "fold_1": ...}}``, the same mapping without the ``folds``
    key, or a list; each fold is a list of ids, ``{"test_ids": [...]}``, or ``{"test_rows": [...]}`` (0-based
    positions in ``ids``, i.e. in the file's rows). Folds must be disjoint and name known ids.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"fold file {path}: cannot read it ({e})") from None
    if isinstance(doc, dict) and "folds" in doc:
        doc = doc["folds"]
    if isinstance(doc, dict):
        keys = sorted(doc, key=lambda k: int(re.sub(r"\D", "", str(k)) or 0))
        items = [doc[k] for k in keys]
    elif isinstance(doc, list):
        items = doc
    else:
        raise ValueError(f"fold file {path}: expected a list of folds or a mapping fold name -> ids")
    known = set(ids)
    out: list[list[str]] = []
    for k, item in enumerate(items):
        if isinstance(item, dict) and "test_rows" in item:
            rows = [int(r) for r in item["test_rows"]]
            bad = [r for r in rows if not 0 <= r < len(ids)]
            if bad:
                raise ValueError(f"fold file {path}: fold {k} has rows {bad[:3]} outside 0..{len(ids) - 1}")
            fold = [ids[r] for r in rows]
        elif isinstance(item, dict) and "test_ids" in item:
            fold = [str(x) for x in item["test_ids"]]
        elif isinstance(item, list):
            fold = [str(x) for x in item]
        else:
            raise ValueError(f"fold file {path}: fold {k} is neither a list of ids nor has test_ids/test_rows")
        missing = [x for x in fold if x not in known]
        if missing:
            raise ValueError(f"fold file {path}: fold {k} names {len(missing)} ids not in the data "
                             f"(first: {missing[:3]})")
        out.append(fold)
    if len(out) < 2:
        raise ValueError(f"fold file {path}: needs at least 2 folds, got {len(out)}")
    seen: dict[str, int] = {}
    for k, fold in enumerate(out):
        for x in fold:
            if x in seen:
                raise ValueError(f"fold file {path}: id {x!r} is in folds {seen[x]} and {k}")
            seen[x] = k
    return out


# -- data ------------------------------------------------------------------------------------------------------


@dataclass
class _Data:
    crystals: list[Crystal]
    target_names: list[str]  # the label columns (a vector/tensor target: its flattened components)
    target_units: list[str]  # one per column
    folds: list[list[str]]  # test ids per fold
    description: dict[str, Any]
    skipped: list[tuple[int, str, str]]
    target: str = ""  # the target's name
    kind: str = "scalar"  # its shape (crystalframer.geometry.tensors kinds: scalar, 3, 3x3, 3x3sym, 6x6)


def _dataset_crystals(spec) -> tuple[list[Crystal], list[str], list[tuple[int, str, str]]]:
    """Every crystal of a DataSpec (all its splits) with the spec's label columns (vector/tensor targets
    flattened)."""
    from crystalframer.training.data import load_source, select_targets

    shapes = spec.target_shapes
    if spec.dataset:
        from crystalframer.data.sources.shared import load_shared

        if not spec.root:
            raise ValueError(f"shared data set {spec.dataset!r} needs a data root (--data-root)")
        shaped = dict(targets=spec.targets, target_shapes=shapes) if shapes else {}
        parts = [load_shared(spec.dataset, spec.root, **spec.load_options, **shaped)]
    elif spec.source:
        parts = [load_source(spec.source, spec.targets, spec.load_options, shapes)]
    elif spec.train:
        parts = [load_source(p, spec.targets, spec.load_options, shapes) for p in (spec.train, spec.val, spec.test)
                 if p]
    else:
        raise ValueError("no data given: a Matbench file, a shared data set (dataset + root), or a source file")
    crystals, names, errors = [], [], []
    for ds in parts:
        c, names = select_targets(ds, spec.columns)
        crystals += c
        errors += [tuple(e) for e in getattr(ds, "errors", [])]
    return crystals, list(names), errors


def _resolve(config, matbench: str | os.PathLike | None, data: Sequence[Crystal] | CrystalDataset | None,
             n_folds: int, fold_seed: int | None, fold_file: str | os.PathLike | None) -> _Data:
    from crystalframer.training.data import column_units

    spec = config.data
    shapes = spec.target_shapes or {}
    if shapes and len(spec.targets or []) != 1:
        raise ValueError(f"cross-validation scores one target (a scalar, vector or tensor); got {spec.targets} "
                         "(choose one with --targets)")
    if matbench is not None and shapes:
        raise ValueError(f"Matbench tasks have one scalar target; target shapes {shapes} do not apply")
    if matbench is not None:
        task = load_matbench(matbench, **{k: v for k, v in spec.load_options.items() if k in ("on_error", "cache_dir")})
        crystals, names = list(task.dataset), [task.target]
        units = list(spec.units or [MATBENCH_UNITS.get(task.target, "")])
        all_ids = matbench_ids(task.task, task.n_rows)  # every file row, read or not
        skipped = [tuple(e) for e in task.dataset.errors]
        desc = {"matbench": str(matbench), "task": task.task, "rows": task.n_rows}
    elif data is not None:
        crystals = list(data)
        names = list(getattr(data, "target_names", None) or spec.columns or [])
        units = column_units(spec, names)
        all_ids, skipped = [c.id for c in crystals], list(getattr(data, "errors", []))
        desc = {"data": getattr(data, "name", "in memory"), "rows": len(crystals)}
    else:
        crystals, names, skipped = _dataset_crystals(spec)
        units = column_units(spec, names)
        all_ids = [c.id for c in crystals]
        desc = spec.to_dict()
    target = spec.targets[0] if shapes else (names[0] if len(names) == 1 else "")
    kind = shapes.get(target, "scalar")
    if kind == "scalar" and len(names) != 1:
        raise ValueError(f"cross-validation scores one target; the data has {names or 'none'} "
                         "(choose one with --targets)")
    if kind != "scalar" and names != column_names(target, kind):
        raise ValueError(f"the data has the columns {names}, expected the {kind} components of {target!r} "
                         f"{column_names(target, kind)}")
    if not crystals:
        raise ValueError("no structures to cross-validate")
    if any(c.targets is None for c in crystals):
        raise ValueError("the structures carry no labels for the target")
    if kind != "scalar" and not any(np.isfinite(np.asarray(c.targets, np.float64)).all() for c in crystals):
        raise ValueError(f"no structure has a readable {kind} label for {target!r} (every value is missing or "
                         f"has another shape); check --target-shape {target}=... against the data")
    seen: set[str] = set()
    for c in crystals:
        if c.id in seen:
            raise ValueError(f"id {c.id!r} appears twice; cross-validation keys predictions by id")
        seen.add(c.id)
    if fold_file is not None:
        folds = read_fold_file(fold_file, all_ids)
        desc["fold_file"] = str(fold_file)
    else:
        folds = [[all_ids[i] for i in f] for f in kfold_test_indices(len(all_ids), n_folds, fold_seed)]
        desc["fold_seed"] = fold_seed
    # rows that could not be read stay out of the folds (reported in results.json)
    folds = [[x for x in f if x in seen] for f in folds]
    return _Data(crystals, names, units, folds, desc, [tuple(e) for e in skipped], target, kind)


# -- one fold ---------------------------------------------------------------------------------------------------


def _fold_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Train the members of one fold and predict its test rows once; write ``fold.json`` atomically."""
    import torch

    from crystalframer.training.data import Splits
    from crystalframer.training.evaluation import Predictions, predict_crystals
    from crystalframer.training.trainer import TrainConfig, train

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    t0, c0 = time.perf_counter(), time.process_time()
    fold_dir = Path(job["fold_dir"])
    train_set, val_set, test_set = job["train"], job["val"], job["test"]
    names, units = job["target_names"], job["target_units"]
    kind = job.get("kind", "scalar")
    target = job.get("target") or names[0]
    preds, members = [], []
    for j in range(int(job["ensemble"])):
        cfg = TrainConfig.from_dict(copy.deepcopy(job["config"]))
        cfg.output = str(fold_dir / f"member_{j}")
        cfg.recipe = {**cfg.recipe, "seed": int(cfg.resolved_recipe().seed) + j}
        if job.get("losses"):
            cfg.recipe["loss"] = job["losses"][j]
        tj = time.perf_counter()
        res = train(cfg, resume=True, splits=Splits(list(train_set), list(val_set), [], names, units),
                    verbose=bool(job.get("verbose")))
        model = res.best_model if job["select"] == "best" else res.model
        final = res.metrics.get("final_model", "swa")
        val = (res.metrics.get("best" if job["select"] == "best" else final) or {}).get("val") or {}
        p = predict_crystals(model, test_set, int(job["eval_batch_size"]), "cpu")
        y = p.y_pred[:, 0] if kind == "scalar" else p.y_pred  # (n,) or (n, components)
        preds.append(y)
        val_t = val.get(target) or {}  # a tensor target's val metrics: component MAE and Frobenius error
        members.append({"seed": cfg.recipe["seed"], "loss": cfg.resolved_recipe().loss, "predictions": y.tolist(),
                        "val_mae": val_t.get("mae"), **({"val_fnorm": val_t.get("fnorm")} if kind != "scalar" else {}),
                        "best_epoch": res.metrics.get("best_epoch"), "epochs": res.metrics.get("epochs"),
                        "fit_time_s": res.metrics.get("fit_time_s"), "wall_s": time.perf_counter() - tj})
    y_pred = np.mean(np.stack(preds), axis=0)
    if kind == "scalar":
        y_true = np.array([float(np.asarray(c.targets, np.float64)[0]) for c in test_set])
        metrics = fold_metrics(y_true, y_pred)
    else:
        y_true = np.stack([np.asarray(c.targets, np.float64).reshape(-1) for c in test_set])
        scored = Predictions([c.id for c in test_set], y_pred, y_true, list(names), list(units),
                             tensors={target: kind}).metrics()
        metrics = {**scored[target], "components": {c: scored[c] for c in names}}
    record = {
        "fold": int(job["fold"]), "settings_key": job["settings_key"],
        "ids": [c.id for c in test_set], "predictions": y_pred.tolist(), "true": y_true.tolist(),
        "train_ids": [c.id for c in train_set], "val_ids": [c.id for c in val_set],
        "metrics": metrics,
        "val_mae": _mean_of(members, "val_mae"),
        **({"val_fnorm": _mean_of(members, "val_fnorm")} if kind != "scalar" else {}),
        "members": members, "threads": torch.get_num_threads(), "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,  # CPU time of every thread: the cost on a machine shared with others
    }
    with atomic_open(fold_dir / "fold.json", "w") as f:
        json.dump(jsonable(record), f)
    return record


def _mean_of(members: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """Mean of the members' ``key`` where they have it (None where none has)."""
    vals = [m[key] for m in members if m.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _read_fold(fold_dir: Path, key: str) -> dict[str, Any] | None:
    p = fold_dir / "fold.json"
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None  # atomic writes make this unlikely; a damaged record is redone
    return rec if rec.get("settings_key") == key else None


# -- leaderboard and summary ------------------------------------------------------------------------------------


def read_leaderboard(path: str | os.PathLike, task: str) -> dict[str, tuple[float, float | None]]:
    """{algorithm: (mean, std)} of the column of ``task`` (e.g. ``jdft2d``) in a markdown leaderboard table
    whose cells read ``37.17 ± 13.68`` (bold markers and a missing std are accepted)."""
    rows: dict[str, tuple[float, float | None]] = {}
    col: int | None = None
    in_table = False
    for line in Path(path).read_text().splitlines():
        if not line.strip().startswith("|"):
            in_table, col = False, None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table:  # the header row of a table
            in_table = True
            col = next((k for k, c in enumerate(cells) if re.split(r"[\s(]", c)[0].lower() == task.lower()), None)
            continue
        if col is None or col >= len(cells) or set("".join(cells)) <= set("-: "):
            continue
        m = re.match(r"\**\s*([-+0-9.eE]+)\s*(?:±\s*([0-9.eE]+))?", cells[col])
        if m:
            rows[cells[0].strip("* ")] = (float(m.group(1)), float(m.group(2)) if m.group(2) else None)
    if not rows:
        raise ValueError(f"{path}: no table with a {task!r} column")
    return rows


def _summary_md(results: Mapping[str, Any], name: str, board: Mapping[str, tuple[float, float | None]] | None,
                board_source: str) -> str:
    unit = results["target_unit"]
    u = f" ({unit})" if unit else ""
    lines = [f"# {results['title']}: {len(results['folds'])}-fold cross-validation, {name}", "",
             f"Target `{results['target']}`{u}; command: `{results['settings'].get('command', '')}`", "",
             f"| fold | test rows | MAE{u} | RMSE | max error | inner val MAE | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    for k, f in results["folds"].items():
        m = f["metrics"]
        vm = f"{f['val_mae']:.2f}" if f.get("val_mae") is not None else "-"
        lines.append(f"| {k} | {m['n']} | {m['mae']:.2f} | {m['rmse']:.2f} | {m['max_error']:.1f} | {vm} | "
                     f"{f['wall_s']:.0f} | {f.get('cpu_s') or 0:.0f} |")
    s = results["metrics"]
    lines.append(f"| **mean ± std** | {s['n']} | **{s['mae_mean']:.2f} ± {s['mae_std']:.2f}** | "
                 f"{s['rmse_mean']:.2f} | {s['max_error_max']:.1f} | | {results['wall_s']:.0f} | "
                 f"{results['cpu_s']:.0f} |")
    lines += ["", f"Total: {results['wall_s']:.0f} s of fold time, {results['cpu_s']:.0f} s of CPU time "
              f"({results['run_wall_s']:.0f} s wall for the command); std over folds with ddof 0 (as Matbench).", ""]
    if board:
        lines += ["## Beside the published leaderboard (mean ± std over folds of the test MAE"
                  f"{', ' + unit if unit else ''})", "",
                  "| algorithm | MAE |", "|---|---|"]
        entries = [(k, v[0], v[1], False) for k, v in board.items()]
        entries.append((f"**crystalframer {name} (this run)**", s["mae_mean"], s["mae_std"], True))
        for alg, mean, std, ours in sorted(entries, key=lambda e: e[1]):
            val = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
            lines.append(f"| {alg} | {'**' + val + '**' if ours else val} |")
        lines += ["", f"Published rows: {board_source}.", ""]
        if len(results["folds"]) < results["settings"]["n_folds"]:
            lines += [f"Only {len(results['folds'])} of {results['settings']['n_folds']} folds are finished: "
                      "the mean is not comparable with the published 5-fold means yet.", ""]
    return "\n".join(lines)


def _tensor_summary_md(results: Mapping[str, Any]) -> str:
    """Per-fold table of a vector/tensor target: Frobenius error, relative error, EwT, component MAE."""
    unit = results["target_unit"]
    u = f" ({unit})" if unit else ""
    lines = [f"# {results['title']}: {len(results['folds'])}-fold cross-validation, {results['model']}", "",
             f"Target `{results['target']}` ({results['target_shape']}, {len(results['columns'])} components)"
             f"{u}; command: `{results['settings'].get('command', '')}`", "",
             "Per structure: ‖ΔT‖_F = Frobenius norm of predicted − true tensor, relative error ‖ΔT‖_F/‖T‖_F, "
             "EwT p % = share of structures with relative error below p %; component MAE = mean over the "
             "components of their MAE. The parity plot pools every component of every test row.", "",
             f"| fold | test rows | ‖ΔT‖_F{u} | relative error | EwT 25 % | EwT 10 % | EwT 5 % | component MAE{u} | "
             "inner val ‖ΔT‖_F | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, f in results["folds"].items():
        m = f["metrics"]
        vf = f"{f['val_fnorm']:.4g}" if f.get("val_fnorm") is not None else "-"
        lines.append(f"| {k} | {m['n']} | {m['fnorm']:.4g} | {m['rel_fnorm']:.3f} | {100 * m['ewt25']:.1f} % | "
                     f"{100 * m['ewt10']:.1f} % | {100 * m['ewt5']:.1f} % | {m['mae']:.4g} | {vf} | "
                     f"{f['wall_s']:.0f} | {f.get('cpu_s') or 0:.0f} |")
    s = results["metrics"]
    lines.append(f"| **mean ± std** | {s['n']} | **{s['fnorm_mean']:.4g} ± {s['fnorm_std']:.2g}** | "
                 f"{s['rel_fnorm_mean']:.3f} ± {s['rel_fnorm_std']:.3f} | "
                 + " | ".join(f"{100 * s[f'ewt{p}_mean']:.1f} ± {100 * s[f'ewt{p}_std']:.1f} %" for p in (25, 10, 5))
                 + f" | {s['mae_mean']:.4g} ± {s['mae_std']:.2g} | | {results['wall_s']:.0f} | "
                 f"{results['cpu_s']:.0f} |")
    lines += ["", f"Total: {results['wall_s']:.0f} s of fold time, {results['cpu_s']:.0f} s of CPU time "
              f"({results['run_wall_s']:.0f} s wall for the command); std over folds with ddof 0.", ""]
    return "\n".join(lines)


# -- the run -----------------------------------------------------------------------------------------------------


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _settings_key(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(jsonable(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]


def cross_validate(config: Any, output: str | os.PathLike, *, matbench: str | os.PathLike | None = None,
                   data: Sequence[Crystal] | CrystalDataset | None = None, n_folds: int = 5,
                   fold_seed: int | None = MATBENCH_SEED, fold_file: str | os.PathLike | None = None,
                   folds: Sequence[int] | None = None, val_fraction: float = 0.1, val_seed: int = 0,
                   ensemble: int = 1, ensemble_losses: Sequence[str] | None = None, select: str = "final",
                   jobs: int = 1, leaderboard: str | os.PathLike | None = None,
                   name: str | None = None, command: str = "", verbose: bool = True) -> CVResult:
    """k-fold cross-validation of a model configuration.

    Args:
        config: a :class:`~crystalframer.training.trainer.TrainConfig` (or its dict): model, recipe and the
            data (``config.data``, read with all its splits) unless ``matbench`` or ``data`` is given. One
            target; ``config.data.target_shapes`` makes it a vector or tensor (scored with Frobenius error,
            EwT and component MAE).
        output: the run folder (rerunning with the same settings skips finished folds).
        matbench: a Matbench task file; ids ``mb-<task>-NNN``, official folds by default.
        data: crystals in memory (with one target; a vector/tensor target as its flattened components),
            instead of ``config.data``.
        n_folds, fold_seed: the k-fold split (``KFold(n_folds, shuffle=True, random_state=fold_seed)``;
            the default seed gives Matbench's folds); ``fold_file``: test ids per fold instead.
        folds: run only these folds (0-based); the others are left for later calls.
        val_fraction: share of each fold's training rows held out for validation (seeded by
            ``val_seed + fold``); 0 trains on all of them (no best-epoch model then).
        ensemble: models per fold (seeds recipe seed + 0..ensemble−1), test predictions averaged.
        ensemble_losses: one training loss per member (e.g. ``["l1", "mse"]``; sets ``ensemble`` to its length).
            Members trained with different losses err on different rows (on a heavy-tailed target an L1 model
            fits the bulk, an MSE model the tail), which a seed ensemble of one loss does not give; whether the
            average pays for its cost depends on the data (measure it on validation rows).
        select: ``"final"`` (SWA average, or last weights without SWA) or ``"best"`` (best validation epoch).
        jobs: folds trained at once in separate processes, each with ``os.cpu_count() // jobs`` threads.
        leaderboard: a markdown leaderboard table to print beside (default for jdft2d: the published rows).
        name: label of this model in the summary (default ``<frame>-<preset>``).
        command: the command line, recorded in the settings.
    Returns:
        :class:`CVResult`; ``results.json``, ``summary.md`` and ``parity.png`` are in ``output``.
    """
    from crystalframer.training.trainer import TrainConfig

    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    if select not in ("final", "best"):
        raise ValueError(f"select must be 'final' or 'best', got {select!r}")
    if not 0 <= float(val_fraction) < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if ensemble_losses is not None:
        ensemble_losses = [str(loss) for loss in ensemble_losses]
        if not ensemble_losses or (int(ensemble) != 1 and int(ensemble) != len(ensemble_losses)):
            raise ValueError(f"ensemble_losses {ensemble_losses} must name one loss per member "
                             f"(ensemble={ensemble})")
        for loss in ensemble_losses:  # fails before any fold starts
            config.resolved_recipe().replace(loss=loss)
        ensemble = len(ensemble_losses)
    if int(ensemble) < 1 or int(jobs) < 1:
        raise ValueError("ensemble and jobs must be >= 1")
    if select == "best" and float(val_fraction) == 0:
        raise ValueError("select='best' needs validation rows (val_fraction > 0)")
    t_start = time.perf_counter()
    d = _resolve(config, matbench, data, n_folds, fold_seed, fold_file)
    k_all = len(d.folds)
    todo = list(range(k_all)) if folds is None else sorted({int(k) for k in folds})
    bad = [k for k in todo if not 0 <= k < k_all]
    if bad:
        raise ValueError(f"folds {bad} do not exist (0..{k_all - 1})")
    run_dir = Path(output)
    cfg_doc = config.to_dict()
    cfg_doc["output"] = None
    cfg_doc.update(progress_bar=False)
    settings = {"config": cfg_doc, "data": d.description, "n_folds": k_all,
                "fold_ids_sha256": hashlib.sha256(json.dumps(d.folds).encode()).hexdigest(),
                "val_fraction": float(val_fraction), "val_seed": int(val_seed), "ensemble": int(ensemble),
                "select": select, "target": d.target}
    if ensemble_losses is not None:  # only when given: the settings keys of earlier runs stay as they were
        settings["ensemble_losses"] = ensemble_losses
    if d.kind != "scalar":  # only then: the settings (and their key) of scalar runs are as before
        settings["target_shape"] = d.kind
        if leaderboard is not None:
            raise ValueError(f"a leaderboard lists scalar MAEs; it does not apply to the {d.kind} target "
                             f"{d.target!r}")
    # Output-only switches (figures, logs, progress) may change between a run and its resumption.
    key = _settings_key({**settings, "config": {k: v for k, v in cfg_doc.items()
                                                if k not in ("plots", "tensorboard", "progress_bar")}})
    saved = run_dir / "cv.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old.get("settings_key") != key:
            raise ValueError(f"{run_dir} holds a cross-validation run with other settings; choose another output "
                             "folder (or rerun with the same settings to resume it)")
    else:
        with atomic_open(saved, "w") as f:
            json.dump(jsonable({"settings_key": key, "settings": settings}), f, indent=2)
    name = name or f"{config.frame or config.model.get('frame', 'model')}-{config.preset}"
    recipe = config.resolved_recipe()
    jobs_list, trained = [], []
    for k in todo:
        fold_dir = run_dir / f"fold_{k}"
        if _read_fold(fold_dir, key) is not None:
            if verbose:
                print(f"fold {k}: finished before, skipped")
            continue
        train_set, val_set, test_set = fold_sets(d.crystals, d.folds[k], k, val_fraction, val_seed)
        jobs_list.append({"fold": k, "fold_dir": str(fold_dir), "config": cfg_doc, "train": train_set,
                          "val": val_set, "test": test_set, "target_names": d.target_names,
                          "target": d.target, "kind": d.kind, "target_units": d.target_units,
                          "ensemble": int(ensemble), "losses": ensemble_losses, "select": select,
                          "settings_key": key, "verbose": verbose and jobs == 1,
                          "eval_batch_size": config.eval_batch_size or recipe.test_batch_size
                          or recipe.val_batch_size or recipe.batch_size,
                          "threads": max(1, _cores() // int(jobs)) if jobs > 1 else None})
    if jobs > 1 and len(jobs_list) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # The workers inherit these: Numba's first parallel kernel would otherwise reset torch's thread count
        # to every core, and the processes would oversubscribe the machine.
        env = {"OMP_NUM_THREADS": str(jobs_list[0]["threads"]), "NUMBA_NUM_THREADS": str(jobs_list[0]["threads"])}
        before = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with ProcessPoolExecutor(max_workers=min(int(jobs), len(jobs_list)),
                                     mp_context=mp.get_context("spawn")) as ex:
                for rec in ex.map(_fold_job, jobs_list):
                    trained.append(rec["fold"])
                    if verbose:
                        print(_fold_line(rec))
        finally:
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    else:
        for job in jobs_list:
            rec = _fold_job(job)
            trained.append(rec["fold"])
            if verbose:
                print(_fold_line(rec))
    elapsed = time.perf_counter() - t_start
    results = _write_results(run_dir, d, key, settings, name, elapsed, matbench, leaderboard, command, config)
    if verbose:
        s = results["metrics"]
        if d.kind == "scalar":
            score = f"test MAE {s['mae_mean']:.4g} ± {s['mae_std']:.4g} {d.target_units[0]}"
        else:
            unit = f" {d.target_units[0]}" if d.target_units[0] else ""
            score = (f"test Frobenius error {s['fnorm_mean']:.4g} ± {s['fnorm_std']:.4g}{unit}, "
                     + ", ".join(f"EwT{p} {100 * s[f'ewt{p}_mean']:.1f} %" for p in (25, 10, 5)))
        print(f"{len(results['folds'])}/{k_all} folds: {score}; results in {run_dir / 'results.json'}")
    return CVResult(run_dir, results, trained)


def _fold_line(rec: Mapping[str, Any]) -> str:
    """One line of a finished fold: test MAE (scalar) or Frobenius error and EwT (vector/tensor)."""
    m = rec["metrics"]
    score = (f"test MAE {m['mae']:.4g}" if "fnorm" not in m else
             f"test Frobenius error {m['fnorm']:.4g}, EwT25 {m['ewt25']:.3f}, component MAE {m['mae']:.4g}")
    return f"fold {rec['fold']}: {score} ({rec['wall_s']:.0f} s)"


def _write_results(run_dir: Path, d: _Data, key: str, settings: dict[str, Any], name: str, elapsed: float,
                   matbench, leaderboard, command: str, config) -> dict[str, Any]:
    import torch

    from crystalframer.training.evaluation import Predictions
    from crystalframer.training.plots import parity_plot

    folds = {}
    for k in range(len(d.folds)):
        rec = _read_fold(run_dir / f"fold_{k}", key)
        if rec is not None:
            folds[f"fold_{k}"] = {x: rec.get(x) for x in ("ids", "predictions", "true", "metrics", "val_mae",
                                                         "wall_s", "cpu_s", "threads", "members")}
            if d.kind != "scalar":
                folds[f"fold_{k}"]["val_fnorm"] = rec.get("val_fnorm")
            folds[f"fold_{k}"]["n_train"], folds[f"fold_{k}"]["n_val"] = len(rec["train_ids"]), len(rec["val_ids"])
    if not folds:
        raise ValueError(f"{run_dir}: no finished fold")
    yt = np.concatenate([f["true"] for f in folds.values()])
    yp = np.concatenate([f["predictions"] for f in folds.values()])
    if d.kind == "scalar":
        maes = np.array([f["metrics"]["mae"] for f in folds.values()])
        pooled = fold_metrics(yt, yp)
        metrics = {"mae_mean": float(maes.mean()), "mae_std": float(maes.std()),
                   "rmse_mean": float(np.mean([f["metrics"]["rmse"] for f in folds.values()])),
                   "max_error_max": float(max(f["metrics"]["max_error"] for f in folds.values())),
                   "pooled": pooled, "n": int(pooled["n"])}
    else:
        metrics = {}
        for key in TENSOR_KEYS:  # mean ± std over folds (std with ddof 0, as for scalars)
            vals = np.array([f["metrics"][key] for f in folds.values()], np.float64)
            metrics[f"{key}_mean"], metrics[f"{key}_std"] = float(vals.mean()), float(vals.std())
        pooled = Predictions([x for f in folds.values() for x in f["ids"]], yp, yt, d.target_names, d.target_units,
                             tensors={d.target: d.kind}).metrics()[d.target]
        metrics.update(pooled=pooled, n=int(pooled["n"]))
    prev = {}
    if (run_dir / "results.json").is_file():
        try:
            prev = json.loads((run_dir / "results.json").read_text())
        except json.JSONDecodeError:
            prev = {}
    task = d.description.get("task")
    results = {
        "title": f"matbench_{task}" if task else str(d.description.get("data") or d.description.get("dataset")
                                                       or d.description.get("source") or "data"),
        "model": name, "target": d.target, "target_unit": d.target_units[0],
        **({"target_shape": d.kind, "columns": list(d.target_names)} if d.kind != "scalar" else {}),
        "complete": len(folds) == len(d.folds),
        "metrics": metrics,
        "folds": folds,
        "wall_s": float(sum(f["wall_s"] for f in folds.values())),
        "cpu_s": float(sum(f["cpu_s"] or 0.0 for f in folds.values())),
        "run_wall_s": float(prev.get("run_wall_s", 0.0)) + float(elapsed),
        "settings": {**jsonable(settings), "command": command, "settings_key": key},
        "versions": {"crystalframer": library_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "python": ".".join(map(str, __import__("sys").version_info[:3]))},
        "machine": {"cpu_count": os.cpu_count(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "skipped": [list(e) for e in d.skipped],
    }
    with atomic_open(run_dir / "results.json", "w") as f:
        json.dump(jsonable(results), f, indent=1)
    board, source = None, ""
    if leaderboard is not None:
        board, source = read_leaderboard(leaderboard, task or d.target_names[0]), str(leaderboard)
    elif task == "jdft2d":
        board, source = JDFT2D_LEADERBOARD, LEADERBOARD_SOURCE
    with atomic_open(run_dir / "summary.md", "w") as f:
        f.write(_summary_md(results, name, board, source) if d.kind == "scalar" else _tensor_summary_md(results))
    if config.plots:
        # a vector/tensor target: every component of every test row in one panel (rows ∝ components)
        parity_plot({f"{len(folds)}-fold CV, test rows": (yt.reshape(-1, 1), yp.reshape(-1, 1))},
                    [d.target if d.kind == "scalar" else f"{d.target} components"], d.target_units[:1],
                    run_dir / "parity.png", title=f"{results['title']}: {name}")
    return results
