"""ECN: Equivariant Crystal Networks (Kaba & Ravanbakhsh, NeurIPS 2022), the network on an :class:`ECNBatch`.

The input is a 2×2×2 supercell graph of the primitive cell (built by :mod:`crystalframer.data.transforms.ecn`;
:class:`crystalframer.models.ECN` adds graph building and prediction on structures): 8n nodes
(atom a in cell c), edges from Voronoi/covalent-radius neighbours with wrap-around, plus self-loops. The
group ``G = G_lat × S_n`` acts on nodes; ``G_lat`` is ``p1`` (``(Z_2)^3``, 8 pair colours) or ``s8`` (all
permutations of the cells, 2 colours), see :mod:`crystalframer.nn.ecn_groups`.

One layer (following the paper's code):

* ``v_e = [h_i ‖ h_j ‖ e_ij]`` for an edge j → i (i the receiver);
* edge function: ``v_e`` is put in the slot of the sender's cell c_j of an 8-slot tensor, two
  G_lat-equivariant linear maps (weights tied by pair colour) with swish after each, then the slot of the
  receiver's cell c_i is read. Evaluated in closed form: ``u_k = swish(W1[k] v + β1)`` for the K colours,
  mixed by the counts ``N[κ(c_i, c_j)]`` and contracted with ``W2`` (see :func:`ecn_groups.mixing_tensor`);
  exact, and K/8 of the cost of 8 slots. A cheaper per-colour MLP ``φ_κ(v)`` is the option
  ``edge_function="colour"``;
* two branches with their own weights: all edges, and "identity" edges (both ends images of one atom,
  self-loops included). Each message is gated, ``m ← sigmoid(w·m + b) m``, and summed at the receiver;
* node update (one node colour: G acts transitively on the cells):
  ``h ← h + W_b swish(W_a [M ‖ h] + b_a) + b_b``.

Readout: Linear(D→R), swish, Linear(R→R), mean over all 8n nodes, Linear(R→R), swish, Linear(R→out).

Defaults are the paper code's: D = 100, 6 layers, 20 Gaussians on [0, 6] Å with width 0.6 Å, edge
embedding 20, no normalisation, no dropout.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystalframer.data.batch import ECNBatch
from crystalframer.geometry.cells import N_CELLS
from crystalframer.nn.ecn_groups import CellEquivariantLinear, CellGroup, canonical_group_name, get_group
from crystalframer.nn.heads import check_task

#: Width of the species vectors of a batch: occupancies of Z = 1..98.
N_ELEMENTS = 98
SPECIES_ENCODINGS = ("onehot", "group_period")
EDGE_FUNCTIONS = ("slots", "colour")


def group_period_table() -> Tensor:
    """(98, 39) float: one-hot period (7) ‖ one-hot long-form group column (32) for Z = 1..98.

    Columns of the 32-wide table: s block 0–1, f block 2–15, d block 16–25, p block 26–31 (He in 31).
    Multiplying an occupancy-weighted species vector by this table gives the paper's "Group+Period" input.
    """
    starts = [1, 3, 11, 19, 37, 55, 87, 119]
    out = torch.zeros(N_ELEMENTS, 39)
    for z in range(1, N_ELEMENTS + 1):
        p = max(i for i in range(7) if z >= starts[i])
        k = z - starts[p]
        length = starts[p + 1] - starts[p]
        if length == 2:
            col = 0 if k == 0 else 31
        elif length == 8:
            col = k if k < 2 else 24 + k
        elif length == 18:
            col = k if k < 2 else (16 + k - 2 if k < 12 else 26 + k - 12)
        else:  # the 32-wide periods fill the table one to one
            col = k
        out[z - 1, p] = 1.0
        out[z - 1, 7 + col] = 1.0
    return out


class GaussianExpansion(nn.Module):
    """d (E,) in Å → exp(−(d − μ_k)² / w²) (E, K), μ_k evenly spaced on [0, d_max]."""

    def __init__(self, count: int = 20, d_max: float = 6.0, width: float | None = None):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, d_max, count), persistent=False)
        self.width = float(width if width is not None else 2.0 * d_max / count)

    def forward(self, d: Tensor) -> Tensor:
        return torch.exp(-((d[:, None] - self.centres) / self.width) ** 2)


class CellEdgeFunction(nn.Module):
    """ECN's two-layer cell-equivariant edge function φ(v; c_i, c_j), as in the paper's code.

    Reference form: put v = [h_i ‖ h_j ‖ e_ij] in slot c_j of an 8-slot tensor, apply ``lin1`` and
    ``lin2`` (:class:`CellEquivariantLinear`) with swish after each, read slot c_i
    (:meth:`forward_dense`). :meth:`forward` computes the same in closed form with K instead of 8 hidden
    slots, and multiplies the node parts of v once per node.
    """

    def __init__(self, group: CellGroup, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.group = group
        self.lin1 = CellEquivariantLinear(group, in_features, hidden, fan_in_slots=1)
        self.lin2 = CellEquivariantLinear(group, hidden, out_features, fan_in_slots=N_CELLS)
        self.register_buffer("colours", torch.tensor(group.colours), persistent=False)
        self.register_buffer("mixing", torch.tensor(group.mixing, dtype=torch.float32), persistent=False)
        N = torch.tensor(group.mixing)
        if bool(((N == 0) | (N == 1)).all() and (N.sum(-1) == 1).all()):
            self.register_buffer("mixing_perm", N.argmax(-1), persistent=False)  # (K, K): k' → k
        else:
            self.mixing_perm = None

    def forward(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor, cell: Tensor) -> Tensor:
        """φ([h_dst ‖ h_src ‖ e]; c_dst, c_src) for every edge.

        Args:
            h: (N, D) node states; e: (E, C_e) edge features; src, dst: (E,) node ids; cell: (N,) cells.
        Returns:
            (E, C_out).
        """
        E, D = src.shape[0], h.shape[1]
        K, H, C_in = self.lin1.weight.shape
        C_out = self.lin2.weight.shape[1]
        W1 = self.lin1.weight.reshape(K * H, C_in)
        # W1 v = W1[:, :D] h_dst + W1[:, D:2D] h_src + W1[:, 2D:] e: the node parts are computed once per
        # node and gathered, which is ~E/N times cheaper than multiplying the concatenated edge vectors
        pre = torch.addmm(self.lin1.bias.repeat(K), e, W1[:, 2 * D:].T)
        pre = pre.add_((h @ W1[:, :D].T)[dst]).add_((h @ W1[:, D:2 * D].T)[src])  # in place: saves two (E, KH)
        # h1[b] = swish(W1[C[b, c_j]] v + β1) takes one of K values u_k
        u = F.silu(pre).view(E, K, H)
        # Σ_b W2[C[c_i, b]] h1[b] = Σ_{k', k} N[κ, k', k] W2[k'] u_k with κ = C[c_i, c_j]
        kappa = self.colours[cell[dst], cell[src]]
        if self.mixing_perm is not None:  # every N[κ] is a permutation (P1): a gather instead of a bmm
            z = u[torch.arange(E, device=u.device)[:, None], self.mixing_perm[kappa]]
        else:
            z = torch.bmm(self.mixing.to(h.dtype)[kappa], u)  # (E, K, H): summed hidden slots per colour k'
        w2 = self.lin2.weight.permute(0, 2, 1).reshape(K * H, C_out)
        return F.silu(z.reshape(E, K * H) @ w2 + self.lin2.bias)

    def forward_dense(self, v: Tensor, cell_dst: Tensor, cell_src: Tensor) -> Tensor:
        """The 8-slot reference evaluation (for tests; 8/K times the memory of :meth:`forward`)."""
        x = v.new_zeros(v.shape[0], N_CELLS, v.shape[1])
        x[torch.arange(v.shape[0], device=v.device), cell_src] = v
        h = F.silu(self.lin2(F.silu(self.lin1(x))))
        return h[torch.arange(v.shape[0], device=v.device), cell_dst]


class ColourEdgeFunction(nn.Module):
    """Per-colour MLP φ_κ(v) = swish(W2[κ] swish(W1[κ] v + b1[κ]) + b2[κ]), κ = C[c_i, c_j] (option).

    Equivariant because κ is constant on G-orbits of cell pairs; cheaper than :class:`CellEdgeFunction`.
    """

    def __init__(self, group: CellGroup, in_features: int, hidden: int, out_features: int):
        super().__init__()
        K = group.num_colours
        self.register_buffer("colours", torch.tensor(group.colours), persistent=False)
        self.w1 = nn.Parameter(torch.empty(K, hidden, in_features))
        self.b1 = nn.Parameter(torch.empty(K, hidden))
        self.w2 = nn.Parameter(torch.empty(K, out_features, hidden))
        self.b2 = nn.Parameter(torch.empty(K, out_features))
        for w, b, fan in ((self.w1, self.b1, in_features), (self.w2, self.b2, hidden)):
            bound = 1.0 / math.sqrt(fan)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor, cell: Tensor) -> Tensor:
        """Same arguments as :meth:`CellEdgeFunction.forward`."""
        v = torch.cat([h[dst], h[src], e], dim=-1)
        kappa = self.colours[cell[dst], cell[src]]
        out = v.new_zeros(v.shape[0], self.w2.shape[1])
        for k in range(self.w1.shape[0]):
            idx = torch.nonzero(kappa == k).squeeze(1)
            if idx.numel() == 0:
                continue
            h = F.silu(v[idx] @ self.w1[k].T + self.b1[k])
            out = out.index_copy(0, idx, F.silu(h @ self.w2[k].T + self.b2[k]).to(out.dtype))  # autocast
        return out


def sum_dtype(x: Tensor) -> torch.dtype:
    """Accumulator dtype of sums over many edges or nodes: never below float32 (autocast gives bf16 inputs)."""
    return torch.promote_types(x.dtype, torch.float32)


class ECNLayer(nn.Module):
    """One equivariant message-passing layer: all-edge and identity-edge branches, gates, residual node MLP."""

    def __init__(self, group: CellGroup, width: int, edge_dim: int, edge_function: str = "slots"):
        super().__init__()
        cls = CellEdgeFunction if edge_function == "slots" else ColourEdgeFunction
        din = 2 * width + edge_dim
        self.phi_all = cls(group, din, width, width)
        self.phi_id = cls(group, din, width, width)
        self.gate_all = nn.Linear(width, 1)
        self.gate_id = nn.Linear(width, 1)
        self.node_a = nn.Linear(2 * width, width)
        self.node_b = nn.Linear(width, width)

    def forward(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor, cell: Tensor, identity: Tensor) -> Tensor:
        """h (N, D), e (E, edge_dim), src/dst (E,), cell (N,), identity (E,) bool → (N, D)."""
        m = self.phi_all(h, e, src, dst, cell)
        m = torch.sigmoid(self.gate_all(m)) * m
        acc = sum_dtype(m)
        M = torch.zeros(h.shape[0], m.shape[1], dtype=acc, device=h.device).index_add(0, dst, m.to(acc))
        idx = torch.nonzero(identity).squeeze(1)
        if idx.numel():
            d_id = dst[idx]
            mi = self.phi_id(h, e[idx], src[idx], d_id, cell)
            M = M.index_add(0, d_id, (torch.sigmoid(self.gate_id(mi)) * mi).to(acc))
        return h + self.node_b(F.silu(self.node_a(torch.cat([M, h], dim=-1))))


class ECNNet(nn.Module):
    """ECN regression/classification network on supercell graphs (:class:`ECNBatch`).

    Args:
        group: ``"s8"`` (S_8 × S_n, the paper code's default, alias ``"set"``) or ``"p1"`` (P1 × S_n,
            alias ``"ptriclinic"``); the other Bravais cell groups of :mod:`ecn_groups` are accepted too.
        n_targets: outputs per structure.
        target_names, target_units: optional names and units of the targets (stored in ``config``).
        task: ``"regression"`` or ``"classification"`` (binary targets; outputs are logits).
        width: node width D (paper code: 100; the paper's §7 says 128).
        edge_dim: edge embedding width (20).
        num_layers: message-passing layers (6).
        num_rbf, rbf_max, rbf_width: Gaussian distance expansion (20 centres on [0, 6] Å, width
            ``2·rbf_max/num_rbf`` = 0.6 Å by default).
        readout_dim: hidden width R of the readout (default: ``width``, i.e. 100 as in the paper).
        species_encoding: ``"onehot"`` (98 dims) or ``"group_period"`` (39 dims).
        hubbard: append the structure's Hubbard-U flag to every node input.
        edge_function: ``"slots"`` (paper code) or ``"colour"`` (per-colour MLP).

    ``config`` holds every constructor argument (JSON-able), so ``ECNNet(**net.config)`` rebuilds it.
    Outputs are on the normalised target scale; the buffers ``target_mean`` / ``target_std`` (filled by
    the trainer) map them back: ``y = out · std + mean``.
    """

    def __init__(self, group: str = "s8", n_targets: int = 1, target_names: Sequence[str] | None = None, *,
                 width: int = 100, edge_dim: int = 20, num_layers: int = 6, num_rbf: int = 20,
                 rbf_max: float = 6.0, rbf_width: float | None = None, readout_dim: int | None = None,
                 species_encoding: str = "onehot", hubbard: bool = False, edge_function: str = "slots",
                 target_units: Sequence[str] | None = None, task: str = "regression"):
        super().__init__()
        check_task(task)
        group = canonical_group_name(group)
        if species_encoding not in SPECIES_ENCODINGS:
            raise ValueError(f"species_encoding must be one of {SPECIES_ENCODINGS}, got {species_encoding!r}")
        if edge_function not in EDGE_FUNCTIONS:
            raise ValueError(f"edge_function must be one of {EDGE_FUNCTIONS}, got {edge_function!r}")
        if n_targets < 1 or width < 1 or num_layers < 0:
            raise ValueError("n_targets and width must be >= 1 and num_layers >= 0")
        target_names = [f"target_{k}" for k in range(n_targets)] if target_names is None else list(target_names)
        target_units = [""] * n_targets if target_units is None else list(target_units)
        if len(target_names) != n_targets or len(target_units) != n_targets:
            raise ValueError(f"{len(target_names)} target names and {len(target_units)} units for "
                             f"n_targets={n_targets}")
        readout_dim = int(readout_dim or width)
        self.config: dict[str, Any] = {
            "group": group, "n_targets": int(n_targets),
            "target_names": [str(t) for t in target_names], "target_units": [str(u) for u in target_units],
            "width": int(width), "edge_dim": int(edge_dim), "num_layers": int(num_layers),
            "num_rbf": int(num_rbf), "rbf_max": float(rbf_max),
            "rbf_width": None if rbf_width is None else float(rbf_width), "readout_dim": readout_dim,
            "species_encoding": species_encoding, "hubbard": bool(hubbard), "edge_function": edge_function,
            "task": task,
        }
        self.task = task
        self.group = get_group(group)
        self.n_targets = int(n_targets)
        self.target_names = self.config["target_names"]
        self.use_hubbard = bool(hubbard)
        self.species_encoding = species_encoding

        if species_encoding == "group_period":
            self.register_buffer("species_table", group_period_table(), persistent=False)
            n_species = 39
        else:
            self.species_table = None
            n_species = N_ELEMENTS
        self.node_embed = nn.Linear(n_species + int(self.use_hubbard) + N_CELLS, width)
        self.rbf = GaussianExpansion(num_rbf, rbf_max, rbf_width)
        self.edge_embed = nn.Linear(num_rbf, edge_dim)
        self.layers = nn.ModuleList(ECNLayer(self.group, width, edge_dim, edge_function) for _ in range(num_layers))
        self.pre_pool = nn.Sequential(nn.Linear(width, readout_dim), nn.SiLU(), nn.Linear(readout_dim, readout_dim))
        self.head = nn.Sequential(nn.Linear(readout_dim, readout_dim), nn.SiLU(), nn.Linear(readout_dim, n_targets))
        self.register_buffer("target_mean", torch.zeros(n_targets))
        self.register_buffer("target_std", torch.ones(n_targets))

    # ------------------------------------------------------------------------------------------------------------
    # model

    def node_inputs(self, batch: ECNBatch) -> Tensor:
        """(N, F) node input: species encoding ‖ [Hubbard flag] ‖ one-hot cell index."""
        dtype = self.node_embed.weight.dtype
        sp = batch.species.to(dtype)
        if self.species_table is not None:
            sp = sp @ self.species_table.to(dtype)
        parts = [sp]
        if self.use_hubbard:
            parts.append(batch.hubbard.to(dtype)[batch.batch][:, None])
        parts.append(F.one_hot(batch.cell, N_CELLS).to(dtype))
        return torch.cat(parts, dim=-1)

    def node_states(self, batch: ECNBatch) -> Tensor:
        """(N, D) node states after the message-passing layers."""
        dtype = self.node_embed.weight.dtype
        h = self.node_embed(self.node_inputs(batch))
        e = self.edge_embed(self.rbf(batch.edge_dist.to(dtype)))
        for layer in self.layers:
            h = layer(h, e, batch.edge_src, batch.edge_dst, batch.cell, batch.edge_identity)
        return h

    def embed_batch(self, batch: ECNBatch) -> Tensor:
        """(B, R) pooled embedding: mean over each structure's 8n nodes of the pre-pool readout (R = width)."""
        r = self.pre_pool(self.node_states(batch))
        B = batch.num_graphs
        acc = sum_dtype(r)
        total = torch.zeros(B, r.shape[1], dtype=acc, device=r.device).index_add(0, batch.batch, r.to(acc))
        counts = (batch.ptr[1:] - batch.ptr[:-1]).to(acc).clamp(min=1)
        return total / counts[:, None]

    def forward(self, batch: ECNBatch) -> Tensor:
        """(B, n_targets) predictions on the normalised target scale."""
        return self.head(self.embed_batch(batch))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
