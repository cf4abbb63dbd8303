"""What every frame method sees (:class:`FrameInput`), what it promises (:class:`FrameMethod`), and the registry.

A frame is F_ih = (e1, e2, e3) per atom i and head h (Ito et al., ICLR 2025): three unit vectors (rows of
a (3, 3) matrix), in Cartesian coordinates. The angular features use the cosines e_k · r̂ of every image.
Frames are computed from detached quantities and carry no gradient, except for methods that declare
``differentiable = True`` (the learned SPFrame predictors).

The registry maps names to :class:`FrameMethod` classes. Built-in names point to ``"package.module:Class"``
paths imported on first use (like entry points), so that methods with learned parts can live in
:mod:`crystalframer.nn` without this package importing it; any ``"package.module:Class"`` name is accepted
too (a plugin: it is stored as the model's ``frame`` and imported again when a checkpoint is loaded).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

import torch
from torch import Tensor

from crystalframer.frames.ties import ATOL, CAP, RTOL, check_mode, resolve_mode
from crystalframer.frames.noise import draw_seed, uniform
from crystalframer.geometry.images import Images


@dataclass
class FrameInput:
    """Everything a frame method may use, for one attention layer.

    Attributes:
        images: the image slots (N, M) of the batch.
        unit: (N, M, 3) unit vectors r̂ of the slots (0 for self images and padding).
        candidate: (N, M, H) bool, slots that may define an axis (valid and not the atom itself).
        qk: (N, M, H) q_ih · k_jh / sqrt(d_h) of the slot's pair (detached).
        a: (N, H) Gaussian coefficient a_ih = −1/(2σ²) in Å⁻² (detached).
        w: (N, M, H) attention weight of each slot (detached); Σ_m w = 1.
        lattice: (B, 3, 3); pos: (N, 3); batch: (N,); ptr: (B + 1,).
        noise: tie-breaking noise amplitude (Å² for distances); 0 for a deterministic tie order.
        x: (N, d) the layer's input states (for frames predicted from invariant features).
        layer: the layer's index.
        species: (N, 98) occupancy-weighted species vectors, or None when the caller does not give them.
    """

    images: Images
    unit: Tensor
    candidate: Tensor
    qk: Tensor
    a: Tensor
    w: Tensor
    lattice: Tensor
    pos: Tensor
    batch: Tensor
    ptr: Tensor
    noise: float
    x: Tensor | None = None
    layer: int = 0
    species: Tensor | None = None

    @property
    def d2(self) -> Tensor:
        return self.images.d2

    def uniform_noise(self, shape) -> Tensor:
        """u ~ U(−0.5, 0.5) · noise (zeros when noise is 0), from :mod:`.noise` (seeded by torch's generator)."""
        if self.noise == 0:
            return torch.zeros(shape, dtype=self.unit.dtype, device=self.unit.device)
        return (uniform(draw_seed(), tuple(shape), self.unit.dtype, self.unit.device) - 0.5) * self.noise


class FrameMethod(torch.nn.Module):
    """Base class: ``forward(inp: FrameInput) -> (N, H, 3, 3)`` axes as rows, or a weighted set of
    candidate frames ``(axes (N, H, T, 3, 3), weights (N, H, T))`` whose angular features are averaged.

    Every method must be invariant to translations and to the order of the atoms (frames follow their
    atoms). Beyond that, each method declares what it promises as class attributes, for its default options
    in evaluation mode (the tie policy ``"auto"`` with a non-zero ``frame_noise`` is then ``"average"``);
    an instance may narrow or widen them for the options it was built with:

    * ``equivariant``: rotating the crystal (r → Q r for positions and lattice vectors) rotates every frame,
      F → F Qᵀ (for a frame set: the same weights on the rotated frames). The angular features are then
      rotation invariant, and vector and tensor outputs predicted in the frames are rotation equivariant.
    * ``cell_invariant``: the frames of each atom do not depend on how the crystal is written down: another
      unit cell of the same lattice, a supercell, or other periodic images of the atoms give the same frames
      (as weighted sets).
    * ``differentiable``: the axes are differentiable functions of the layer's states and of the method's
      parameters, and the attention computes them with gradients enabled (learned frames). Otherwise they
      are computed without gradient and are constants of the backward pass.

    Other class attributes: ``name`` (the registry name), ``per_structure`` (one frame set per crystal),
    ``average_in_training`` and ``context`` (the model sizes the constructor needs, e.g. ``("dim",
    "heads", "layer")``; :class:`~crystalframer.nn.model.CrystalFramerNet` passes them).

    Tie options (every built-in method; see :mod:`crystalframer.frames.ties`):
        ties: ``"auto"`` (default: ``"first"`` with ``frame_noise = 0``, else ``"noise"`` in training and
            ``"average"`` in evaluation; methods with ``average_in_training``, the PCA frames, average in
            training too), ``"average"`` (average over the tie set: deterministic and exactly
            invariant on symmetric crystals), ``"noise"`` (published random tie-breaking, ``frame_noise``)
            or ``"first"`` (first candidate in slot order wins: the deterministic order of the published
            kernels with zero noise).
        tie_atol, tie_rtol: score tolerance atol + rtol · |score terms| (defaults 2e-5, 2e-6); candidates
            within it have tie weight 1, the weight then falls linearly to 0 over the next 4e-4.
        tie_cap: frames per (atom, head) at most (256).
    """

    #: name in the registry
    name: str = ""
    #: promise: frames rotate with the crystal (F → F Qᵀ)
    equivariant: bool = False
    #: promise: frames do not depend on the unit cell, supercell or periodic images the crystal is given in
    cell_invariant: bool = False
    #: promise: gradients flow through the frame axes (learned frames)
    differentiable: bool = False
    #: whether the frame is one per crystal (pca, lattice, SPFrame global part)
    per_structure: bool = False
    #: whether ``ties="auto"`` averages in training too: for methods whose evaluation-time tie set is not
    #: the expectation of the published noise (PCA frames), so that training and evaluation use one rule
    average_in_training: bool = False
    #: model sizes the constructor takes (from ``"dim"``, ``"heads"``, ``"layer"``)
    context: tuple[str, ...] = ()

    def __init__(self, ties: str = "auto", tie_atol: float = ATOL, tie_rtol: float = RTOL, tie_cap: int = CAP,
                 **options):
        super().__init__()
        if options:
            raise TypeError(f"frame {self.name!r} got unknown options {sorted(options)}")
        self.ties = check_mode(ties)
        self.tie_atol, self.tie_rtol, self.tie_cap = float(tie_atol), float(tie_rtol), int(tie_cap)

    def tie_mode(self, inp: "FrameInput") -> str:
        """The tie policy of this call: ``"average"``, ``"noise"`` or ``"first"``."""
        training = self.training and not (self.average_in_training and self.ties == "auto")
        return resolve_mode(self.ties, training, inp.noise)

    def extra_repr(self) -> str:
        return f"ties={self.ties!r}"


#: Built-in frame methods: name → ``"package.module:Class"``, imported on first use.
BUILTIN_FRAMES: dict[str, str] = {
    "max": "crystalframer.frames.max:MaxFrame",
    "static": "crystalframer.frames.max:StaticFrame",
    "weighted_pca": "crystalframer.frames.pca:WeightedPCAFrame",
    "pca": "crystalframer.frames.pca:GlobalPCAFrame",
    "lattice": "crystalframer.frames.lattice:LatticeFrame",
    "spframe_quat": "crystalframer.nn.frame_predictors:SPFrameQuaternion",
    "spframe_gs": "crystalframer.nn.frame_predictors:SPFrameGramSchmidt",
    "spframe_global": "crystalframer.nn.frame_predictors:SPFrameGlobal",
    "equiv_gs_local": "crystalframer.nn.frame_predictors:EquivariantGSLocalFrame",
}


def is_frame_path(name) -> bool:
    """Whether ``name`` is a ``"package.module:Class"`` path rather than a registry name."""
    return isinstance(name, str) and ":" in name


def load_frame_class(path: str) -> type[FrameMethod]:
    """Import the :class:`FrameMethod` subclass named by ``"package.module:Class"``.

    Raises:
        ValueError: a malformed path, a module that cannot be imported, no such attribute, or an attribute
            that is not a FrameMethod subclass.
    """
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"frame method {path!r}: a plugin name must look like 'package.module:Class'")
    try:
        obj = importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"frame method {path!r}: cannot import module {module!r} ({err})") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"frame method {path!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, FrameMethod)):
        raise ValueError(f"frame method {path!r}: {attr!r} is not a FrameMethod subclass "
                         "(crystalframer.frames.base.FrameMethod)")
    return obj


class FrameRegistry(MutableMapping):
    """name → :class:`FrameMethod` class.

    Entries may be classes or ``"package.module:Class"`` paths, imported when first looked up. A key that is
    itself such a path resolves without being registered (``registry["my.pkg.frames:MyFrame"]``); iteration
    and ``in`` see the registered names only.
    """

    def __init__(self, entries: dict[str, str | type[FrameMethod]] | None = None):
        self._entries: dict[str, str | type[FrameMethod]] = dict(entries or {})

    def __getitem__(self, name: str) -> type[FrameMethod]:
        entry = self._entries.get(name)
        if entry is None:
            if is_frame_path(name):
                return load_frame_class(name)
            raise KeyError(name)
        if isinstance(entry, str):
            entry = load_frame_class(entry)
            self._entries[name] = entry
        return entry

    def __setitem__(self, name: str, cls: str | type[FrameMethod]) -> None:
        self._entries[name] = cls

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"FrameRegistry({sorted(self._entries)})"


FRAMES = FrameRegistry(BUILTIN_FRAMES)


def register_frame(cls: type[FrameMethod]) -> type[FrameMethod]:
    """Class decorator adding a frame method to the registry under ``cls.name``."""
    if not cls.name or is_frame_path(cls.name):
        raise ValueError(f"frame method {cls.__qualname__}: set a registry name without ':' in its 'name' attribute")
    FRAMES[cls.name] = cls
    return cls


def build_frame(name: str, **options) -> FrameMethod | None:
    """The frame method registered as ``name``, or named by a ``"package.module:Class"`` path
    (``"none"`` → None: Crystalformer)."""
    if name in ("none", "no", None):
        return None
    try:
        cls = FRAMES[name]
    except KeyError:
        raise ValueError(f"unknown frame method {name!r}; available: none, {', '.join(sorted(FRAMES))}, or a "
                         "plugin given as 'package.module:Class'") from None
    return cls(**options)
