"""ECN: cell groups and colours, equivariant maps, model protocol, invariances of predictions, training step."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from crystalframer.data.batch import ECNBatch
from crystalframer.data.structures import to_crystal
from crystalframer.data.transforms.ecn import ECNGraphTransform
from crystalframer.data.transforms.ecn_graph import build_ecn_graph, collate_ecn
from crystalframer.geometry.cells import CELL_COORDS, cell_index
from crystalframer.models import ECN
from crystalframer.nn.ecn import CellEdgeFunction, ECNNet, group_period_table
from crystalframer.nn.ecn_groups import (GROUP_NAMES, CellEquivariantLinear, get_group, lattice_point_group,
                                         linear_permutation, permute_cells)
from tests.data.test_ecn_graph import PEROV5, monoclinic, moved, perovskite, rock_salt_conventional, supercell

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These graphs are tiny: one thread avoids OpenMP oversubscription on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = dict(width=12, edge_dim=6, num_layers=2, num_rbf=8, readout_dim=10)


# ----------------------------------------------------------------------------------------------------------------
# groups and colours


def test_p1_colours_are_xor_and_s8_colours_are_same_or_different():
    p1 = get_group("p1")
    a, b = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    assert p1.num_colours == 8
    assert np.array_equal(p1.colours, a ^ b)
    s8 = get_group("s8")
    assert s8.num_colours == 2
    assert np.array_equal(s8.colours, (a != b).astype(int))
    assert get_group("ptriclinic") is p1 and get_group("set") is s8
    with pytest.raises(ValueError):
        get_group("hexagonal-ish")


def test_cell_index_convention():
    assert [int(cell_index(c)) for c in CELL_COORDS] == list(range(8))
    assert int(cell_index((1, 0, 1))) == 5 and int(cell_index((3, -2, 1))) == 5  # reduced modulo 2


# Spec B.3: colour counts of every lattice group on the 2×2×2 supercell, and the lattice point-group orders.
COLOUR_TABLE = {"p1": 8, "pmonoclinic": 8, "porthorhombic": 8, "cmonoclinic": 6, "corthorhombic": 6,
                "ptetragonal": 6, "borthorhombic": 5, "forthorhombic": 5, "btetragonal": 4, "prhombohedral": 4,
                "phexagonal": 4, "pcubic": 4, "bcubic": 3, "fcubic": 3, "s8": 2}
ORDERS = {"p1": 2, "pmonoclinic": 4, "cmonoclinic": 4, "porthorhombic": 8, "corthorhombic": 8, "borthorhombic": 8,
          "forthorhombic": 8, "ptetragonal": 16, "btetragonal": 16, "prhombohedral": 12, "phexagonal": 24,
          "pcubic": 48, "bcubic": 48, "fcubic": 48}


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_colour_counts_match_the_table(name):
    g = get_group(name)
    assert g.num_colours == COLOUR_TABLE[name]
    if name != "s8":
        assert len(lattice_point_group(name)) == ORDERS[name]
    assert g.is_transitive()
    assert len(set(np.diag(g.colours).tolist())) == 1  # one node colour
    # colours are constant on orbits: every generator preserves them
    for perm in g.generators:
        p = np.asarray(perm)
        assert np.array_equal(g.colours[p][:, p], g.colours)


def test_mixing_tensor_of_p1_is_the_group_convolution():
    N = get_group("p1").mixing
    for kappa in range(8):
        for kp in range(8):
            for k in range(8):
                assert N[kappa, kp, k] == int(kp ^ k == kappa)


# ----------------------------------------------------------------------------------------------------------------
# cell-equivariant linear map


@pytest.mark.parametrize("name", ["p1", "s8", "pcubic", "phexagonal", "fcubic"])
def test_cell_equivariant_linear_commutes_with_every_generator(name):
    torch.manual_seed(0)
    lin = CellEquivariantLinear(name, 5, 4).double()
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    for perm in lin.group.generators:
        torch.testing.assert_close(lin(permute_cells(x, perm)), permute_cells(lin(x), perm), rtol=0, atol=1e-12)


def test_p1_linear_map_is_not_equivariant_to_a_non_translation():
    """Swapping the c1 and c2 bits is not in (Z_2)^3: with generic weights equivariance must fail."""
    torch.manual_seed(0)
    lin = CellEquivariantLinear("p1", 5, 4).double()
    swap = linear_permutation(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]))
    x = torch.randn(3, 8, 5, dtype=torch.float64)
    assert (lin(permute_cells(x, swap)) - permute_cells(lin(x), swap)).abs().max() > 1e-3
    # ...while the S_8 map commutes with it
    lin8 = CellEquivariantLinear("s8", 5, 4).double()
    torch.testing.assert_close(lin8(permute_cells(x, swap)), permute_cells(lin8(x), swap), rtol=0, atol=1e-12)


def test_cell_equivariant_linear_dense_weight_is_tied_by_colour():
    lin = CellEquivariantLinear("p1", 3, 2)
    W = lin.dense_weight()
    assert W.shape == (8, 8, 2, 3)
    for a in range(8):
        for b in range(8):
            assert torch.equal(W[a, b], lin.weight[a ^ b])


@pytest.mark.parametrize("name", ["p1", "s8", "pcubic"])
def test_closed_form_edge_function_equals_the_8_slot_evaluation(name):
    torch.manual_seed(1)
    f = CellEdgeFunction(get_group(name), 2 * 4 + 3, 7, 5).double()
    h = torch.randn(20, 4, dtype=torch.float64)
    e = torch.randn(64, 3, dtype=torch.float64)
    src, dst = torch.randint(0, 20, (64,)), torch.randint(0, 20, (64,))
    cell = torch.randint(0, 8, (20,))
    v = torch.cat([h[dst], h[src], e], dim=-1)
    torch.testing.assert_close(f(h, e, src, dst, cell), f.forward_dense(v, cell[dst], cell[src]), rtol=0, atol=1e-12)


def test_group_period_table():
    T = group_period_table()
    assert T.shape == (98, 39) and torch.all(T.sum(1) == 2)

    def where(z):
        row = T[z - 1]
        return int(row[:7].argmax()), int(row[7:].argmax())

    assert where(1) == (0, 0) and where(2) == (0, 31)            # H, He
    assert where(8) == (1, 29) and where(26) == (3, 21)          # O (group 16), Fe (group 8)
    assert where(57) == (5, 2) and where(71) == (5, 16)          # La (f block), Lu (group 3)
    assert where(86) == (5, 31) and where(98) == (6, 11)         # Rn, Cf


# ----------------------------------------------------------------------------------------------------------------
# model protocol


def test_config_round_trip_buffers_and_shapes():
    m = ECN(group="p1", n_targets=2, target_names=["a", "b"], **SMALL)
    cfg = json.loads(json.dumps(m.config))
    assert cfg["group"] == "p1" and cfg["graph"]["neighbors"] == "isayev" and cfg["graph"]["tol"] == 0.5
    m2 = ECN(**cfg)
    m2.load_state_dict(m.state_dict())
    assert m.target_mean.shape == (2,) and torch.all(m.target_mean == 0) and torch.all(m.target_std == 1)
    assert "target_mean" in m.state_dict() and "target_std" in m.state_dict()
    cs = [to_crystal(perovskite(), id="p", targets=[1.0, 2.0]), to_crystal(monoclinic(), id="m", targets=[0.5, 0.1])]
    b = m.collate(cs)
    assert isinstance(b, ECNBatch) and b.num_graphs == 2 and b.ids == ["p", "m"] and b.y.shape == (2, 2)
    out = m(b)
    assert out.shape == (2, 2)
    torch.testing.assert_close(m2(b), out)
    emb = m.embed_batch(b)
    assert emb.shape == (2, SMALL["readout_dim"])
    torch.testing.assert_close(m.head(emb), out)
    with pytest.raises(ValueError):
        ECN(n_targets=2, target_names=["only_one"])
    with pytest.raises(ValueError):
        ECN(edge_function="dense")
    assert len(copy.deepcopy(m).graphs._memo) == 0 < len(m.graphs._memo)  # copies leave the graph memo behind


def test_the_network_runs_on_a_batch_alone():
    """ECNNet is the network only: its config has no graph settings, and ECN's state_dict is the network's."""
    torch.manual_seed(0)
    model = ECN(n_targets=2, graph={"neighbors": "cutoff", "radius": 4.0}, **SMALL).double()
    net = ECNNet(**{k: v for k, v in model.config.items() if k in ECNNet(**SMALL).config}).double()
    assert "graph" not in net.config and set(net.config) < set(model.config)
    net.load_state_dict(model.state_dict())  # strict: the same keys
    b = ECNGraphTransform({"neighbors": "cutoff", "radius": 4.0})([perovskite(), monoclinic()])
    with torch.no_grad():
        torch.testing.assert_close(net(b), model(model.collate([perovskite(), monoclinic()])), rtol=0, atol=0)


def test_default_parameter_counts():
    """The paper's sizes: about 3.3M (P1 × S_n) and about 1.0M (S_8 × S_n) parameters at D = 100."""
    p1 = ECN(group="p1").num_parameters()
    s8 = ECN(group="s8")
    assert p1 == 3_298_333 and s8.num_parameters() == 994_333
    with torch.no_grad():
        assert s8.embed_batch(s8.collate([perovskite()])).shape == (1, 100)  # (B, width) by default


def test_collate_honours_the_graph_settings():
    c = to_crystal(perovskite(), id="p")
    m = ECN(graph={"neighbors": "cutoff", "radius": 4.0}, self_loops=False, **SMALL)
    g = build_ecn_graph(c, {"neighbors": "cutoff", "radius": 4.0})
    b = m.collate([c])
    assert b.edge_src.numel() == g.num_edges and float(b.edge_dist.max()) <= 4.0
    assert ECN(**SMALL).collate([c]).edge_src.numel() == build_ecn_graph(c).num_edges + 40  # + self-loops


def test_collate_memoises_graphs(monkeypatch):
    import crystalframer.data.transforms.ecn as ecn_transform

    calls = []
    real = ecn_transform.build_ecn_graph

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ecn_transform, "build_ecn_graph", counting)
    m = ECN(**SMALL)
    c = to_crystal(perovskite(), id="p", targets=[1.0])
    m.collate([c])
    m.collate([to_crystal(perovskite(), id="again", targets=[2.0])])
    assert len(calls) == 1
    b = m.collate([perovskite(), build_ecn_graph(c)])  # pymatgen objects and prebuilt graphs are accepted
    assert b.num_graphs == 2 and len(calls) == 1
    m.clear_graph_memo()
    m.collate([c])
    assert len(calls) == 2


def test_options_hubbard_group_period_colour_edges():
    torch.manual_seed(0)
    m = ECN(group="s8", hubbard=True, species_encoding="group_period", edge_function="colour", **SMALL).double()
    c0 = to_crystal(perovskite(), id="u0")
    c1 = to_crystal(perovskite(), id="u1")
    c1.info["is_hubbard"] = True
    with torch.no_grad():
        out = m(m.collate([c0, c1]).to("cpu", torch.float64))
    assert out.shape == (2, 1) and abs(float(out[0, 0] - out[1, 0])) > 1e-9  # the flag reaches the model


def test_predict_and_embed_on_structures():
    """The user-facing ECN adds ``predict``/``embed``: no network attribute may shadow them."""
    m = ECN(n_targets=2, **SMALL)
    m.target_mean.fill_(1.0)
    m.target_std.fill_(2.0)
    y = m.predict([perovskite(), monoclinic()])
    assert y.shape == (2, 2) and np.all(np.isfinite(y))
    with torch.no_grad():
        raw = m(m.collate([perovskite(), monoclinic()]).to("cpu", torch.float32)).double().numpy()
    np.testing.assert_allclose(y, raw * 2.0 + 1.0, rtol=1e-6)
    assert m.embed([perovskite()]).shape == (1, SMALL["readout_dim"])


def test_training_recipe():
    r = ECN.training_recipe()
    assert r["optimizer"] == "AdamW" and r["loss"] == "mse" and r["metric"] == "mae"
    assert r["recipe"]["lr"] == 1e-3 and r["recipe"]["batch_size"] == 128 and r["recipe"]["epochs"] == 1000
    assert r["recipe"]["seed"] == 72 and r["recipe"]["drop_last"] and not r["recipe"]["normalize_targets"]
    assert r["lr_schedule"]["factor"] == 0.5 and r["lr_schedule"]["patience"] == 25
    assert r["graph"]["perov_5"]["neighbors"] == "cutoff" and r["graph"]["perov_5"]["radius"] == 5.0
    assert ECN.training_recipe("classification")["loss"] == "bce_with_logits"
    json.dumps(r)
    from crystalframer.training.recipe import Recipe

    from crystalframer.training.recipe import PRESETS

    rec = Recipe(**r["recipe"])  # the trainer-compatible part uses the trainer's field names and values
    assert rec == PRESETS["ecn"] and rec.schedule == "plateau" and rec.min_lr == 1e-6


# ----------------------------------------------------------------------------------------------------------------
# invariances of predictions


#: One graph cache for the prediction tests: p1 and s8 see the same inputs, so each graph is built once.
_GRAPH_CACHE: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _shared_graph_cache(tmp_path_factory):
    _GRAPH_CACHE["dir"] = str(tmp_path_factory.mktemp("ecn_graphs"))
    yield
    _GRAPH_CACHE.clear()


def _model(group: str, **kw) -> ECN:
    torch.manual_seed(3)
    m = ECN(group=group, graph_cache_dir=_GRAPH_CACHE.get("dir"), **{**SMALL, **kw}).double().eval()
    # random non-trivial weights everywhere (default init leaves some maps close to symmetric)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _predict(m: ECN, crystals) -> torch.Tensor:
    with torch.no_grad():
        return m(m.collate(crystals).to("cpu", torch.float64))


@pytest.fixture(scope="module")
def crystals():
    return [to_crystal(rock_salt_conventional(), id="NaCl"), to_crystal(perovskite(), id="SrTiO3"),
            to_crystal(monoclinic(), id="LiFePO-mono")]


@pytest.mark.parametrize("group", ["p1", "s8"])
def test_prediction_invariant_to_translation_relabelling_of_cells(group, crystals):
    m = _model(group)
    b = m.collate(crystals).to("cpu", torch.float64)
    with torch.no_grad():
        ref = m(b)
        for t in range(1, 8):
            b2 = copy.copy(b)
            b2.cell = b.cell ^ t
            torch.testing.assert_close(m(b2), ref, rtol=1e-11, atol=1e-11)


def _layer_outputs_under_cell_permutation(group: str, perm: torch.Tensor,
                                          b: ECNBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer output on (h, E) and, mapped back, on (g·h, g·E) with g = perm acting on the cells of every node."""
    from crystalframer.nn.ecn import ECNLayer

    torch.manual_seed(0)
    layer = ECNLayer(get_group(group), width=6, edge_dim=3).double()
    N, E = b.num_nodes, b.edge_src.numel()
    h = torch.randn(N, 6, dtype=torch.float64)
    e = torch.randn(E, 3, dtype=torch.float64)
    sigma = torch.arange(N) - b.cell + perm[b.cell]  # node (a, c) → node (a, perm[c])
    h2 = torch.empty_like(h)
    h2[sigma] = h
    with torch.no_grad():
        out = layer(h, e, b.edge_src, b.edge_dst, b.cell, b.edge_identity)
        out2 = layer(h2, e, sigma[b.edge_src], sigma[b.edge_dst], b.cell, b.edge_identity)
    return out, out2[sigma]


def test_layer_equivariance_s8_any_cell_permutation_p1_translations_only(crystals):
    """Claim 6.1: a layer commutes with G acting on nodes and edges together. S_8: every permutation of the
    cells; P1: the XOR translations, and not a permutation outside (Z_2)^3."""
    gen = torch.Generator().manual_seed(0)
    b = collate_ecn([build_ecn_graph(c) for c in crystals], dtype=torch.float64)
    for perm in [torch.randperm(8, generator=gen) for _ in range(3)]:
        out, back = _layer_outputs_under_cell_permutation("s8", perm, b)
        torch.testing.assert_close(back, out, rtol=1e-12, atol=1e-12)
    for t in range(1, 8):
        out, back = _layer_outputs_under_cell_permutation("p1", torch.arange(8) ^ t, b)
        torch.testing.assert_close(back, out, rtol=1e-12, atol=1e-12)
    swap = torch.tensor(linear_permutation(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])))
    out, back = _layer_outputs_under_cell_permutation("p1", swap, b)
    assert (back - out).abs().max() > 1e-6


@pytest.mark.parametrize("group", ["p1", "s8"])
def test_prediction_invariant_to_atom_order_and_rigid_motion(group, crystals):
    m = _model(group)
    ref = _predict(m, crystals)
    for seed in range(3):
        out = _predict(m, [moved(c, seed) for c in crystals])
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("group", ["p1", "s8"])
def test_non_primitive_cell_gives_the_prediction_of_its_primitive_cell(group, crystals):
    m = _model(group)
    prim = to_crystal(rock_salt_conventional().get_primitive_structure(), id="NaCl-prim")
    torch.testing.assert_close(_predict(m, [crystals[0]]), _predict(m, [prim]), rtol=1e-9, atol=1e-9)
    ref = _predict(m, crystals[1:])
    for axis in range(3):
        out = _predict(m, [supercell(moved(c, 20 + axis), axis) for c in crystals[1:]])
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_real_structures_prediction_invariances(real_low_symmetry, non_primitive_cell):
    m = _model("p1")
    cs = [to_crystal(s) for s in real_low_symmetry]
    ref = _predict(m, cs)
    torch.testing.assert_close(_predict(m, [moved(c, 5) for c in cs]), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(_predict(m, [supercell(moved(c, 6), 2) for c in cs]), ref, rtol=1e-9, atol=1e-9)
    s = non_primitive_cell
    torch.testing.assert_close(_predict(m, [to_crystal(s)]), _predict(m, [to_crystal(s.get_primitive_structure())]),
                               rtol=1e-9, atol=1e-9)


def test_perov5_prediction_invariances():
    if not PEROV5.exists():
        pytest.skip(f"{PEROV5} is absent (Perov-5 test split of the shared data folder)")
    import pandas as pd
    from pymatgen.core import Structure

    df = pd.read_csv(PEROV5, nrows=8)
    cs = [to_crystal(Structure.from_str(cif, "cif"), id=str(mid)) for mid, cif in zip(df.material_id, df.cif)]
    for group in ("p1", "s8"):
        m = _model(group, graph={"neighbors": "cutoff", "radius": 5.0})
        ref = _predict(m, cs)
        torch.testing.assert_close(_predict(m, [moved(c, 7) for c in cs]), ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(_predict(m, [supercell(c, 0) for c in cs]), ref, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("group", ["p1", "s8"])
def test_gradient_steps_reduce_the_loss(group, crystals):
    torch.manual_seed(0)
    m = ECN(group=group, **SMALL)
    cs = [to_crystal(c, targets=[t]) for c, t in zip(crystals, [1.0, -0.5, 0.3])]
    b = m.collate(cs)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(m(b), b.y)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    with torch.no_grad():
        assert float(torch.nn.functional.mse_loss(m(b), b.y)) < losses[0]


@pytest.mark.parametrize("edge_function", ["slots", "colour"])
def test_bf16_autocast_runs_with_float32_sums(edge_function, crystals):
    """bf16-mixed training: messages and pooling are summed in float32; outputs stay within bf16 rounding."""
    torch.manual_seed(0)
    m = ECN(group="s8", edge_function=edge_function, **SMALL)
    b = m.collate(crystals).to("cpu", torch.float32)
    ref = m(b).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(b)
    err = (y.float() - ref).abs().max() / ref.abs().max()
    assert err < 3e-2, float(err)
    y.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------------------------
# ECN's dataset filter


def _isolated_h(id_: str = "Hbox"):
    """Two H atoms 7.8 Å apart (bcc, a = 9 Å): no neighbour within the 6 Å search, so no edge at all."""
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(9.0), ["H", "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return to_crystal(s, id=id_, targets=[0.0])


def test_filter_splits_drops_disconnected_graphs_and_warns():
    from crystalframer.training.data import Splits

    ok = [to_crystal(perovskite(), id="p", targets=[1.0])]
    splits = Splits(ok + [_isolated_h("h1")], ok, ok + [_isolated_h("h2")], ["t"], [""])
    with pytest.warns(UserWarning, match=r"\(train\): dropped 1 of 2 .*h1"):
        out = ECN(**SMALL).filter_splits(splits)
    assert [c.id for c in out.train] == ["p"] and [c.id for c in out.test] == ["p"] and len(out.val) == 1
    assert {e[1] for e in out.errors} == {"h1", "h2"}
    off = ECN(drop_disconnected=False, **SMALL)
    assert off.config["drop_disconnected"] is False
    assert off.filter_splits(splits) is splits


def test_spglib_failure_warns_and_falls_back_to_the_input_cell(monkeypatch):
    import spglib

    from crystalframer.data.transforms.ecn_graph import primitive_cell

    c = to_crystal(rock_salt_conventional(), id="NaCl-conv")
    monkeypatch.setattr(spglib, "standardize_cell", lambda *a, **k: None)
    with pytest.warns(RuntimeWarning, match="NaCl-conv: spglib found no primitive cell"):
        lat, frac, species, info = primitive_cell(c)
    assert not info["primitive"] and frac.shape[0] == 8
    np.testing.assert_allclose(lat, c.lattice)
