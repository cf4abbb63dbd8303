"""Self-describing model checkpoints.

A checkpoint is one file written by :func:`torch.save` that holds only tensors, dicts, lists, strings and
numbers, so it loads with ``torch.load(path, weights_only=True)`` (no pickled objects, no code runs on
load). It carries everything needed to rebuild and use the model::

    {
      "format": "crystalframer-checkpoint", "format_version": 1,
      "library_version": "0.1.0", "torch_version": "...", "created": "2025-...Z",
      "model_class": "CrystalFramer",          # a key of crystalframer.models.MODEL_CLASSES
      "config": {...},                          # JSON-able constructor kwargs: cls(**config) rebuilds it
      "state_dict": {name: tensor},
      "state_sha256": "...",                    # SHA-256 of the weights (names, dtypes, shapes, bytes)
      "targets": {"names": [...], "units": [...], "mean": [...], "std": [...]},
                                                # + "transform": "log" when trained on log y
      "training": {...},                        # how it was trained (recipe, data, epochs, metrics ...)
      "extra": {...},                           # anything else the caller passed (JSON-able)
    }

Loading is safe and checked. Every read goes through :func:`safe_torch_load`, which passes
``weights_only=True`` explicitly; from torch 2.6 (the floor of this package) an explicit ``True`` is
honoured whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, so a file whose pickle would build arbitrary
objects (or call ``os.system``) is refused, never run. The weights are checked against ``state_sha256``
(a flipped byte is caught) and must be finite; the stored config is built on the ``meta`` device first,
so a config that does not match the weights (e.g. an absurd ``model_dim``) is refused before anything is
allocated. Checkpoints written before the checksum existed (no ``state_sha256``) still load, unverified.

Files are written atomically (a temporary file in the same folder, then :func:`os.replace`), so a run
killed while saving never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from crystalframer._version import __version__
from crystalframer.atomic import atomic_open
from crystalframer.nn.heads import TARGET_TRANSFORMS

FORMAT = "crystalframer-checkpoint"
FORMAT_VERSION = 1

__all__ = ["CheckpointError", "save_model", "load", "load_checkpoint", "read_header", "model_payload",
           "build_model", "library_version", "jsonable", "atomic_torch_save", "describe", "safe_torch_load",
           "weights_checksum"]


class CheckpointError(ValueError):
    """A file that is not a readable crystalframer checkpoint. The message names the file and the problem."""


def library_version() -> str:
    """Version of this crystalframer package (read from its own module: importing it loads nothing else)."""
    return __version__


def jsonable(obj: Any) -> Any:
    """Turn ``obj`` into plain JSON types (dict with str keys, list, str, int, float, bool, None).

    Tuples become lists, numpy/torch scalars become numbers, small tensors/arrays become lists, paths
    become strings. Non-finite floats are kept (``torch.save`` stores them fine; :func:`json.dumps`
    writes them as NaN/Infinity). Anything else raises ``TypeError`` so that nothing is silently pickled.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return jsonable(obj.tolist())
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return jsonable(dataclasses.asdict(obj))
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (only JSON-like values): {obj!r}")


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with a clear error: the one way this library reads torch files.

    Only tensors, dicts, lists, strings and numbers are rebuilt; a pickle that would create any other
    object or call a function is refused (the explicit ``weights_only=True`` wins over the
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable on torch >= 2.6).

    Raises:
        CheckpointError: missing or unreadable file, or one holding pickled objects; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure mode of torch.load gets the same clear message
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path}: not a readable crystalframer checkpoint ({type(e).__name__}: {msg[:300]}). "
            "Checkpoints are loaded with torch.load(weights_only=True); files holding pickled objects are refused"
        ) from e


def weights_checksum(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a state dict: every entry's name, dtype, shape and bytes, in sorted name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}:{t!r};".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{str(t.dtype)}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same folder and :func:`os.replace`."""
    with atomic_open(path) as f:
        torch.save(obj, f)
    return Path(path)


def _target_info(model: torch.nn.Module, config: Mapping[str, Any]) -> dict[str, Any]:
    mean = getattr(model, "target_mean", None)
    std = getattr(model, "target_std", None)
    n = int(mean.numel()) if isinstance(mean, torch.Tensor) else int(config.get("n_targets", 1))
    names = getattr(model, "target_names", None) or config.get("target_names") or [f"target_{k}" for k in range(n)]
    units = getattr(model, "target_units", None) or config.get("target_units") or [""] * len(names)
    shapes = {"shapes": list(config["target_shapes"])} if config.get("target_shapes") else {}
    transform = str(getattr(model, "target_transform", "none"))
    return {
        **shapes,  # vector/tensor targets: the kind of each target of the config (names are the columns)
        **({"transform": transform} if transform != "none" else {}),  # undone by to_target_units
        "names": [str(x) for x in names],
        "units": [str(x) if x is not None else "" for x in units],
        "mean": jsonable(mean) if isinstance(mean, torch.Tensor) else None,
        "std": jsonable(std) if isinstance(std, torch.Tensor) else None,
    }


def model_payload(model: torch.nn.Module, training: Mapping[str, Any] | None = None,
                  extra: Mapping[str, Any] | None = None, with_state: bool = True) -> dict[str, Any]:
    """The checkpoint dict of ``model`` (see the module docstring); ``with_state=False`` leaves out the weights."""
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(f"{type(model).__name__} has no `config` dict: it does not follow the model protocol "
                        "(crystalframer.models)")
    config = jsonable(config)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "torch_version": torch.__version__.split("+")[0],
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "config": config,
        "targets": _target_info(model, config),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "training": jsonable(dict(training or {})),
        "extra": jsonable(dict(extra or {})),
    }
    if with_state:
        # Plain dict of detached CPU clones: no OrderedDict metadata, no views into live parameters.
        payload["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        payload["state_sha256"] = weights_checksum(payload["state_dict"])
    return payload


def save_model(model: torch.nn.Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None,
               training: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a self-describing checkpoint at ``path`` (atomically). Returns the path.

    Args:
        model: a protocol model (``model.config``, ``target_mean``/``target_std`` buffers).
        extra: JSON-like values stored under ``"extra"`` (e.g. {"training": {...}} is moved to "training").
        training: JSON-like description of how the model was trained.
    """
    extra = dict(extra or {})
    if training is None and isinstance(extra.get("training"), Mapping):
        training = extra.pop("training")
    return atomic_torch_save(model_payload(model, training=training, extra=extra), path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint file; return its dict (see the module docstring).

    Also accepts a Lightning ``.ckpt`` written by :mod:`crystalframer.training` (it embeds the same
    header under ``"crystalframer"``); the model weights are taken from its ``state_dict``.

    Raises:
        CheckpointError: missing file, unreadable file, or a file that is not a crystalframer checkpoint.
    """
    path = Path(path)
    ckpt = safe_torch_load(path, map_location=map_location)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path}: not a crystalframer checkpoint (holds a {type(ckpt).__name__})")
    if ckpt.get("format") != FORMAT and isinstance(ckpt.get("crystalframer"), dict) and "state_dict" in ckpt:
        # A Lightning checkpoint of crystalframer.training: header + the wrapped model's weights.
        header = dict(ckpt["crystalframer"])
        prefix = "model."
        header["state_dict"] = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        ckpt = header
    return check_payload(ckpt, path)


def check_payload(ckpt: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Check a loaded checkpoint dict: format marker and version, required keys, weights checksum
    (when stored) and finite weights. Returns ``ckpt``; raises :class:`CheckpointError` naming ``path``."""
    if ckpt.get("format") != FORMAT:
        keys = ", ".join(sorted(map(str, ckpt))[:8])
        raise CheckpointError(f"checkpoint {path}: not a crystalframer checkpoint (no format marker; keys: {keys})")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {ckpt.get('format_version')} is newer than this crystalframer "
            f"({library_version()}, reads up to {FORMAT_VERSION}); upgrade crystalframer"
        )
    for key in ("model_class", "config", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path}: incomplete, '{key}' is missing")
    state = ckpt["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: 'state_dict' must map names to tensors")
    stored = ckpt.get("state_sha256")
    if stored is not None and stored != weights_checksum(state):
        raise CheckpointError(f"checkpoint {path}: the weights do not match their stored SHA-256 checksum; the "
                              "file is corrupted or was edited")
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"checkpoint {path}: weight {name!r} holds non-finite values (NaN or inf)")
    return ckpt


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's description without the weights (model class, config, targets, training, versions)."""
    ckpt = load_checkpoint(path)
    return {k: v for k, v in ckpt.items() if k != "state_dict"}


def build_model(ckpt: Mapping[str, Any], model_class: type | None = None,
                source: str = "checkpoint") -> torch.nn.Module:
    """Rebuild a model from a checkpoint dict: ``cls(**config)`` then ``load_state_dict`` (strict)."""
    name = ckpt["model_class"]
    cls = model_class
    if cls is None:
        from crystalframer.models import MODEL_CLASSES

        cls = MODEL_CLASSES.get(name)
        if cls is None:
            raise CheckpointError(f"{source}: unknown model class {name!r}; known: {sorted(MODEL_CLASSES)} "
                                  "(register custom classes with crystalframer.models.register_model)")
    config = ckpt["config"]
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{source}: 'config' must be a mapping of constructor arguments")
    _check_shapes(cls, config, ckpt["state_dict"], source)
    try:
        model = cls(**config)
    except TypeError as e:
        raise CheckpointError(f"{source}: cannot rebuild {name} from its stored config ({e}); it was written by "
                              f"crystalframer {ckpt.get('library_version', '?')}") from e
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit {name}: {str(e)[:500]}") from e
    _restore_target_info(model, ckpt.get("targets") or {})
    model.eval()
    return model


class _SkipRandomInitOnMeta(torch.overrides.TorchFunctionMode):
    """Random initialisation of meta tensors is a no-op: skip it. Run on meta tensors, torch routes these ops
    through its reference implementations, whose first use imports torch._dynamo (seconds); skipping them
    keeps the shape check at ~0.1 s for a paper-size model."""

    _NAMES = frozenset({"normal_", "uniform_", "random_", "exponential_", "log_normal_", "cauchy_", "geometric_",
                        "bernoulli_", "trunc_normal_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self._NAMES:
            t = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if t is not None and t.is_meta:
                return t
        return func(*args, **kwargs)


def _check_shapes(cls: type, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str) -> None:
    """Build ``cls(**config)`` on the meta device (no memory) and compare its weight shapes with ``state``:
    a config that does not describe these weights (e.g. ``model_dim`` edited to 10**7) is refused before
    the real model is allocated. Classes that cannot be built on the meta device skip this check."""
    try:
        with torch.device("meta"), _SkipRandomInitOnMeta():
            shapes = {k: tuple(v.shape) for k, v in cls(**config).state_dict().items()}
    except TypeError as e:
        raise CheckpointError(f"{source}: cannot rebuild {cls.__name__} from its stored config ({e})") from e
    except Exception:  # noqa: BLE001 - meta construction unsupported by this class: the strict load still checks
        return
    got = {k: tuple(v.shape) for k, v in state.items()}
    diff = [k for k in sorted(set(shapes) | set(got)) if shapes.get(k) != got.get(k)]
    if diff:
        k = diff[0]
        raise CheckpointError(f"{source}: weights do not fit the stored config of {cls.__name__} ({len(diff)} "
                              f"entries differ, e.g. {k!r}: config gives {shapes.get(k)}, weights are "
                              f"{got.get(k)}); the file is corrupted or was edited")


def _restore_target_info(model: torch.nn.Module, targets: Mapping[str, Any]) -> None:
    # Names/units live in the config for protocol models; keep them reachable as attributes too.
    for attr, key in (("target_names", "names"), ("target_units", "units")):
        if targets.get(key) is not None and not getattr(model, attr, None):
            try:
                setattr(model, attr, list(targets[key]))
            except (AttributeError, TypeError):  # read-only property on the model class
                pass
    transform = targets.get("transform", "none")  # older checkpoints have none
    if transform not in TARGET_TRANSFORMS:
        raise CheckpointError(f"checkpoint has unknown target transform {transform!r}; known: {TARGET_TRANSFORMS}")
    model.target_transform = transform
    # Sanity check: normalisation buffers must be finite, otherwise every prediction would be NaN.
    for buf in ("target_mean", "target_std"):
        t = getattr(model, buf, None)
        if isinstance(t, torch.Tensor) and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"checkpoint has non-finite {buf}: {t.tolist()}")


def load(path: str | os.PathLike, map_location: Any = "cpu", model_class: type | None = None) -> torch.nn.Module:
    """Load a model saved by :func:`save_model` (or a crystalframer Lightning ``.ckpt``), in eval mode.

    Args:
        path: checkpoint file.
        map_location: where tensors go (``"cpu"``, ``"cuda"``, a device).
        model_class: rebuild with this class instead of looking the stored name up in
            :data:`crystalframer.models.MODEL_CLASSES`.
    The checkpoint's description (header, training info, versions) is attached as ``model.checkpoint_info``.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    model = build_model(ckpt, model_class=model_class, source=f"checkpoint {path}")
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    try:
        model.checkpoint_info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    except AttributeError:
        pass
    return model


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def describe(path: str | os.PathLike) -> str:
    """A short human-readable summary of a checkpoint (for ``crystalframer info``-style output)."""
    h = read_header(path)
    t = h.get("targets", {})
    lines = [f"{path}: {h['model_class']} ({h.get('num_parameters', '?')} parameters), crystalframer "
             f"{h.get('library_version')}, torch {h.get('torch_version')}, saved {h.get('created')}"]
    for k, name in enumerate(t.get("names") or []):
        unit = (t.get("units") or [""] * (k + 1))[k]
        mean = (t.get("mean") or [None] * (k + 1))[k]
        std = (t.get("std") or [None] * (k + 1))[k]
        norm = f"mean {mean:.6g}, std {std:.6g}" if _finite(mean) and _finite(std) else "no normalisation"
        lines.append(f"  target {name}" + (f" [{unit}]" if unit else "") + f": {norm}")
    lines.append("  config: " + json.dumps(h.get("config"), sort_keys=True))
    return "\n".join(lines)
