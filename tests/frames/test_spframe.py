"""SPFrame (spframe_quat, spframe_gs, spframe_global) and the equivariant Gram–Schmidt local-frame baseline.

Models are small (2 layers, width 32, 4 heads) and run in float64 on float64 batches, so invariances hold
to ~1e-12 and are tested at 1e-9; a broken invariance (e.g. the identity global frame) moves outputs by
> 1e-4.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

import crystalframer as cf
from crystalframer.data.batch import collate
from crystalframer.data.structures import to_crystal
from crystalframer.frames.base import FRAMES, build_frame
from crystalframer.frames.global_frames import (global_frame, pca_frame, primitive_reduced_frame_sets, reduced_frame,
                                                reduced_frame_set)
from crystalframer.frames.rotations import quaternion_to_rotation
from crystalframer.nn.frame_predictors import SPFrameQuaternion
from crystalframer.geometry.images import sphere_images
from crystalframer.nn.attention import DistanceDecayAttention
from tests.helpers import SKEW, change_basis, permute, random_rotation, reimage, rotate, supercell, translate

TOL = 1e-9
SMALL = dict(num_layers=2, model_dim=32, num_heads=4, ff_dim=64, head_dims=(32,), frame_noise=0.0, cutoff=5.0)
LEARNED = ["spframe_quat", "spframe_gs", "equiv_gs_local"]


def small_model(frame: str, seed: int = 0, **opts) -> cf.CrystalFramer:
    torch.manual_seed(seed)
    return cf.CrystalFramer(frame=frame, frame_options=opts, **SMALL).double().eval()


def batch64(structures):
    return collate([to_crystal(s) for s in structures], dtype=torch.float64)


def run(m, structures, **kw):
    with torch.no_grad():
        return m(batch64(structures), **kw)


@pytest.fixture(scope="module")
def structures(real_low_symmetry, small_cells):
    return list(small_cells) + list(real_low_symmetry[:1])


TRICLINIC = Lattice.from_parameters(4.3, 5.1, 6.7, 78.0, 96.0, 107.0).matrix
MONOCLINIC = Lattice.monoclinic(4.1, 5.3, 6.2, 103.0).matrix
LEFT_HANDED = TRICLINIC[[1, 0, 2]]  # det < 0


# ---------------------------------------------------------------------------------------------- registry
def test_registered_and_sized_by_the_model():
    assert {"spframe_quat", "spframe_gs", "equiv_gs_local", "spframe_global"} <= set(FRAMES)
    with pytest.raises(TypeError, match="model width and head count"):
        build_frame("spframe_quat")
    with pytest.raises(ValueError, match="global_frame must be one of"):
        build_frame("spframe_quat", dim=8, heads=2, global_frame="lll")
    m = small_model("spframe_quat")
    frames = [blk.attn.frame for blk in m.layers]
    assert all(isinstance(f, SPFrameQuaternion) and f.differentiable for f in frames)
    assert [(f.dim, f.heads, f.layer) for f in frames] == [(32, 4, 0), (32, 4, 1)]
    # message="first": the extra invariant attention block only in the first layer
    assert [len(f.blocks) for f in frames] == [1, 0]
    assert [len(blk.attn.frame.blocks) for blk in small_model("spframe_quat", message="all").layers] == [1, 1]
    assert [len(blk.attn.frame.blocks) for blk in small_model("spframe_gs").layers] == [2, 0]
    assert [len(blk.attn.frame.blocks) for blk in small_model("spframe_quat", message="none").layers] == [0, 0]


@pytest.mark.parametrize("frame", LEARNED)
def test_rebuilt_from_config_and_state_dict_gives_the_same_predictions(frame, small_cells):
    m = small_model(frame, per_head=False) if frame != "equiv_gs_local" else small_model(frame)
    m2 = type(m)(**m.config).double().eval()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(run(m, small_cells), run(m2, small_cells))


# ------------------------------------------------------------------------------------ quaternion → rotation
def test_quaternion_rotation_is_orthonormal_sign_symmetric_and_safe_at_zero():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(200, 4, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, 200, dtype=torch.float64)[:, None]
    R = quaternion_to_rotation(q)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand_as(R), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(200, dtype=R.dtype), atol=1e-12)
    assert torch.allclose(quaternion_to_rotation(-q), R, atol=1e-14)
    # the same convention as tests.helpers.random_rotation (a unit quaternion, real part first)
    q0 = np.random.default_rng(5).normal(size=4)
    assert np.allclose(quaternion_to_rotation(torch.tensor(q0)).numpy(), random_rotation(5), atol=1e-12)
    # 90° about z maps x onto y
    c = np.cos(np.pi / 4)
    Rz = quaternion_to_rotation(torch.tensor([c, 0.0, 0.0, c], dtype=torch.float64))
    assert torch.allclose(Rz @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)
    # q = 0: identity, finite gradients
    z = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    R0 = quaternion_to_rotation(z)
    assert torch.equal(R0, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    (R0 * torch.randn(3, 3, 3, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(z.grad).all()


# ------------------------------------------------------------------------------------------ global frames
@pytest.mark.parametrize("method", ["qr", "polar", "pca", "reduced"])
def test_global_frames_are_rotations_and_equivariant(method):
    lattices = [TRICLINIC, MONOCLINIC, LEFT_HANDED] if method != "reduced" else [TRICLINIC, LEFT_HANDED]
    T = torch.tensor(np.stack(lattices))
    F = global_frame(T, method)
    eye = torch.eye(3, dtype=F.dtype).expand_as(F)
    assert torch.allclose(F @ F.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(F), torch.ones(len(lattices), dtype=F.dtype), atol=1e-12)
    for seed in range(3):
        Q = torch.tensor(random_rotation(seed))
        assert torch.allclose(global_frame(T @ Q.T, method), F @ Q.T, atol=1e-10), seed


def test_qr_frame_puts_l1_on_x_and_l2_in_the_xy_plane():
    T = torch.tensor(np.stack([TRICLINIC, LEFT_HANDED]))
    U = global_frame(T, "qr") @ T.transpose(-1, -2)  # coordinates of the lattice vectors (columns)
    assert torch.allclose(torch.tril(U, -1)[0], torch.zeros(3, 3, dtype=U.dtype), atol=1e-12)
    assert U[0, 0, 0] > 0 and U[0, 1, 1] > 0 and U[0, 2, 2] > 0
    # left-handed basis: the paper's fix negates the first axis
    assert U[1, 0, 0] < 0 and U[1, 1, 1] > 0


def test_pca_frame_is_undefined_for_cubic_cells_and_falls_back_on_qr():
    T = torch.tensor(np.stack([Lattice.cubic(4.0).matrix, TRICLINIC]))
    with pytest.raises(ValueError, match="undefined"):
        pca_frame(T, fallback="raise")
    F = pca_frame(T)
    assert torch.allclose(F[0], global_frame(T, "qr")[0])
    assert not torch.allclose(F[1], global_frame(T, "qr")[1], atol=1e-3)


def test_reduced_global_frame_does_not_depend_on_the_unit_cell():
    T = torch.tensor(TRICLINIC)
    cells = [np.asarray(SKEW), np.array([[1, 2, 0], [0, 1, 0], [0, -1, 1]]),
             np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])]
    F = reduced_frame(T[None])[0]
    for U in cells:
        T2 = torch.tensor(U, dtype=T.dtype) @ T
        assert torch.allclose(reduced_frame(T2[None])[0], F, atol=1e-10)
        assert not torch.allclose(global_frame(T2[None], "qr")[0], global_frame(T[None], "qr")[0], atol=1e-3)


# --------------------------------------------------------------------------------------------- invariance
@pytest.mark.parametrize("frame,opts", [("spframe_quat", {}), ("spframe_quat", {"global_frame": "polar"}),
                                        ("spframe_quat", {"global_frame": "reduced", "per_head": False}),
                                        ("spframe_gs", {"global_frame": "pca"}), ("equiv_gs_local", {})])
def test_predictions_are_invariant_to_rigid_motions_permutations_and_images(frame, opts, structures):
    m = small_model(frame, **opts)
    ref = run(m, structures).numpy()
    moved = {
        "rotation": [rotate(s, random_rotation(40 + k)) for k, s in enumerate(structures)],
        "translation": [translate(s, np.random.default_rng(k).normal(scale=3.0, size=3))
                        for k, s in enumerate(structures)],
        "permutation": [permute(s, k) for k, s in enumerate(structures)],
        "rotation+image": [rotate(reimage(s, k), random_rotation(k)) for k, s in enumerate(structures)],
    }
    for name, ss in moved.items():
        err = np.abs(run(m, ss).numpy() - ref).max()
        assert err < TOL, f"{frame} {opts}: {name} changed the prediction by {err:.2e}"
    assert np.ptp(ref) > 1e-3  # not trivially constant


def test_identity_global_frame_is_not_rotation_invariant(structures):
    m = small_model("spframe_quat", global_frame="identity")
    ref = run(m, structures).numpy()
    out = run(m, [rotate(s, random_rotation(40 + k)) for k, s in enumerate(structures)]).numpy()
    assert np.abs(out - ref).max() > 1e-4


def test_reduced_global_frame_gives_the_same_prediction_for_another_cell(real_low_symmetry):
    """A triclinic (P1) crystal: no two lattice vectors tie, so the reduced basis is canonical (a set of one);
    symmetric lattices are covered by the tests below."""
    s = real_low_symmetry[2]  # triclinic
    other = change_basis(s, SKEW)
    red = run(small_model("spframe_quat", global_frame="reduced"), [s, other]).numpy()
    assert np.abs(red[0] - red[1]).max() < TOL
    qr = run(small_model("spframe_quat"), [s, other]).numpy()
    assert np.abs(qr[0] - qr[1]).max() > 1e-5  # the paper's QR frame depends on the cell's basis


# P1 motifs on symmetric lattices: the lattice's ties are not symmetries of the crystal, so a tie broken by
# the basis given changes the prediction (the weakness of the lexicographic reduced frame)
MOTIF = [[0.0, 0.0, 0.0], [0.37, 0.21, 0.13], [0.61, 0.77, 0.44]]
SYMMETRIC_LATTICES = {"cubic": Lattice.cubic(4.2), "tetragonal": Lattice.tetragonal(4.2, 5.3),
                      "hexagonal": Lattice.hexagonal(4.2, 5.3)}


def _symmetric_cells() -> list[Structure]:
    return [Structure(L, ["Na", "Cl", "O"], MOTIF) for L in SYMMETRIC_LATTICES.values()] + [
        Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                  [[0, 0, 0], [0.305, 0.305, 0]])]


@pytest.mark.parametrize("name,size", [("cubic", 24), ("tetragonal", 8), ("hexagonal", 12)])
def test_reduced_frame_set_is_the_lattice_rotation_orbit_for_any_basis(name, size):
    """The tied reduced bases of a P lattice give one frame per proper rotation of its point group, weighted
    equally, and the same set for another basis of the lattice (and the set rotates with the lattice)."""
    T = torch.tensor(SYMMETRIC_LATTICES[name].matrix)
    F, w = reduced_frame_set(T)
    assert F.shape == (size, 3, 3) and torch.allclose(w, torch.full((size,), 1.0 / size, dtype=w.dtype))
    assert torch.allclose(F @ F.transpose(-1, -2), torch.eye(3, dtype=F.dtype).expand_as(F), atol=1e-12)

    def same_set(A, B):
        return torch.cdist(A.reshape(-1, 9), B.reshape(-1, 9)).min(1).values.max() < 1e-9

    for U in [SKEW, [[1, 2, 0], [0, 1, 0], [0, -1, 1]]]:
        F2, _ = reduced_frame_set(torch.tensor(U, dtype=T.dtype) @ T)
        assert F2.shape == F.shape and same_set(F2, F)
    Q = torch.tensor(random_rotation(3))
    assert same_set(reduced_frame_set(T @ Q.T)[0], F @ Q.T)


def test_primitive_reduced_frame_sets_see_through_supercells_and_centred_cells():
    """A 2×2×1 supercell has the frames of its cell; conventional fcc (NaCl) those of the fcc lattice (72
    distinct frames: the primitive cell is found first)."""
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cells = [nacl, nacl * (2, 2, 1), _symmetric_cells()[1], _symmetric_cells()[1] * (2, 2, 1)]
    b = batch64(cells)
    F, w = primitive_reduced_frame_sets(b.lattice, b.pos, b.species, b.ptr)
    assert int((w[0] > 0).sum()) == int((w[1] > 0).sum()) == 72
    for i, j in [(0, 1), (2, 3)]:
        assert torch.allclose(F[i], F[j], atol=1e-9) and torch.allclose(w[i], w[j], atol=1e-12)


def _cell_changes(structures):
    return {"basis": [change_basis(s, SKEW) for s in structures],
            "2x2x1": [supercell(s, (2, 2, 1)) for s in structures],
            "2x2x2": [supercell(s, (2, 2, 2)) for s in structures]}


def _worst_cell_change(m, structures, dtype) -> dict[str, float]:
    def pred(ss):
        with torch.no_grad():
            return m(collate([to_crystal(s) for s in ss], dtype=dtype)).numpy()[:, 0]

    ref = pred(structures)
    return {k: float((np.abs(pred(ss) - ref) / np.abs(ref)).max()) for k, ss in _cell_changes(structures).items()}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_reduced_global_frame_predictions_ignore_the_unit_cell_on_symmetric_lattices(dtype, tol):
    """Cubic, tetragonal and hexagonal lattices with tied reduced vectors: predictions do not change under a
    unimodular change of basis or a 2×2×1 / 2×2×2 supercell (the lexicographic frame changed them by up to
    ~1e-1 relative). The paper's QR frame does change (the test can fail)."""
    cells = _symmetric_cells()
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="spframe_quat", frame_options={"global_frame": "reduced"}, **SMALL).to(dtype).eval()
    err = _worst_cell_change(m, cells, dtype)
    assert max(err.values()) < tol, err
    torch.manual_seed(0)
    qr = cf.CrystalFramer(frame="spframe_quat", **SMALL).to(dtype).eval()
    assert _worst_cell_change(qr, cells, dtype)["basis"] > 1e-3


@pytest.mark.parametrize("frame", ["spframe_gs", "spframe_global"])
def test_every_spframe_method_averages_the_tied_reduced_frames(frame):
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame, frame_options={"global_frame": "reduced"}, **SMALL).double().eval()
    err = _worst_cell_change(m, _symmetric_cells(), torch.float64)
    assert max(err.values()) < 1e-9, err


def test_reduced_global_frame_first_tie_policy_keeps_the_single_lexicographic_frame():
    """``ties="first"``: the former frame (:func:`reduced_frame` of the input cell), which depends on the basis."""
    cells = _symmetric_cells()
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="spframe_quat", frame_options={"global_frame": "reduced", "ties": "first"},
                         **SMALL).double().eval()
    b = batch64(cells)
    frame = m.layers[0].attn.frame
    with torch.no_grad():
        Fg, wg = frame.global_frame_set(SimpleNamespace(lattice=b.lattice, batch=b.batch, pos=b.pos, ptr=b.ptr,
                                                        species=b.species))
    assert Fg.shape[1] == 1 and torch.allclose(Fg[:, 0], reduced_frame(b.lattice)[b.batch])
    assert _worst_cell_change(m, cells, torch.float64)["basis"] > 1e-3
    frame.ties = "average"
    with torch.no_grad():
        Fg, wg = frame.global_frame_set(SimpleNamespace(lattice=b.lattice, batch=b.batch, pos=b.pos, ptr=b.ptr,
                                                        species=b.species))
    assert Fg.shape[1] == 24 and torch.allclose(wg.sum(1), torch.ones_like(wg[:, 0]))


#: MP-20 cells on symmetric lattices whose prediction the lexicographic reduced frame changed by 1e-2 .. 4e-2
#: (change of basis or 2×2×1 supercell), and a cubic and a hexagonal one
MP_SYMMETRIC = ("mp-19928", "mp-1077918", "mp-1187674", "mp-867958")


def test_reduced_global_frame_ignores_the_unit_cell_of_real_symmetric_mp_cells(shared_data):
    """Real tetragonal, hexagonal and cubic cells of the MP-20 subset, float32."""
    import csv
    import gzip
    import sys
    import warnings

    path = shared_data / "mp_20_subset" / "mp20_resplit_test_subset.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    csv.field_size_limit(sys.maxsize)
    found: dict[str, Structure] = {}
    with gzip.open(path, "rt") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pymatgen's notes on rounded CIF coordinates
        for row in csv.DictReader(f):
            if row["material_id"] in MP_SYMMETRIC:
                found[row["material_id"]] = Structure.from_str(row["cif"], fmt="cif")
    assert sorted(found) == sorted(MP_SYMMETRIC)
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="spframe_quat", frame_options={"global_frame": "reduced"}, **SMALL).eval()
    err = _worst_cell_change(m, [found[k] for k in MP_SYMMETRIC], torch.float32)
    assert max(err.values()) < 1e-4, err


def test_gradients_reach_the_learned_rotation_through_the_averaged_reduced_frames():
    """float64 finite differences of the loss along a random direction of the quaternion head's weights
    (every layer) match autograd, on cells whose reduced global frame is a set of tied candidates."""
    cells = _symmetric_cells()[:3]
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame="spframe_quat", frame_options={"global_frame": "reduced"}, **SMALL).double().eval()
    b = batch64(cells)
    inp_sets = primitive_reduced_frame_sets(b.lattice, b.pos, b.species, b.ptr)[1]
    assert int((inp_sets > 0).sum(1).min()) >= 8  # the averaging path, not a single frame
    params = [blk.attn.frame.head.lin.weight for blk in m.layers]
    g = torch.Generator().manual_seed(1)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    y = torch.linspace(-1, 1, len(cells), dtype=torch.float64)[:, None]

    def loss() -> torch.Tensor:
        return ((m(b) - y) ** 2).mean()

    m.zero_grad()
    loss().backward()
    analytic = sum((p.grad * d).sum() for p, d in zip(params, dirs)).item()
    assert abs(analytic) > 1e-6
    h = 1e-6  # the error of central differences is ~1e-2 h² relative here (1e-5: 1.4e-6, 1e-6: 1.2e-8)
    with torch.no_grad():
        for p, d in zip(params, dirs):
            p.add_(h * d)
        up = loss().item()
        for p, d in zip(params, dirs):
            p.sub_(2 * h * d)
        down = loss().item()
    numeric = (up - down) / (2 * h)
    assert abs(numeric - analytic) <= 1e-6 * abs(analytic) + 1e-12, (numeric, analytic)


def _frames_and_rotations(m, structures):
    """(N, L, H, 3, 3) frames and F_INV = F F_gᵀ (for SPFrame with the model's global frame)."""
    b = batch64(structures)
    with torch.no_grad():
        F = m(b, return_all=True)["frames"]
    method = m.layers[0].attn.frame.global_method
    Fg = global_frame(b.lattice, method)[b.batch][:, None, None]
    return F, F @ Fg.transpose(-1, -2)


@pytest.mark.parametrize("frame", LEARNED)
def test_frames_rotate_with_the_crystal_and_the_spframe_rotation_is_invariant(frame, structures):
    m = small_model(frame)
    Q = random_rotation(9)
    b = batch64(structures)
    br = batch64([rotate(s, Q) for s in structures])
    with torch.no_grad():
        F, Fr = m(b, return_all=True)["frames"], m(br, return_all=True)["frames"]
    eye = torch.eye(3, dtype=F.dtype)
    assert torch.allclose(F @ F.transpose(-1, -2), eye.expand_as(F), atol=1e-10)
    assert torch.allclose(torch.linalg.det(F), torch.ones(F.shape[:-2], dtype=F.dtype), atol=1e-10)
    assert torch.allclose(Fr, F @ torch.tensor(Q).T, atol=1e-9)
    if frame != "equiv_gs_local":
        _, R = _frames_and_rotations(m, structures)
        _, Rr = _frames_and_rotations(m, [rotate(s, Q) for s in structures])
        assert torch.allclose(R, Rr, atol=1e-9)
        assert (R - eye).abs().amax() > 1e-2  # a real rotation, not the identity


# --------------------------------------------------------------------------------- symmetry preservation
def _p4_toy() -> Structure:
    """P4 (no mirrors): four Si in a general position related by the 4-fold axis, plus O on the axis."""
    return Structure.from_spacegroup("P4", Lattice.tetragonal(5.0, 3.7), ["Si", "O"],
                                     [[0.23, 0.11, 0.07], [0.0, 0.0, 0.5]])


def _framed_neighbourhood(img, i: int, frame: np.ndarray) -> np.ndarray:
    """Framed displacements u = F r of atom i's images within 4 Å, sorted (a canonical list)."""
    vec = img.vec[i][img.mask[i] & (img.d2[i] < 16.0) & (img.d2[i] > 1e-6)].numpy()
    u = np.round(vec @ frame.T, 6)
    return u[np.lexsort(u.T[::-1])]


@pytest.mark.parametrize("frame", ["spframe_quat", "spframe_gs"])
def test_symmetry_equivalent_atoms_share_the_rotation_but_keep_distinct_framed_environments(frame):
    """P4 toy: four Si related by 90° rotations. In the first layer (invariant, distance-only states) the four
    get the same invariant rotation, and their framed environments stay distinct (rotated by 90°), so the
    layer's output tells them apart; later layers' rotations then differ (they see those states). The
    equivariant local frames of the baseline map them onto one framed environment and identical states."""
    s = _p4_toy()
    si = [i for i, sp in enumerate(s.species) if sp.symbol == "Si"]
    b = batch64([s])
    img = sphere_images(b.lattice, b.pos, b.ptr, 6.0)
    m = small_model(frame)
    F, R = _frames_and_rotations(m, [s])
    for i in si[1:]:
        assert torch.allclose(R[i, 0], R[si[0], 0], atol=1e-9)  # same invariant rotation, every head
    envs = [_framed_neighbourhood(img, i, F[i, 0, 0].numpy()) for i in si]
    for e in envs[1:]:
        assert e.shape == envs[0].shape and np.abs(e - envs[0]).max() > 0.1  # 90°-rotated, not identical
    states = run(m, [s], return_all=True)["states"][si, 0]
    assert (states - states[0]).abs().max() > 1e-4

    # the equivariant local-frame baseline maps them onto one and the same framed environment (spec A.2)
    out = run(small_model("equiv_gs_local"), [s], return_all=True)
    for layer in range(out["frames"].shape[1]):
        envs = [_framed_neighbourhood(img, i, out["frames"][i, layer, 0].numpy()) for i in si]
        for e in envs[1:]:
            assert np.abs(e - envs[0]).max() < 1e-5
    states = out["states"][si]
    assert (states - states[0]).abs().max() < 1e-9


def test_exactly_symmetric_rock_salt_stays_finite_and_invariant():
    """In the conventional rock-salt cell every site is centrosymmetric: the equivariant vectors α, β vanish
    and equiv_gs_local falls back on the lattice axes (still invariant); SPFrame gives all Na (and all Cl)
    the same invariant rotation."""
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    Q = random_rotation(2)
    for frame in ["spframe_quat", "equiv_gs_local"]:
        m = small_model(frame)
        out = run(m, [nacl, rotate(nacl, Q)]).numpy()
        assert np.isfinite(out).all() and abs(out[0] - out[1]).max() < TOL
    _, R = _frames_and_rotations(small_model("spframe_quat"), [nacl])
    na = [i for i, sp in enumerate(nacl.species) if sp.symbol == "Na"]
    assert torch.allclose(R[na], R[na[0]].expand(len(na), -1, -1, -1, -1), atol=1e-9)


# ----------------------------------------------------------------------------------- gradients, training
def _learned_parts(frame_mod):
    if frame_mod.name == "spframe_quat":
        return {"head": frame_mod.head.lin.weight}
    if frame_mod.name == "spframe_gs":
        return {"alpha": frame_mod.head_alpha.lin.weight, "beta": frame_mod.head_beta.lin.weight}
    return {"phi_out": frame_mod.out.weight, "phi_d": frame_mod.w_d.weight}


@pytest.mark.parametrize("frame", LEARNED)
def test_frame_predictors_get_gradients_and_a_gradient_step_lowers_the_loss(frame, small_cells):
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame, **SMALL).double().train()
    b = batch64(small_cells)
    y = torch.linspace(-1, 1, len(small_cells), dtype=torch.float64)[:, None]
    loss = ((m(b) - y) ** 2).mean()
    loss.backward()
    for layer, blk in enumerate(m.layers):
        for name, p in _learned_parts(blk.attn.frame).items():
            assert p.grad is not None and p.grad.abs().max() > 1e-8, f"layer {layer}: {name} gets no gradient"
        for blk_mp in getattr(blk.attn.frame, "blocks", []):
            assert blk_mp.attn.w_q.grad.abs().max() > 1e-8
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    opt.step()
    with torch.no_grad():
        assert ((m(b) - y) ** 2).mean() < loss


def test_parameter_counts_are_the_backbone_plus_the_frame_predictors():
    def count(frame, **opts):
        torch.manual_seed(0)
        return cf.CrystalFramer(frame=frame, frame_options=opts).num_parameters()

    d, H, L = 128, 8, 4
    base = count("max")
    assert count("spframe_global") == base == 951_821
    block = sum(p.numel() for p in DistanceDecayAttention(d, H).parameters())
    head = lambda k: 2 * d + d * k * H + k * H  # noqa: E731  LayerNorm + Linear
    assert count("spframe_quat") == base + block + L * head(4)
    assert count("spframe_quat", per_head=False) == base + block + L * (2 * d + d * 4 + 4)
    assert count("spframe_gs") == base + 2 * block + 2 * L * head(3)
    assert count("equiv_gs_local") == base + L * (2 * d + (d * 64 + 64) + d * 64 + 16 * 64 + (64 * 2 * H + 2 * H))


@pytest.mark.parametrize("frame", LEARNED)
def test_float32_gradients_are_finite_on_symmetric_cells(frame):
    """The learned frames in float32 (the training dtype) on exactly symmetric cells, where α vanishes and
    the tie-breakers act: every gradient finite (a 1e-300 floor is 0 in float32 and made them NaN)."""
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    perov = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame, **SMALL).train()
    b = collate([to_crystal(nacl), to_crystal(perov), to_crystal(nacl.get_primitive_structure())])
    m(b).square().mean().backward()
    bad = [n for n, p in m.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, bad
