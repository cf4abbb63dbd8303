"""``crystalframer`` command line: train, evaluate, predict, embed, info, cv.

Examples::

    crystalframer train --dataset perov_5 --data-root ../shared/data --frame max --preset quick -o runs/perov
    crystalframer train --config configs/paper_jarvis.yaml --data my_data.csv --devices 4
    crystalframer train --resume -o runs/perov                  # continue a killed run
    crystalframer evaluate runs/perov/model.pt --dataset perov_5 --data-root ../shared/data --split test
    crystalframer predict runs/perov/model.pt structures/*.cif -o predictions.csv
    crystalframer embed runs/perov/model.pt structures/ -o embeddings.npz
    crystalframer info runs/perov/model.pt
    crystalframer cv --matbench ../shared/data/matbench_jdft2d/matbench_jdft2d.json.gz --preset matbench -o runs/jdft2d
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser"]


# -- helpers ----------------------------------------------------------------------------------------------


def _value(text: str) -> Any:
    """KEY=VALUE values: JSON when it parses (numbers, true/false, lists), the raw string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"{flag} expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = _value(v.strip())
    return out


def _read_config(path: str) -> dict[str, Any]:
    """The mapping of settings in a YAML or JSON file; ``ValueError`` naming the file when it is not one."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        text = p.read_text()
        if p.suffix.lower() in (".yaml", ".yml"):
            doc = yaml.safe_load(text) or {}
        else:
            doc = json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        first = " ".join(str(e).split())[:200]
        raise ValueError(f"config file {p} is not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}"
                         f": {first}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"config file {p}: must hold a mapping of settings, not a {type(doc).__name__}")
    return doc


def _count(minimum: int):
    """argparse type: a whole number >= ``minimum`` (the error names the flag)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    parse.__name__ = f"whole number >= {minimum}"
    return parse


_POSITIVE, _NON_NEGATIVE = _count(1), _count(0)


def _check_outputs(outputs: Sequence[str | None], inputs: Sequence[str], overwrite: bool) -> None:
    """Every command's output check, before any work: never an input, no silent overwrite, a writable
    folder, and no two outputs on the same file."""
    from crystalframer.atomic import OutputError, check_output

    given = [o for o in outputs if o]
    for k, out in enumerate(given):
        check_output(out, inputs, overwrite)
        if any(Path(out).resolve() == Path(o).resolve() for o in given[:k]):
            raise OutputError(f"output {out} is given twice; choose different files")


def _devices(text: str | None) -> Any:
    if text is None:
        return None
    if text == "auto":
        return "auto"
    if "," in text:
        return [int(x) for x in text.split(",") if x.strip()]
    return int(text)


def _device(text: str | None) -> str:
    import torch

    if text in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError as e:
        raise ValueError(f"--device {text}: not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


# -- parser -----------------------------------------------------------------------------------------------


def _add_target_shape(group) -> None:
    group.add_argument("--target-shape", action="append", metavar="TARGET=SHAPE",
                       help="a vector/tensor target: SHAPE 3, 3x3, 3x3sym (symmetric) or 6x6 (elastic, Voigt), "
                            "e.g. e_total=3x3sym; predicted equivariantly through the frames")


def _target_shapes(args: argparse.Namespace) -> dict[str, str] | None:
    """{target: shape} of the --target-shape flags (None without any)."""
    if not getattr(args, "target_shape", None):
        return None
    return {k: str(v) for k, v in _pairs(args.target_shape, "--target-shape").items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crystalframer", description="CrystalFramer / Crystalformer crystal-property "
                                "models: train, evaluate, predict and embed.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (published recipe; SWA and best-val models are evaluated)",
                       description="Train a model. Settings come from --config (YAML/JSON with the keys of "
                       "crystalframer.training.TrainConfig) and are overridden by flags.")
    t.add_argument("--config", "-c", help="YAML or JSON config file")
    g = t.add_argument_group("data (one of --dataset, --data, --train)")
    g.add_argument("--dataset", help="shared data set name (perov_5, mp_20_subset, jarvis_supercon, ...)")
    g.add_argument("--data-root", help="folder holding the shared data sets")
    g.add_argument("--data", help="file or folder for load_dataset (CSV, JSON, extxyz, ASE db, CIF folder + "
                                   "id_prop.csv)")
    g.add_argument("--train", dest="train_path", help="training file/folder (with --val/--test)")
    g.add_argument("--val", dest="val_path", help="validation file/folder")
    g.add_argument("--test", dest="test_path", help="test file/folder")
    g.add_argument("--targets", nargs="+", help="target names (default: the data set's)")
    g.add_argument("--units", nargs="+", help="units of the targets, in order (for outputs)")
    _add_target_shape(g)
    g.add_argument("--binarize", action="append", metavar="TARGET=THRESHOLD",
                   help="classify TARGET > THRESHOLD (0/1 labels; use with --loss bce), e.g. band_gap=0")
    g.add_argument("--limit", type=_POSITIVE, help="use at most N structures of each split (quick checks)")
    g.add_argument("--split-fractions", nargs=3, type=float, metavar=("TRAIN", "VAL", "TEST"),
                   help="random split of --data (default: its split column, else 0.8 0.1 0.1)")
    g.add_argument("--split-seed", type=int, help="seed of the random split (default 123)")
    g.add_argument("--split-file", help="JSON split (ids per split)")
    g.add_argument("--cache-dir", help="preprocessing cache folder (parsed structures are reused across runs and "
                   "DDP ranks)")
    m = t.add_argument_group("model")
    m.add_argument("--model-type", help="model class (default CrystalFramer)")
    m.add_argument("--frame", help="frame method: max (CrystalFramer), none (Crystalformer), static, "
                   "weighted_pca, pca, lattice")
    m.add_argument("--num-layers", type=_POSITIVE)
    m.add_argument("--model-dim", type=_POSITIVE)
    m.add_argument("--num-heads", type=_POSITIVE)
    m.add_argument("--ff-dim", type=_POSITIVE)
    m.add_argument("--cutoff", type=float, help="image cutoff radius in Å")
    m.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="any other model argument")
    m.add_argument("--init-from", help="start from this checkpoint's weights (fine-tuning)")
    r = t.add_argument_group("recipe")
    r.add_argument("--preset", help="jarvis (256/2000/SWA 50, default), mp (128/800/50), oqmd (1024/200/20), quick, "
                   "ecn (ECN's own: 128/1000, MSE, plateau schedule)")
    r.add_argument("--epochs", type=_POSITIVE)
    r.add_argument("--swa-epochs", type=_NON_NEGATIVE)
    r.add_argument("--batch-size", type=_POSITIVE, help="global batch size (split over devices)")
    r.add_argument("--lr", type=float)
    r.add_argument("--seed", type=int)
    r.add_argument("--loss", choices=["l1", "mse", "smooth_l1", "bce"],
                   help="training loss (default l1); bce trains a binary classifier on 0/1 labels")
    r.add_argument("--recipe-arg", action="append", metavar="KEY=VALUE", help="any other recipe field")
    o = t.add_argument_group("run")
    o.add_argument("--output", "-o", help="run folder (default runs/<data>-<frame>-<preset>-<time>)")
    o.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue the run in --output from its last checkpoint (or from CKPT)")
    o.add_argument("--accelerator", help="cpu, gpu, auto")
    o.add_argument("--devices", help="number of devices, a comma list of ids, or auto")
    o.add_argument("--num-nodes", type=_POSITIVE)
    o.add_argument("--strategy", help="Lightning strategy (default: ddp with several devices)")
    o.add_argument("--precision", help="32-true (default), bf16-mixed (linear layers in bf16; attention, "
                   "frames and sums stay float32) or 64-true")
    o.add_argument("--num-workers", type=_NON_NEGATIVE, help="DataLoader workers")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--no-tensorboard", action="store_true")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output folder that already holds one, replacing its files")

    e = sub.add_parser("evaluate", help="score a checkpoint on labelled data (MAE, RMSE, R²; accuracy, ROC-AUC "
                                        "for classifiers)")
    e.add_argument("checkpoint")
    e.add_argument("data", nargs="?", help="shared data set name (with --data-root) or a file/folder for load_dataset")
    e.add_argument("--dataset", help="shared data set name (same as giving it as DATA)")
    e.add_argument("--data-root", help="folder holding the shared data sets")
    e.add_argument("--split", default=None, help="train, val or test (default: all of the data)")
    e.add_argument("--targets", nargs="+", help="label columns (default: the model's target names)")
    e.add_argument("--output", "-o", help="CSV of predictions and labels")
    e.add_argument("--json", help="write the metrics to this JSON file")
    e.add_argument("--batch-size", type=_POSITIVE, default=64)
    e.add_argument("--device", default="auto")
    e.add_argument("--limit", type=_POSITIVE, help="use at most N structures")
    e.add_argument("--overwrite", action="store_true", help="replace existing --output/--json files")

    for name, what in (("predict", "predict targets of structure files"), ("embed", "pooled embeddings of structures")):
        q = sub.add_parser(name, help=what)
        q.add_argument("checkpoint")
        q.add_argument("inputs", nargs="+", help="structure files (CIF, POSCAR, extxyz ...), folders or data tables")
        q.add_argument("--output", "-o", required=True,
                       help="output file: .csv" + (" or .npz" if name == "embed" else ""))
        q.add_argument("--batch-size", type=_POSITIVE, default=64)
        q.add_argument("--device", default="auto")
        q.add_argument("--strict", action="store_true",
                       help="fail (exit 1, nothing written) if any input cannot be read")
        q.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("checkpoint")
    _add_cv_parser(sub)
    return p


# -- train ------------------------------------------------------------------------------------------------


def _train_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = _read_config(args.config) if args.config else {}
    if args.resume and not args.config and args.output and (Path(args.output) / "config.json").is_file():
        # Resuming without a config: continue with the settings the run was started with.
        cfg = _read_config(str(Path(args.output) / "config.json"))
        cfg.pop("resolved", None)
        cfg.pop("versions", None)
    data = dict(cfg.get("data") or {})
    given = {"dataset": args.dataset, "root": args.data_root, "source": args.data, "train": args.train_path,
             "val": args.val_path, "test": args.test_path}
    if any(v is not None for k, v in given.items() if k != "root"):
        for k in ("dataset", "source", "train", "val", "test"):
            data.pop(k, None)  # a data source on the command line replaces the config's
    data.update({k: v for k, v in given.items() if v is not None})
    for key, val in (("targets", args.targets), ("units", args.units), ("limit", args.limit),
                     ("split_fractions", args.split_fractions), ("split_seed", args.split_seed),
                     ("split_file", args.split_file)):
        if val is not None:
            data[key] = val
    if args.binarize:
        data["binarize"] = _pairs(args.binarize, "--binarize")
        for k, v in data["binarize"].items():
            try:
                data["binarize"][k] = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"--binarize {k}={v}: the threshold must be a number") from None
    shapes = _target_shapes(args)
    if shapes:
        data["target_shapes"] = shapes
    if args.cache_dir:
        data["load_options"] = {**(data.get("load_options") or {}), "cache_dir": args.cache_dir}
    cfg["data"] = data
    model = dict(cfg.get("model") or {})
    for key, val in (("num_layers", args.num_layers), ("model_dim", args.model_dim), ("num_heads", args.num_heads),
                     ("ff_dim", args.ff_dim), ("cutoff", args.cutoff)):
        if val is not None:
            model[key] = val
    model.update(_pairs(args.model_arg, "--model-arg"))
    cfg["model"] = model
    recipe = dict(cfg.get("recipe") or {})
    for key, val in (("epochs", args.epochs), ("swa_epochs", args.swa_epochs), ("batch_size", args.batch_size),
                     ("lr", args.lr), ("seed", args.seed), ("loss", args.loss)):
        if val is not None:
            recipe[key] = val
    recipe.update(_pairs(args.recipe_arg, "--recipe-arg"))
    cfg["recipe"] = recipe
    for key, val in (("model_type", args.model_type), ("frame", args.frame), ("preset", args.preset),
                     ("output", args.output), ("init_from", args.init_from), ("accelerator", args.accelerator),
                     ("devices", _devices(args.devices)), ("num_nodes", args.num_nodes),
                     ("strategy", args.strategy), ("precision", args.precision), ("num_workers", args.num_workers)):
        if val is not None:
            cfg[key] = val
    if args.no_progress:
        cfg["progress_bar"] = False
    if args.no_tensorboard:
        cfg["tensorboard"] = False
    if args.no_plots:
        cfg["plots"] = False
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from crystalframer.training.metrics import format_target_metrics
    from crystalframer.training.trainer import TrainConfig, train

    cfg = TrainConfig.from_dict(_train_config(args))
    cfg.resolved_recipe()  # unknown or ill-typed recipe settings fail here, before any data is read
    result = train(cfg, resume=args.resume, verbose=True, overwrite=args.overwrite)
    if result.metrics:
        final = result.metrics.get("final_model", "swa")
        test = (result.metrics.get(final) or {}).get("test") or {}
        names, units = result.metrics.get("target_names", []), result.metrics.get("target_units", [])
        for name, r in test.items():
            unit = _unit_of(name, names, units)
            if "fnorm" in r:
                print(f"test ({final}) {name}: {format_target_metrics(r, unit)}")
            elif "accuracy" in r:
                print(f"test accuracy ({final}) {name}: {r['accuracy']:.4f}  ROC-AUC {r['roc_auc']:.4f}")
            else:
                print(f"test MAE ({final}) {name}: {r['mae']:.6g}{' ' + unit if unit else ''}")
        print(f"model: {result.run_dir / 'model.pt'}")
    return 0


# -- evaluate / predict / embed ---------------------------------------------------------------------------


def _load_model(path: str, device: str):
    from crystalframer.checkpoint import CheckpointError, load

    try:
        return load(path, map_location=device)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None


def _eval_data(args: argparse.Namespace, model):
    """(crystals labelled with the model's output columns, skipped entries) of the data to evaluate on.

    ``--targets`` names the label columns of the model's targets, in order (default: the same names); a
    vector/tensor target is read with the model's shape (array cells or flattened ``name[i,j]`` columns).
    """
    from crystalframer.data.sources.shared import SHARED_SETS, load_shared
    from crystalframer.data.tensors import expand_targets
    from crystalframer.training.data import binarize_targets, binarized_source, load_source, select_targets
    from crystalframer.training.evaluation import target_info, tensor_targets

    names, _ = target_info(model)  # output columns
    shaped = tensor_targets(model)
    model_targets = list(model.config["target_names"]) if shaped else names
    targets = list(args.targets or model_targets)
    if len(targets) != len(model_targets):
        raise SystemExit(f"error: --targets names {len(targets)} label columns, the model predicts "
                         f"{len(model_targets)} targets {model_targets}")
    shapes = {t: shaped[m] for t, m in zip(targets, model_targets) if m in shaped}
    # a classifier trained with --binarize band_gap=0 predicts "band_gap>0": label the data the same way
    task = getattr(model, "task", "regression")
    made = {k: binarized_source(t) for k, t in enumerate(targets)} if task == "classification" else {}
    made = {k: v for k, v in made.items() if v is not None}
    targets = [made[k][0] if k in made else t for k, t in enumerate(targets)]
    if args.data in SHARED_SETS and not Path(args.data).exists():
        if not args.data_root:
            raise SystemExit(f"error: {args.data} is a shared data set: give --data-root")
        ds = load_shared(args.data, args.data_root, **(dict(targets=targets, target_shapes=shapes) if shapes else {}))
    else:
        ds = load_source(args.data, targets, {}, shapes)
    if args.split:
        ds = ds.split()[args.split]
    crystals, got = select_targets(ds, expand_targets(targets, shapes))
    if made:
        parts, got, _ = binarize_targets({"all": crystals}, list(got), [""] * len(got),
                                         {base: thr for base, thr in made.values()})
        crystals = parts["all"]
    if len(got) != len(names):
        raise SystemExit(f"error: the data has targets {got}, the model predicts {names}")
    return crystals[: args.limit] if args.limit else crystals, list(getattr(ds, "errors", []))


def _unit_of(target: str, names: Sequence[str], units: Sequence[str]) -> str:
    """The unit of an output column, or of a vector/tensor target (that of its flattened columns)."""
    for n, u in zip(names, units):
        if n == target or n.startswith(f"{target}["):
            return u
    return ""


def cmd_evaluate(args: argparse.Namespace) -> int:
    from crystalframer.training.evaluation import evaluate_crystals, target_info, write_predictions_csv
    from crystalframer.training.metrics import format_target_metrics

    args.data = args.data or args.dataset
    if not args.data:
        _err("error: give the data to evaluate on (DATA or --dataset)")
        return 2
    if args.targets and len(set(args.targets)) != len(args.targets):
        raise ValueError(f"--targets {' '.join(args.targets)}: a target is named more than once")
    _check_outputs([args.output, args.json], [args.checkpoint, args.data], args.overwrite)
    device = _device(args.device)
    model = _load_model(args.checkpoint, device)
    names, units = target_info(model)
    crystals, errors = _eval_data(args, model)
    for e in errors:
        _err(f"skipped {e[1]}: {e[2]}")
    if not crystals:
        _err("error: no structures to evaluate")
        return 1
    metrics, preds = evaluate_crystals(model, crystals, args.batch_size, device)
    for name, r in metrics.items():
        print(f"{name}: {format_target_metrics(r, _unit_of(name, names, units))}")
    if args.output:
        write_predictions_csv(args.output, preds)
    if args.json:
        from crystalframer.atomic import atomic_open

        with atomic_open(args.json, "w") as f:
            f.write(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "split": args.split,
                                "metrics": metrics, "skipped": len(errors)}, indent=2))
    return 0


def _read_inputs(paths: Sequence[str]):
    """Crystals of every input (files, folders, tables); unreadable inputs are listed, not fatal.

    Relative paths are relative to the working directory; ids repeated across the inputs are warned
    about once.
    """
    import warnings

    from crystalframer.data.io.load import load_dataset
    from crystalframer.data.structures import warn_duplicate_ids

    crystals, errors = [], []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            errors.append((raw, "file not found"))
            continue
        try:
            with warnings.catch_warnings():  # duplicates are reported once below, over all the inputs
                warnings.filterwarnings("ignore", message=r".*duplicate id")
                ds = load_dataset(p, on_error="skip")
        except Exception as e:  # noqa: BLE001 - report any reader failure and go on with the other inputs
            errors.append((raw, f"{type(e).__name__}: {e}"))
            continue
        crystals += list(ds)
        single = p.is_file() and len(ds) + len(ds.errors) == 1  # one structure file: its path says it all
        errors += [(raw if single else f"{raw} [{e[1]}]", e[2]) for e in ds.errors]
    warn_duplicate_ids([c.id for c in crystals], "inputs")
    return crystals, errors


def cmd_predict(args: argparse.Namespace, embed: bool = False) -> int:
    import numpy as np

    from crystalframer.training.evaluation import Predictions, predict_crystals, target_info, write_predictions_csv

    from crystalframer.atomic import atomic_open

    _check_outputs([args.output], [args.checkpoint, *args.inputs], args.overwrite)
    device = _device(args.device)
    model = _load_model(args.checkpoint, device)
    crystals, errors = _read_inputs(args.inputs)
    for src, msg in errors:
        _err(f"skipped {src}: {msg}")
    if not crystals:
        _err("error: none of the inputs could be read")
        return 1
    if errors and args.strict:
        _err(f"error: {len(errors)} input(s) could not be read (--strict); nothing written")
        return 1
    out = Path(args.output)
    ids = [c.id for c in crystals]
    if embed:
        import torch

        chunks = []
        model.eval()
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            for k in range(0, len(crystals), args.batch_size):
                b = model.collate(crystals[k:k + args.batch_size]).to(device, dtype)
                chunks.append(model.embed_batch(b).double().cpu().numpy())
        emb = np.concatenate(chunks)
        if out.suffix.lower() == ".npz":
            with atomic_open(out) as f:
                np.savez(f, ids=np.array(ids, dtype=str), embeddings=emb)
        else:
            import pandas as pd

            df = pd.DataFrame(emb, columns=[f"e{k}" for k in range(emb.shape[1])])
            df.insert(0, "id", ids)
            with atomic_open(out, "w", newline="") as f:
                df.to_csv(f, index=False)
        print(f"{len(ids)} embeddings ({emb.shape[1]} dims) written to {out}"
              + (f"; {len(errors)} inputs skipped" if errors else ""))
    else:
        p = predict_crystals(model, crystals, args.batch_size, device)
        names, units = target_info(model)
        if out.suffix.lower() == ".npz":  # ids and one array per target ((n,) or (n, *shape))
            from crystalframer.models import split_columns

            cfg = getattr(model, "config", {})
            arrays = (split_columns(p.y_pred, cfg["target_names"], model.target_kinds)
                      if getattr(model, "has_geometric_targets", False) else dict(zip(names, p.y_pred.T)))
            with atomic_open(out) as f:
                np.savez(f, ids=np.array(ids, dtype=str), **arrays)
        else:  # CSV: tensors as flattened columns name[i,j]
            write_predictions_csv(out, Predictions(p.ids, p.y_pred, None, names, units, p.task), with_truth=False)
        print(f"{len(ids)} predictions written to {out}" + (f"; {len(errors)} inputs skipped" if errors else ""))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from crystalframer.checkpoint import CheckpointError, describe

    try:
        print(describe(args.checkpoint))
    except CheckpointError as e:
        _err(f"error: {e}")
        return 1
    return 0


# -- cv -----------------------------------------------------------------------------------------------------


def _add_cv_parser(sub) -> None:
    c = sub.add_parser("cv", help="k-fold cross-validation (Matbench folds and leaderboard for Matbench files)",
                       description="k-fold cross-validation: one model per fold trained on the other folds "
                       "(validation rows drawn from them), each fold's test rows predicted once. Writes "
                       "results.json, summary.md and parity.png to --output; rerunning skips finished folds. "
                       "A vector or tensor target (--target-shape) is scored by Frobenius error, EwT and "
                       "component MAE.")
    c.add_argument("--config", "-c", help="YAML or JSON config file (keys of TrainConfig)")
    g = c.add_argument_group("data (one of --matbench, --data, --dataset)")
    g.add_argument("--matbench", help="a Matbench task file (pandas split JSON; ids mb-<task>-NNN, official folds)")
    g.add_argument("--data", help="file or folder for load_dataset (every row is cross-validated)")
    g.add_argument("--dataset", help="shared data set name (all of its splits), with --data-root")
    g.add_argument("--data-root", help="folder holding the shared data sets")
    g.add_argument("--targets", nargs="+", help="the target (one)")
    g.add_argument("--units", nargs="+", help="its unit")
    _add_target_shape(g)
    f = c.add_argument_group("folds")
    f.add_argument("--n-folds", type=int, default=5, help="number of folds (default 5)")
    f.add_argument("--fold-seed", type=int, default=None,
                   help="KFold shuffle seed (default 18012019, Matbench's)")
    f.add_argument("--fold-file", help="JSON of test ids (or test_rows) per fold instead of seeded folds")
    f.add_argument("--folds", nargs="+", type=int, help="run only these folds (0-based), e.g. --folds 0 2")
    f.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of each fold's training rows held out for validation (default 0.1)")
    f.add_argument("--val-seed", type=int, default=0, help="seed of the validation rows (plus the fold number)")
    f.add_argument("--ensemble", type=int, default=1, help="models per fold (seeds seed..seed+N-1), averaged")
    f.add_argument("--ensemble-losses", nargs="+", choices=["l1", "mse", "smooth_l1"], metavar="LOSS",
                   help="one member per loss, e.g. l1 mse (averaged; sets --ensemble)")
    f.add_argument("--select", choices=["final", "best"], default="final",
                   help="model that predicts the test rows: final (SWA average, default) or best (best val epoch)")
    f.add_argument("--jobs", type=int, default=1, help="folds trained at once in separate processes")
    f.add_argument("--leaderboard", help="markdown leaderboard table to print the result beside")
    f.add_argument("--name", help="label of this model in the summary")
    m = c.add_argument_group("model and recipe")
    m.add_argument("--frame", help="frame method (max, none, static, ...)")
    m.add_argument("--preset", help="recipe preset (e.g. quick, matbench)")
    for flag, typ in (("--num-layers", int), ("--model-dim", int), ("--num-heads", int), ("--ff-dim", int),
                      ("--cutoff", float), ("--epochs", int), ("--swa-epochs", int), ("--batch-size", int),
                      ("--lr", float), ("--seed", int)):
        m.add_argument(flag, type=typ)
    m.add_argument("--loss", choices=["l1", "mse", "smooth_l1"])
    m.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="any other model argument")
    m.add_argument("--recipe-arg", action="append", metavar="KEY=VALUE", help="any other recipe field")
    c.add_argument("--output", "-o", required=True, help="run folder")
    c.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the parity plot and each member's figures (default on)")
    c.add_argument("--quiet", action="store_true", help="print only the fold results")


def cmd_cv(args: argparse.Namespace) -> int:
    from crystalframer.training.cv import cross_validate
    from crystalframer.training.trainer import TrainConfig

    cfg: dict[str, Any] = _read_config(args.config) if args.config else {}
    given = [x for x in (args.matbench, args.data, args.dataset) if x]
    if len(given) > 1:
        raise SystemExit("error: give one of --matbench, --data, --dataset")
    data = dict(cfg.get("data") or {})
    if args.data or args.dataset:
        for k in ("dataset", "source", "train", "val", "test"):
            data.pop(k, None)
        data.update({"source": args.data} if args.data else {"dataset": args.dataset})
    if args.data_root:
        data["root"] = args.data_root
    for key, val in (("targets", args.targets), ("units", args.units), ("target_shapes", _target_shapes(args))):
        if val is not None:
            data[key] = val
    cfg["data"] = data
    model = dict(cfg.get("model") or {})
    for key in ("num_layers", "model_dim", "num_heads", "ff_dim", "cutoff"):
        if getattr(args, key) is not None:
            model[key] = getattr(args, key)
    model.update(_pairs(args.model_arg, "--model-arg"))
    cfg["model"] = model
    recipe = dict(cfg.get("recipe") or {})
    for key in ("epochs", "swa_epochs", "batch_size", "lr", "seed", "loss"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    recipe.update(_pairs(args.recipe_arg, "--recipe-arg"))
    cfg["recipe"] = recipe
    for key in ("frame", "preset"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg.setdefault("accelerator", "cpu")
    cfg.setdefault("devices", 1)
    cfg.update(progress_bar=False, tensorboard=False, plots=bool(args.plots))
    if not given and not (data.get("dataset") or data.get("source") or data.get("train")):
        raise SystemExit("error: give the data: --matbench FILE, --data FILE or --dataset NAME --data-root DIR")
    fold_seed = args.fold_seed
    if fold_seed is None:
        from crystalframer.data.sources.matbench import MATBENCH_SEED

        fold_seed = MATBENCH_SEED
    res = cross_validate(TrainConfig.from_dict(cfg), args.output, matbench=args.matbench, n_folds=args.n_folds,
                         fold_seed=fold_seed, fold_file=args.fold_file, folds=args.folds,
                         val_fraction=args.val_fraction, val_seed=args.val_seed, ensemble=args.ensemble,
                         ensemble_losses=args.ensemble_losses, select=args.select, jobs=args.jobs,
                         leaderboard=args.leaderboard, name=args.name,
                         command="crystalframer " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["cv"] else "",
                         verbose=not args.quiet)
    print(f"summary: {res.run_dir / 'summary.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crystalframer`` command. Returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "embed":
            return cmd_predict(args, embed=True)
        if args.command == "info":
            return cmd_info(args)
        if args.command == "cv":
            return cmd_cv(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        _err(f"error: {e}")
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
