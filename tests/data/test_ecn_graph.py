"""ECN supercell graphs: primitive reduction, neighbour rules against pymatgen, wrap-around, invariances, cache."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalframer.data.structures import Crystal, to_crystal
from crystalframer.data.transforms.ecn import ECNGraphTransform, GraphCache, graph_key
from crystalframer.data.transforms.ecn_graph import ECNGraph, ECNGraphSettings, build_ecn_graph, collate_ecn
from crystalframer.geometry.cells import N_CELLS

PEROV5 = Path(os.environ.get("CRYSTALFRAMER_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) \
    / "data" / "perov_5" / "test.csv.gz"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These graphs are tiny: one thread avoids OpenMP oversubscription on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------------------------
# structures


def rock_salt_conventional():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def monoclinic():
    """A low-symmetry (P1 positions in a monoclinic lattice) four-atom cell."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.monoclinic(4.1, 5.3, 6.2, 103.0), ["Li", "Fe", "P", "O"],
                     [[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.35, 0.7, 0.45], [0.8, 0.55, 0.1]])


def moved(c: Crystal, seed: int) -> Crystal:
    """Random rotation, translation and atom permutation of ``c``."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    R = Rotation.random(random_state=seed).as_matrix()
    perm = rng.permutation(c.num_atoms)
    shift = rng.normal(size=3) * 3.0
    return Crystal(lattice=c.lattice @ R.T, positions=(c.positions[perm] + shift) @ R.T,
                   species=c.species[perm], id=c.id, targets=c.targets)


def supercell(c: Crystal, axis: int) -> Crystal:
    """The 2×1×1 (along ``axis``) supercell of ``c``."""
    n = np.eye(3)
    n[axis, axis] = 2
    return Crystal(lattice=n @ c.lattice, positions=np.concatenate([c.positions, c.positions + c.lattice[axis]]),
                   species=np.concatenate([c.species] * 2), id=c.id, targets=c.targets)


def labelled_signature(g: ECNGraph) -> Counter:
    """Multiset of (Z_src, Z_dst, cell_src, cell_dst, same atom, distance): the graph up to atom order."""
    z = g.species.argmax(1)
    a, c = g.node_atom, g.node_cell
    return Counter(zip(z[a[g.src]].tolist(), z[a[g.dst]].tolist(), c[g.src].tolist(), c[g.dst].tolist(),
                       (a[g.src] == a[g.dst]).tolist(), np.round(g.dist, 5).tolist()))


def edge_multiset(g: ECNGraph) -> Counter:
    return Counter(zip(g.src.tolist(), g.dst.tolist(), np.round(g.dist, 5).tolist()))


def explicit_supercell(g: ECNGraph):
    """The 2×2×2 supercell as a pymatgen Structure whose site k is node k (wrapped for pymatgen)."""
    from pymatgen.core import Lattice, Structure

    L2 = 2.0 * g.lattice
    f = np.mod(g.node_positions @ np.linalg.inv(L2), 1.0)
    f[f > 1 - 1e-9] = 0.0
    return Structure(Lattice(L2), np.repeat(g.species.argmax(1) + 1, N_CELLS).tolist(), f)


@pytest.fixture(scope="module")
def basic_crystals() -> list[Crystal]:
    return [to_crystal(rock_salt_conventional(), id="NaCl"), to_crystal(perovskite(), id="SrTiO3"),
            to_crystal(monoclinic(), id="LiFePO-mono")]


# ----------------------------------------------------------------------------------------------------------------
# construction


def test_rock_salt_primitive_supercell_and_bonds():
    g = build_ecn_graph(to_crystal(rock_salt_conventional(), id="NaCl"))
    assert g.info["input_atoms"] == 8 and g.num_atoms == 2 and g.num_nodes == 16
    assert g.info["spacegroup"] == 225 and g.info["primitive"]
    # Na–Cl 2.82 Å < 1.66 + 1.02 + 0.5; Na–Na and Cl–Cl (3.99 Å) are above their covalent sums + 0.5
    assert np.array_equal(np.bincount(g.dst, minlength=16), np.full(16, 6))
    assert np.array_equal(np.bincount(g.src, minlength=16), np.full(16, 6))
    np.testing.assert_allclose(g.dist, 5.64 / 2, atol=1e-9)
    z = g.species.argmax(1)[g.node_atom]
    assert np.all(z[g.src] != z[g.dst])
    assert g.connected
    # node 8a + c sits at r_a + t_c
    np.testing.assert_allclose(g.node_positions[8 * 1 + 5] - g.positions[1], np.array([1, 0, 1]) @ g.lattice)


@pytest.mark.parametrize("which", ["rock_salt", "perovskite", "monoclinic"])
def test_isayev_edges_equal_pymatgen_on_explicit_supercell(which):
    """Neighbours found on the unit cell and wrapped = IsayevNN(tol 0.5, cutoff 6) on the periodic 2×2×2 cell."""
    from pymatgen.analysis.local_env import IsayevNN

    s = {"rock_salt": rock_salt_conventional, "perovskite": perovskite, "monoclinic": monoclinic}[which]()
    g = build_ecn_graph(to_crystal(s))
    sup = explicit_supercell(g)
    ref = Counter()
    for i, nns in enumerate(IsayevNN(tol=0.5, cutoff=6.0, extra_nn_info=False,
                                     compute_adj_neighbors=False).get_all_nn_info(sup)):
        for d in nns:
            ref[(int(d["site_index"]), i, round(float(np.linalg.norm(d["site"].coords - sup[i].coords)), 5))] += 1
    assert sum(ref.values()) > 0
    assert edge_multiset(g) == ref


def test_isayev_edges_equal_pymatgen_real_low_symmetry(real_low_symmetry):
    from pymatgen.analysis.local_env import IsayevNN

    s = next(x for x in real_low_symmetry if x.properties["id"] == "mp-567341")  # PrCoC2, Cc, 8 atoms
    g = build_ecn_graph(to_crystal(s))
    sup = explicit_supercell(g)
    ref = Counter()
    for i, nns in enumerate(IsayevNN(tol=0.5, cutoff=6.0, extra_nn_info=False,
                                     compute_adj_neighbors=False).get_all_nn_info(sup)):
        for d in nns:
            ref[(int(d["site_index"]), i, round(float(np.linalg.norm(d["site"].coords - sup[i].coords)), 5))] += 1
    assert edge_multiset(g) == ref


def test_cutoff_rule_equals_brute_force(basic_crystals):
    settings = ECNGraphSettings(neighbors="cutoff", radius=4.2)
    for c in basic_crystals:
        g = build_ecn_graph(c, settings)
        sup = explicit_supercell(g)
        ref = Counter()
        for i, nbrs in enumerate(sup.get_all_neighbors(4.2)):
            for nb in nbrs:
                if nb.nn_distance > 1e-8:
                    ref[(int(nb.index), i, round(float(nb.nn_distance), 5))] += 1
        assert edge_multiset(g) == ref, c.id
        assert g.dist.max() <= 4.2


def test_supercell_translations_are_graph_automorphisms(basic_crystals):
    """Wrap-around: relabelling every cell c → c XOR t maps the edge multiset onto itself."""
    for c in basic_crystals:
        g = build_ecn_graph(c)
        base = edge_multiset(g)
        for t in range(1, N_CELLS):
            src = (g.src // N_CELLS) * N_CELLS + ((g.src % N_CELLS) ^ t)
            dst = (g.dst // N_CELLS) * N_CELLS + ((g.dst % N_CELLS) ^ t)
            assert Counter(zip(src.tolist(), dst.tolist(), np.round(g.dist, 5).tolist())) == base
        deg = np.bincount(g.dst, minlength=g.num_nodes).reshape(-1, N_CELLS)
        assert np.all(deg == deg[:, :1]), "node degrees differ across the 8 copies of an atom"


def test_degenerate_voronoi_contacts_are_not_bonds():
    """Rock-salt BaS (the MP primitive cell, angles 60 ± 3e-6°): Ba–Ba (4.57 Å) is within the covalent sum
    + 0.5 Å, but Ba Voronoi cells only touch at edges; qhull reports zero-area facets (~1e-7 relative area)
    for a rounding-dependent subset of them. They must not become edges, or the graph would depend on
    rounding (it did, with the orientation, on the MP dielectric set)."""
    from pymatgen.core import Lattice, Structure

    lat = Lattice.from_parameters(4.565944, 4.565944, 4.565945, 60.000003, 60.000003, 59.999998)
    s = Structure(lat, ["Ba", "S"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    c = to_crystal(s, id="BaS")
    g = build_ecn_graph(c)
    z = g.species.argmax(1)[g.node_atom] + 1
    assert np.all(np.bincount(g.dst, minlength=g.num_nodes) == 6) and np.all(z[g.src] != z[g.dst])
    for seed in range(4):
        assert labelled_signature(build_ecn_graph(moved(c, seed))) == labelled_signature(g)


# ----------------------------------------------------------------------------------------------------------------
# invariances of the labelled graph


@pytest.mark.parametrize("neighbors", ["isayev", "cutoff"])
def test_graph_invariant_to_rigid_motion_and_atom_order(basic_crystals, neighbors):
    settings = ECNGraphSettings(neighbors=neighbors)
    for c in basic_crystals:
        ref = labelled_signature(build_ecn_graph(c, settings))
        for seed in range(3):
            assert labelled_signature(build_ecn_graph(moved(c, seed), settings)) == ref, (c.id, seed)


def test_graph_of_non_primitive_cells_is_that_of_the_primitive(basic_crystals):
    from pymatgen.core import Structure

    nacl_prim = to_crystal(rock_salt_conventional().get_primitive_structure(), id="NaCl-prim")
    ref = labelled_signature(build_ecn_graph(nacl_prim))
    assert labelled_signature(build_ecn_graph(basic_crystals[0])) == ref  # conventional 8-atom cell
    for c in basic_crystals[1:]:
        ref = labelled_signature(build_ecn_graph(c))
        for axis in range(3):
            g = build_ecn_graph(supercell(moved(c, 10 + axis), axis))
            assert g.info["input_atoms"] == 2 * c.num_atoms and g.num_atoms == c.num_atoms
            assert labelled_signature(g) == ref, (c.id, axis)
    assert isinstance(rock_salt_conventional(), Structure)


def test_real_structures_invariances(real_low_symmetry, golden_structures):
    """Real low-symmetry structures (P1, Cc, P2_1/c, P2_1) and a real non-primitive MP cell (NbRh, 18 → 6)."""
    from pymatgen.core import Lattice, Structure

    for s in real_low_symmetry:
        c = to_crystal(s)
        ref = labelled_signature(build_ecn_graph(c))
        assert labelled_signature(build_ecn_graph(moved(c, 1))) == ref, c.id
        assert labelled_signature(build_ecn_graph(supercell(moved(c, 2), 1))) == ref, c.id
    d = next(x for x in golden_structures if x["id"] == "mp-567345")
    s = Structure(Lattice(d["lattice"]), d["species"], d["cart_coords"], coords_are_cartesian=True)
    g = build_ecn_graph(to_crystal(s, id="NbRh"))
    assert g.info["input_atoms"] == 18 and g.num_atoms == 6
    gp = build_ecn_graph(to_crystal(s.get_primitive_structure(), id="NbRh-prim"))
    assert labelled_signature(gp) == labelled_signature(g)


def test_perov5_graphs():
    if not PEROV5.exists():
        pytest.skip(f"{PEROV5} is absent (Perov-5 test split of the shared data folder)")
    import pandas as pd
    from pymatgen.core import Structure

    df = pd.read_csv(PEROV5, nrows=12)
    crystals = [to_crystal(Structure.from_str(cif, "cif"), id=str(mid), targets=[y])
                for mid, cif, y in zip(df.material_id, df.cif, df.heat_all)]
    settings = ECNGraphSettings.perov5()
    for c in crystals:
        g = build_ecn_graph(c, settings)
        assert g.num_atoms == 5 and g.num_nodes == 40 and g.connected
        assert g.dist.max() <= 5.0 and g.dist.min() > 1.0
        assert labelled_signature(build_ecn_graph(moved(c, 0), settings)) == labelled_signature(g)
        assert labelled_signature(build_ecn_graph(supercell(c, 2), settings)) == labelled_signature(g)


# ----------------------------------------------------------------------------------------------------------------
# options, odd inputs


def test_settings_validation_and_round_trip():
    s = ECNGraphSettings(neighbors="cutoff", radius=4.0)
    assert ECNGraphSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="neighbors"):
        ECNGraphSettings(neighbors="voronoi")
    with pytest.raises(ValueError, match="unknown"):
        ECNGraphSettings.from_dict({"radius": 4.0, "cutof": 3.0})
    with pytest.raises(ValueError):
        ECNGraphSettings(radius=-1.0)


def test_disconnected_structure_is_flagged():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(9.0), ["H", "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    g = build_ecn_graph(to_crystal(s), ECNGraphSettings(neighbors="cutoff", radius=3.0))
    assert g.num_edges == 0 and not g.connected
    b = collate_ecn([g])
    assert b.edge_src.numel() == g.num_nodes  # self-loops only


def test_disordered_sites_keep_occupancies():
    from pymatgen.core import Composition, Lattice, Structure

    s = Structure(Lattice.cubic(4.3), [Composition({"Fe": 0.7, "Co": 0.3}), "O"], [[0, 0, 0], [0.5, 0, 0]])
    g = build_ecn_graph(to_crystal(s))
    row = g.species[g.species[:, 25] > 0][0]
    assert row[25] == pytest.approx(0.7) and row[26] == pytest.approx(0.3)
    assert g.num_edges > 0


def test_primitive_false_keeps_the_input_cell(basic_crystals):
    g = build_ecn_graph(basic_crystals[0], ECNGraphSettings(primitive=False))
    assert g.num_atoms == 8 and not g.info["primitive"]


# ----------------------------------------------------------------------------------------------------------------
# cache


def test_disk_cache_round_trip(tmp_path, basic_crystals):
    c = basic_crystals[1]
    settings = ECNGraphSettings()

    def cached() -> ECNGraph:  # a fresh transform each time: no memo, only the disk
        return ECNGraphTransform(settings, cache_dir=tmp_path, memo_size=0).graph(c)

    g1 = cached()
    key = graph_key(c, settings)
    path = GraphCache(tmp_path).path(key)
    assert path.exists() and not g1.info.get("from_cache")
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    with np.load(path, allow_pickle=False) as z:  # a safe format: plain arrays and a JSON header
        header = json.loads(bytes(z["header"]).decode())
    assert header["key"] == key and header["schema"] >= 1
    g2 = cached()
    assert g2.info["from_cache"]
    for name in ("lattice", "positions", "species", "src", "dst", "dist"):
        np.testing.assert_array_equal(getattr(g1, name), getattr(g2, name))
    assert g2.connected == g1.connected and g2.id == c.id
    # settings are part of the key
    assert graph_key(c, ECNGraphSettings(tol=0.25)) != key
    # a damaged file is a miss and is rewritten
    path.write_bytes(b"not an npz")
    g3 = cached()
    assert not g3.info.get("from_cache")
    assert cached().info["from_cache"]


def test_memo_reuses_graphs_and_is_not_pickled(basic_crystals, monkeypatch):
    import pickle

    import crystalframer.data.transforms.ecn as ecn_transform

    built = []
    real = ecn_transform.build_ecn_graph
    monkeypatch.setattr(ecn_transform, "build_ecn_graph", lambda c, s: built.append(c.id) or real(c, s))
    t = ECNGraphTransform(memo_size=1)
    a, b = basic_crystals[0], basic_crystals[1]
    t.graph(a)
    assert t.graph(to_crystal(a, id="renamed")).id == "renamed"  # same structure: memo hit, own id
    t.graph(b)  # evicts a (memo of one)
    t.graph(a)
    assert built == [a.id, b.id, a.id]
    assert len(t._memo) == 1 and len(pickle.loads(pickle.dumps(t))._memo) == 0


# ----------------------------------------------------------------------------------------------------------------
# batching


def test_collate_layout(basic_crystals):
    cs = [to_crystal(perovskite(), id="a", targets=[1.0, 2.0]), to_crystal(monoclinic(), id="b", targets=[3.0, 4.0])]
    gs = [build_ecn_graph(c) for c in cs]
    b = collate_ecn(gs)
    N = sum(g.num_nodes for g in gs)
    E = sum(g.num_edges for g in gs) + N
    assert b.num_graphs == 2 and len(b) == 2 and b.ids == ["a", "b"]
    assert b.species.shape == (N, 98) and b.cell.shape == (N,) and b.batch.shape == (N,)
    assert b.ptr.tolist() == [0, 40, 72]
    assert b.edge_src.shape == (E,) and b.edge_dist.dtype == torch.float32
    assert torch.equal(b.cell[:8], torch.arange(8))
    assert torch.equal(b.atom[:16], torch.tensor([0] * 8 + [1] * 8))
    assert b.atom.max().item() == 5 + 4 - 1
    # self-loops: distance 0, identity edges
    loops = b.edge_src == b.edge_dst
    assert int(loops.sum()) >= N and torch.all(b.edge_dist[loops] == 0) and torch.all(b.edge_identity[loops])
    assert torch.equal(b.edge_identity, b.atom[b.edge_src] == b.atom[b.edge_dst])
    # edges stay inside their structure
    assert torch.equal(b.batch[b.edge_src], b.batch[b.edge_dst])
    assert torch.allclose(b.y, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    b64 = b.to("cpu", torch.float64)
    assert b64.species.dtype == torch.float64 and b64.y.dtype == torch.float64 and b64.cell.dtype == torch.long
    nb = collate_ecn(gs, self_loops=False)
    assert nb.edge_src.numel() == E - N
    gs[1].targets = None
    assert collate_ecn(gs).y is None
    with pytest.raises(ValueError):
        collate_ecn([])
