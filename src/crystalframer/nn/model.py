"""Crystalformer / CrystalFramer network: embedding, T-Fixup blocks without norms, mean pooling, MLP head."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystalframer.frames.base import FRAMES, build_frame
from crystalframer.geometry.images import IMAGE_TOL, SpherePool, sphere_images, tail_factor
from crystalframer.geometry.tensors import column_names, n_columns, target_kind
from crystalframer.nn.attention import DistanceDecayAttention, Geometry
from crystalframer.nn.basis import AngleBasis, DistanceBasis
from crystalframer.nn.elements import element_property_table
from crystalframer.nn.heads import check_task
from crystalframer.nn.tensor_heads import FrameTensorHead

N_ELEMENTS = 98


class Block(nn.Module):
    """x ← x + Attn(x);  x ← x + W2 ReLU(W1 x + b1) + b2  (post-norm with the norms removed, T-Fixup)."""

    def __init__(self, attn: DistanceDecayAttention, ff_dim: int):
        super().__init__()
        self.attn = attn
        self.ff1 = nn.Linear(attn.dim, ff_dim)
        self.ff2 = nn.Linear(ff_dim, attn.dim)
        for lin in (self.ff1, self.ff2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, geo: Geometry, layer: int = 0) -> tuple[Tensor, dict]:
        # Under autocast (bf16-mixed) the attention runs in float32: its index sums and custom autograd
        # functions need one dtype, and its logits (a·d², ~1e2) and frame scores would lose their ties in
        # bf16. The feed-forward layers keep autocast.
        with torch.autocast(x.device.type, enabled=False):
            x = at_least_float32(x)
            h, info = self.attn(x, geo, layer)
            x = x + h
        return x + self.ff2(F.relu(self.ff1(x))), info


def at_least_float32(x: Tensor) -> Tensor:
    """float16/bfloat16 → float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class CrystalFramerNet(nn.Module):
    """The network, tensors in and out (no file or structure handling).

    Args:
        frame: frame method name (``"none"``: Crystalformer; ``"max"``, ``"static"``, ``"weighted_pca"``,
            ``"pca"``, ``"lattice"``, and any registered method).
        n_targets, target_names: outputs of the head.
        task: ``"regression"`` or ``"classification"`` (binary targets: the head outputs logits and
            ``predict`` returns probabilities of class 1).
        num_layers, model_dim, num_heads, ff_dim, head_dims: sizes (paper: 4, 128, 8, 512, [128]).
        r0, sigma_lb, beta: σ parametrisation (1.4 Å, 0.5, 0.1).
        dist_bins, dist_max, dist_width, dist_coef: distance basis (64, 14 Å, 1, 1).
        angle_bins, angle_width, angle_coef: angular basis (64, 4, 1).
        basis_window: evaluate only the published windows of basis functions (False: the paper's full
            basis; True: the released kernels, needed for numerical parity with published weights).
        images: ``"sphere"`` (default: every image within a radius that follows σ, or within ``cutoff`` Å;
            invariant to the unit cell and to the periodic image given for each atom) or ``"box"`` (the
            released per-(atom, head) shift box centred on the raw coordinates; compatibility mode for parity
            with published models).
        cutoff: a fixed sphere radius in Å, or None (default): the radius follows the model's σ, per layer
            and atom R_i = k · max_h σ_ih with k = 5.83 for ``image_tol`` = 1e-6 (the relative attention
            weight left out for equal q·k, see :mod:`crystalframer.geometry.images`). At σ_max = r0/√b =
            1.98 Å that is 11.54 Å; the former fixed default 6.93 Å (3.5 σ_max) dropped up to 7.9e-3 there.
            Checkpoints of models trained with a fixed radius keep it (it is in their config).
        image_tol: tail tolerance of the σ-following sphere (ignored with a fixed ``cutoff``).
        box_sigma, box_min: the released box rule (3.5 σ, R_min = 2), for ``images="box"``.
        frame_noise: tie-breaking noise (Å², published 1e-5); 0 gives the deterministic tie order
            (first image in (j, n) order).
        frame_options: extra options of the frame method (e.g. ``{"signs": "moment"}``).
        target_shapes: per target, ``()`` (scalar, default), ``(3,)``, ``(3, 3)``, ``"3x3sym"`` or ``(6, 6)``
            (elastic tensor, Voigt): geometric targets are predicted in the frames of the last layer and
            rotated back (:mod:`crystalframer.nn.tensor_heads`), exactly equivariant; they need a frame
            method. Outputs are then flattened per target (``target_names`` lists the columns, e.g.
            ``e_total[0,1]``), and ``target_mean``/``target_std`` have one entry per column.
        element_features: add a linear map of tabulated element properties (group, row, electronegativity,
            radii, valence shells, ...; :mod:`crystalframer.nn.elements`) to the learned atom embedding, so that
            what is learned about one element carries over to chemically similar ones (small data sets).
    """

    def __init__(self, frame: str = "max", n_targets: int = 1, target_names: Sequence[str] | None = None,
                 num_layers: int = 4, model_dim: int = 128, num_heads: int = 8, ff_dim: int = 512,
                 head_dims: Sequence[int] = (128,), r0: float = 1.4, sigma_lb: float = 0.5, beta: float = 0.1,
                 dist_bins: int = 64, dist_max: float | None = None, dist_width: float = 1.0,
                 dist_coef: float = 1.0, angle_bins: int = 64, angle_width: float = 4.0, angle_coef: float = 1.0,
                 basis_window: bool = False, images: str = "sphere", cutoff: float | None = None,
                 box_sigma: float = 3.5, box_min: int = 2, frame_noise: float = 1e-5, image_tol: float = IMAGE_TOL,
                 frame_options: dict[str, Any] | None = None, target_units: Sequence[str] | None = None,
                 task: str = "regression", target_shapes: Sequence[Any] | None = None,
                 element_features: bool = False):
        super().__init__()
        check_task(task)
        if images not in ("sphere", "box"):
            raise ValueError(f"images must be 'sphere' or 'box', got {images!r}")
        target_names = list(target_names) if target_names is not None else [f"target_{k}" for k in range(n_targets)]
        if len(target_names) != n_targets:
            raise ValueError(f"{len(target_names)} target names for {n_targets} targets")
        dist_max = 10 * r0 if dist_max is None else dist_max
        cutoff = None if cutoff is None else float(cutoff)
        tail_factor(image_tol)  # validates the tolerance
        self.config = dict(
            frame=frame or "none", n_targets=n_targets, target_names=target_names, num_layers=num_layers,
            model_dim=model_dim, num_heads=num_heads, ff_dim=ff_dim, head_dims=list(head_dims), r0=r0,
            sigma_lb=sigma_lb, beta=beta, dist_bins=dist_bins, dist_max=dist_max, dist_width=dist_width,
            dist_coef=dist_coef, angle_bins=angle_bins, angle_width=angle_width, angle_coef=angle_coef,
            basis_window=basis_window, images=images, cutoff=cutoff, image_tol=float(image_tol), box_sigma=box_sigma,
            box_min=box_min,
            frame_noise=frame_noise, frame_options=dict(frame_options or {}),
            target_units=list(target_units) if target_units is not None else [""] * n_targets, task=task,
        )
        kinds = [target_kind(s) for s in target_shapes] if target_shapes is not None else ["scalar"] * n_targets
        if len(kinds) != n_targets:
            raise ValueError(f"{len(kinds)} target shapes for {n_targets} targets {target_names}")
        geometric = [k for k in kinds if k != "scalar"]
        if geometric:
            if (frame or "none") in ("none", "no"):
                bad = [n for n, k in zip(target_names, kinds) if k != "scalar"]
                raise ValueError(f"targets {bad} have shapes {geometric}: vector and tensor targets are predicted "
                                 f"in per-atom frames, which frame='none' (Crystalformer) does not have; choose a "
                                 f"frame method such as 'max'")
            if task != "regression":
                raise ValueError("vector and tensor targets need task='regression'")
            # only recorded when a target has a shape: all-scalar configs stay as they were
            self.config["target_shapes"] = kinds
        self.target_kinds = kinds
        n_out = sum(n_columns(k) for k in kinds)
        self.task = task
        self.dist_basis = DistanceBasis(dist_bins, dist_max, dist_width, window=basis_window)
        angle_basis = AngleBasis(angle_bins, angle_width, window=basis_window)
        self.embedding = nn.Linear(N_ELEMENTS, model_dim, bias=False)
        if element_features:
            # tabulated element properties, added to the learned embedding; kept in the state_dict so that a
            # checkpoint does not depend on the pymatgen version that loads it
            self.config["element_features"] = True  # recorded only when on: older configs stay as they were
            self.register_buffer("element_table", element_property_table(N_ELEMENTS))
            self.element_embedding = nn.Linear(self.element_table.shape[1], model_dim, bias=False)
        layers = []
        for layer in range(num_layers):
            # frame methods with learned parts (SPFrame) name the sizes they need in ``context``
            ctx = {"dim": model_dim, "heads": num_heads, "layer": layer}
            ctx = {k: ctx[k] for k in getattr(FRAMES.get(frame), "context", ())}
            frame_mod = build_frame(frame, **{**ctx, **(frame_options or {})})
            attn = DistanceDecayAttention(model_dim, num_heads, r0, sigma_lb, beta, self.dist_basis, angle_basis,
                                          dist_coef, angle_coef, frame_mod, frame_noise, images, box_sigma, box_min)
            layers.append(Block(attn, ff_dim))
        self.layers = nn.ModuleList(layers)
        head, width = [], model_dim
        for hd in head_dims:
            head += [nn.Linear(width, hd), nn.ReLU()]
            width = hd
        # with geometric targets only there is no scalar head (it would be a Linear with 0 outputs)
        self.head = nn.Sequential(*head, nn.Linear(width, n_targets - len(geometric))) if len(geometric) < n_targets \
            else None
        if geometric:
            self.tensor_head = FrameTensorHead(model_dim, num_heads, geometric, hidden=head_dims[0] if head_dims
                                               else model_dim)
        self.register_buffer("target_mean", torch.zeros(n_out))
        self.register_buffer("target_std", torch.ones(n_out))
        self._t_fixup()

    def _t_fixup(self) -> None:
        """T-Fixup (Huang et al., ICML 2020, as in Crystalformer): N(0, d^-1/2 (9L)^-1/4) embedding; W_v, W_o, W1,
        W2 scaled by 0.67 L^-1/4."""
        L, d = len(self.layers), self.config["model_dim"]
        nn.init.normal_(self.embedding.weight, std=d**-0.5 * (9 * L) ** -0.25)
        if hasattr(self, "element_embedding"):  # P unit-variance inputs: the same output scale as the one-hot
            P = self.element_embedding.in_features
            nn.init.normal_(self.element_embedding.weight, std=d**-0.5 * (9 * L) ** -0.25 / P**0.5)
        with torch.no_grad():
            for blk in self.layers:
                for w in (blk.attn.w_v, blk.attn.out.weight, blk.ff1.weight, blk.ff2.weight):
                    w.mul_(0.67 * L**-0.25)

    # -- protocol ------------------------------------------------------------------------------------
    @property
    def frame(self) -> str:
        return self.config["frame"]

    @property
    def target_names(self) -> list[str]:
        """The output columns: the target names, with geometric targets flattened (``e_total[0,1]``)."""
        names = self.config["target_names"]
        if not self.has_geometric_targets:
            return list(names)
        return [c for n, k in zip(names, self.target_kinds) for c in column_names(n, k)]

    @property
    def target_units(self) -> list[str]:
        """Units per output column (a geometric target's unit repeated over its columns)."""
        units = self.config["target_units"]
        return [u for u, k in zip(units, self.target_kinds) for _ in range(n_columns(k))]

    @property
    def has_geometric_targets(self) -> bool:
        return "target_shapes" in self.config

    def geometry(self, batch) -> Geometry:
        """Image slots and distance basis for a batch (no gradient: positions are inputs; never autocast)."""
        with torch.no_grad(), torch.autocast(batch.pos.device.type, enabled=False):
            pool = None
            if self.config["images"] == "sphere" and self.config["cutoff"] is not None:
                img = sphere_images(batch.lattice, batch.pos, batch.ptr, self.config["cutoff"],
                                    candidates=getattr(batch, "sphere", None))
                dist = self.dist_basis(img.d2.sqrt())
            else:
                img, dist = None, None
                if self.config["images"] == "sphere":  # σ-following: each layer takes its radius from the pool
                    pool = SpherePool(batch.lattice, batch.pos, batch.ptr, self.dist_basis,
                                      self.config.get("image_tol", IMAGE_TOL),
                                      candidates=getattr(batch, "sphere", None))
        return Geometry(images=img, dist_basis=dist, lattice=batch.lattice, pos=batch.pos, batch=batch.batch,
                        ptr=batch.ptr, pool=pool, species=batch.species)

    def encode(self, batch, keep: bool = False) -> dict[str, Any]:
        """Run the blocks. Returns ``x`` (N, d) and, with ``keep``, per-layer states, a and frames."""
        geo = self.geometry(batch)
        x = self.embedding(batch.species)
        if hasattr(self, "element_embedding"):
            x = x + self.element_embedding(batch.species @ self.element_table.to(batch.species.dtype))
        states, infos = [], []
        for layer, blk in enumerate(self.layers):
            x, info = blk(x, geo, layer)
            if keep:
                states.append(x)
                infos.append(info)
        out: dict[str, Any] = {"x": x}
        if self.frame != "none" and self.layers:
            out["frame_set"] = info["frame_set"]  # the last layer's (frames (N, H, T, 3, 3), weights (N, H, T))
        if keep:
            out["states"] = torch.stack(states, 1)  # (N, L, d)
            out["a"] = torch.stack([i["a"] for i in infos], 1)  # (N, L, H)
            if self.frame != "none":
                out["frames"] = torch.stack([i["frames"] for i in infos], 1)  # (N, L, H, 3, 3)
        return out

    def pool(self, x: Tensor, batch) -> Tensor:
        """Mean over the atoms of each structure: (N, d) → (B, d)."""
        B = batch.num_graphs
        s = torch.zeros(B, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, batch.batch, x)
        return s / batch.num_atoms.to(x.dtype)[:, None]

    def forward(self, batch, return_all: bool = False):
        """(B, n_targets) predictions on the normalised target scale.

        With ``return_all``, a dict: ``pred``, ``pooled`` (B, d), ``states`` (N, L, d), ``a`` (N, L, H)
        and ``frames`` (N, L, H, 3, 3) for frame models.
        """
        enc = self.encode(batch, keep=return_all)
        pooled = self.pool(enc["x"], batch)
        pred = self.head(pooled) if self.head is not None else pooled[:, :0]
        if self.has_geometric_targets:
            pred = self._with_geometric(pred, enc, batch)
        if not return_all:
            return pred
        enc.update(pred=pred, pooled=pooled)
        return enc

    def _with_geometric(self, scalars: Tensor, enc: dict[str, Any], batch) -> Tensor:
        """Scalar head outputs (B, n_scalar) + the frame head's geometric outputs → (B, n_columns) in target order."""
        frames, weights = enc["frame_set"]
        geo = self.tensor_head(enc["x"], frames, weights, batch.batch, batch.num_graphs)
        parts, ks, kg = [], 0, 0
        for kind in self.target_kinds:
            if kind == "scalar":
                parts.append(scalars[:, ks:ks + 1])
                ks += 1
            else:
                n = n_columns(kind)
                parts.append(geo[:, kg:kg + n])
                kg += n
        return torch.cat(parts, 1)

    def embed_batch(self, batch) -> Tensor:
        """(B, d) pooled embeddings (the input of the head)."""
        return self.pool(self.encode(batch)["x"], batch)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        c = self.config["cutoff"]
        tol = self.config.get("image_tol", IMAGE_TOL)
        radius = f"cutoff={c:.3f} Å" if c is not None else f"cutoff=σ-following (tol {tol:g})"
        return f"frame={self.frame!r}, images={self.config['images']!r}, {radius}"

