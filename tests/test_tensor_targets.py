"""Tensor targets end to end: tensor-valued columns, equivariant normalisation, CLI train/predict (CSV, .npz),
checkpoints with shapes, and the orientation check of tensor labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystalframer.checkpoint import load, read_header
from crystalframer.cli import main
from crystalframer.data.tensors import (cartesian_point_group, expand_targets, flatten_tensor_columns,
                                        orientation_report, symmetry_misfit, tensor_value)
from crystalframer.geometry.tensors import rotate, tensor_normalisation
from tests.helpers import random_rotation, tensor_table

TINY = ["--num-layers", "1", "--model-dim", "16", "--num-heads", "2", "--ff-dim", "32", "--cutoff", "4.0",
        "--model-arg", "head_dims=[16]", "--model-arg", "dist_bins=16", "--model-arg", "angle_bins=16"]
QUICK = ["--preset", "quick", "--epochs", "1", "--swa-epochs", "0", "--batch-size", "8", "--accelerator", "cpu",
         "--devices", "1", "--no-progress", "--no-tensorboard", "--no-plots", "--recipe-arg", "loss=mse"]


def test_tensor_values_from_every_storage_form():
    want = np.arange(9.0).reshape(3, 3)
    for v in (want.tolist(), want, json.dumps(want.tolist()), str(want.tolist()),
              {"@module": "numpy", "@class": "array", "data": want.tolist()}):
        np.testing.assert_array_equal(tensor_value(v, "3x3"), want)
    assert np.isnan(tensor_value(None, "6x6")).all() and tensor_value("", "3").shape == (3,)
    with pytest.raises(ValueError, match=r"shape \(3, 3\), expected \(6, 6\)"):
        tensor_value(want, "6x6")
    df = pd.DataFrame({"id": ["a", "b"], "eps": [want.tolist(), "not an array"], "gap": [1.0, 2.0]})
    with pytest.warns(UserWarning, match="1 value\\(s\\) of target 'eps' unreadable"):
        flat = flatten_tensor_columns(df, {"eps": "3x3"})
    assert list(flat.columns) == ["id", "gap"] + expand_targets(["eps"], {"eps": "3x3"})
    assert flat["eps[1,2]"].iloc[0] == 5.0 and np.isnan(flat["eps[1,2]"].iloc[1])
    with pytest.raises(ValueError, match="not among the targets"):
        expand_targets(["gap"], {"eps": "3x3"})


def test_normalisation_commutes_with_rotations():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 3, 3))
    t = a + a.transpose(0, 2, 1) + 4 * np.eye(3)
    mean, std = tensor_normalisation(t.reshape(20, 9), ["3x3sym"])
    np.testing.assert_allclose(mean.reshape(3, 3), np.trace(t, axis1=1, axis2=2).mean() / 3 * np.eye(3))
    assert np.all(std == std[0]) and std[0] > 0  # one scale per tensor
    R = torch.as_tensor(random_rotation(1))
    rt = rotate(torch.as_tensor(t), R.expand(20, 3, 3)).numpy()
    norm = (t.reshape(20, 9) - mean) / std
    norm_rt = (rt.reshape(20, 9) - mean) / std
    np.testing.assert_allclose(norm_rt.reshape(20, 3, 3),
                               rotate(torch.as_tensor(norm.reshape(20, 3, 3)), R.expand(20, 3, 3)).numpy(), atol=1e-12)


def test_orientation_check_finds_a_rotated_tensor():
    zno = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                    [[1 / 3, 2 / 3, 0.0], [1 / 3, 2 / 3, 0.382]])
    rots = cartesian_point_group(zno)
    assert len(rots) == 12 and np.allclose(np.einsum("nij,nkj->nik", rots, rots), np.eye(3), atol=1e-9)
    aligned = np.diag([8.0, 8.0, 9.0])  # uniaxial along c (z in pymatgen's hexagonal setting)
    R = random_rotation(2)
    assert symmetry_misfit(aligned, "3x3sym", rots) < 1e-12
    assert symmetry_misfit(R @ aligned @ R.T, "3x3sym", rots) > 1e-2
    rep = orientation_report([zno, zno], {"good": [aligned, aligned], "bad": [R @ aligned @ R.T, None]}, "3x3sym")
    assert rep["good"]["misaligned"] == 0 and rep["good"]["checked"] == 2
    assert rep["bad"]["misaligned"] == 1 and rep["bad"]["checked"] == 1


def test_cli_trains_and_predicts_a_dielectric_tensor(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--dataset", "mp_dielectric_2017", "--data-root", str(shared_data), "--targets", "e_total",
               "band_gap", "--target-shape", "e_total=3x3sym", "--frame", "max", "--limit", "8", *QUICK, *TINY,
               "-o", "run"])
    assert rc == 0
    metrics = json.loads(open("run/metrics.json").read())
    assert metrics["target_names"][:2] == ["e_total[0,0]", "e_total[0,1]"] and metrics["target_names"][-1] == "band_gap"
    header = read_header("run/model.pt")
    assert header["config"]["target_shapes"] == ["3x3sym", "scalar"]
    assert header["targets"]["shapes"] == ["3x3sym", "scalar"]
    model = load("run/model.pt")
    # normalisation: an isotropic mean and one scale for the tensor's 9 columns
    mean, std = model.target_mean[:9].reshape(3, 3), model.target_std[:9]
    assert torch.allclose(mean, mean[0, 0] * torch.eye(3)) and mean[0, 0] > 1 and torch.all(std == std[0])
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]).get_primitive_structure()
    si.to(filename="Si.cif")
    assert main(["predict", "run/model.pt", "Si.cif", "-o", "p.csv"]) == 0
    df = pd.read_csv("p.csv")
    assert list(df.columns)[:3] == ["id", "e_total[0,0]", "e_total[0,1]"] and "band_gap [eV]" in df.columns
    assert main(["predict", "run/model.pt", "Si.cif", "-o", "p.npz"]) == 0
    d = np.load("p.npz")
    assert d["e_total"].shape == (1, 3, 3) and d["band_gap"].shape == (1,)
    eps = d["e_total"][0]
    np.testing.assert_allclose(eps, eps[0, 0] * np.eye(3), rtol=1e-4, atol=1e-4 * abs(eps[0, 0]))  # cubic: isotropic
    np.testing.assert_allclose(eps.reshape(-1), df.iloc[0, 1:10].to_numpy(float), rtol=1e-6)
    # evaluate on the shared set's tensor labels: GMTNet metrics for e_total, MAE for band_gap
    assert main(["evaluate", "run/model.pt", "mp_dielectric_2017", "--data-root", str(shared_data), "--split", "test",
                 "--limit", "4", "--json", "ev.json", "--device", "cpu"]) == 0
    ev = json.loads(open("ev.json").read())["metrics"]
    assert ev["e_total"]["n"] == 4 and ev["e_total"]["fnorm"] > 0 and 0 <= ev["e_total"]["ewt25"] <= 1
    assert ev["band_gap"]["n"] == 4 and "e_total[2,2]" in ev


def test_cli_refuses_tensor_targets_without_frames(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--dataset", "mp_dielectric_2017", "--data-root", str(shared_data), "--targets", "e_total",
               "--target-shape", "e_total=3x3sym", "--frame", "none", "--limit", "4", *QUICK, *TINY, "-o", "run"])
    assert rc != 0
    assert "frame='none'" in capsys.readouterr().err


def _flattened(df: pd.DataFrame) -> pd.DataFrame:
    """The same table with ``eps`` as nine columns ``eps[i,j]``."""
    flat = df.drop(columns=["eps"])
    for k, c in enumerate(expand_targets(["eps"], {"eps": "3x3sym"})):
        flat[c] = [json.loads(v)[k // 3][k % 3] for v in df["eps"]]
    return flat


FILE_QUICK = [q for q in QUICK if q not in ("--recipe-arg", "loss=mse")]  # the loss follows the targets


def test_tensor_targets_from_a_csv_train_and_evaluate(tmp_path, monkeypatch, capsys):
    """train --data with a nested-list column, then evaluate on flattened columns and on the array column:
    GMTNet tensor metrics, per-component MAE and per-row predictions; the default loss is MSE."""
    monkeypatch.chdir(tmp_path)
    df = tensor_table()
    df.to_csv("eps.csv", index=False)
    _flattened(df).to_csv("flat.csv", index=False)
    assert main(["train", "--data", "eps.csv", "--targets", "eps", "gap", "--target-shape", "eps=3x3sym",
                 "--split-fractions", "0.7", "0.15", "0.15", "--frame", "max", *FILE_QUICK, *TINY, "-o", "run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"test \(\w+\) eps: Frobenius error .* EwT25", out)  # the final line
    assert re.search(r"test +best eps: Frobenius error", out)  # the summary
    config = json.loads(open("run/config.json").read())
    assert config["resolved"]["recipe"]["loss"] == "mse"
    run = json.loads(open("run/metrics.json").read())
    test = run[run["final_model"]]["test"]
    assert {"fnorm", "ewt25", "ewt10", "ewt5"} <= set(test["eps"]) and "mae" in test["eps[2,2]"]

    assert main(["evaluate", "run/model.pt", "flat.csv", "-o", "ev.csv", "--json", "ev.json", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "eps: Frobenius error" in out and "EwT25" in out and "eps[0,1]: MAE" in out and "gap: MAE" in out
    metrics = json.loads(open("ev.json").read())["metrics"]
    rows = pd.read_csv("ev.csv")
    assert list(rows["id"]) == list(df["id"])
    cols = expand_targets(["eps"], {"eps": "3x3sym"})
    pred, true = rows[cols].to_numpy(), rows[[f"{c}_true" for c in cols]].to_numpy()
    np.testing.assert_allclose(true, _flattened(df)[cols].to_numpy())
    err = np.linalg.norm(pred - true, axis=1)
    rel = err / np.linalg.norm(true, axis=1)
    assert metrics["eps"]["n"] == 12
    assert metrics["eps"]["fnorm"] == pytest.approx(err.mean(), rel=1e-9)
    assert metrics["eps"]["ewt25"] == pytest.approx(float((rel < 0.25).mean()))
    assert metrics["eps[1,2]"]["mae"] == pytest.approx(np.abs(pred[:, 5] - true[:, 5]).mean(), rel=1e-9)
    # the array column, a JSON file of real nested lists and a CIF folder whose id_prop.csv holds the nine
    # components give the same numbers
    records = [{**r, "eps": json.loads(r["eps"])} for r in df.to_dict("records")]
    Path("eps.json").write_text(json.dumps(records))
    Path("cifs").mkdir()
    for sid, cif in zip(df["id"], df["structure"]):
        Path(f"cifs/{sid}.cif").write_text(cif)
    _flattened(df)[["id", *cols, "gap"]].to_csv("cifs/id_prop.csv", index=False, header=False)
    df.rename(columns={"eps": "epsilon"}).to_csv("renamed.csv", index=False)  # other label names: --targets
    for k, (source, *targets) in enumerate((["eps.csv"], ["eps.json"], ["cifs"], ["renamed.csv", "epsilon", "gap"])):
        assert main(["evaluate", "run/model.pt", source, "--json", f"ev{k}.json", "--device", "cpu",
                     *(["--targets", *targets] if targets else [])]) == 0
        again = json.loads(open(f"ev{k}.json").read())["metrics"]
        assert again["eps"] == pytest.approx(metrics["eps"]) and again["gap"] == pytest.approx(metrics["gap"])


@pytest.mark.parametrize("cell, message", [
    ("[[1, 2, 3], [4, 5, 6]]", r"column 'eps' of id 'c4' has shape \(2, 3\), expected \(3, 3\)"),
    ("dielectric", r"column 'eps' of id 'c4' is not an array"),
    ("[[1, 0, 0], [0, NaN, 0], [0, 0, 1]]", r"column 'eps' of id 'c4' has NaN components"),
])
def test_bad_tensor_cells_name_the_row_and_column(tmp_path, monkeypatch, capsys, cell, message):
    monkeypatch.chdir(tmp_path)
    df = tensor_table(6)
    df.loc[4, "eps"] = cell
    df.to_csv("eps.csv", index=False)
    rc = main(["train", "--data", "eps.csv", "--targets", "eps", "--target-shape", "eps=3x3sym", *FILE_QUICK,
               *TINY, "-o", "run"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "eps.csv" in err
    assert re.search(message, err), err


def test_bad_flattened_cell_names_the_row_and_column(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flat = _flattened(tensor_table(6)).astype({"eps[1,0]": object})
    flat.loc[2, "eps[1,0]"] = "n.a.x"
    flat.to_csv("flat.csv", index=False)
    assert main(["train", "--data", "flat.csv", "--targets", "eps", "--target-shape", "eps=3x3sym", *FILE_QUICK,
                 *TINY, "-o", "run"]) == 2
    assert "column 'eps[1,0]' of id 'c2' is not a number: 'n.a.x'" in capsys.readouterr().err


def test_tensor_targets_default_to_mse_and_an_explicit_loss_wins():
    from crystalframer.training.trainer import TrainConfig

    def loss(recipe: dict, shapes: dict | None) -> str:
        data = {"source": "x.csv", "targets": ["eps", "gap"], "target_shapes": shapes}
        return TrainConfig.from_dict({"data": data, "preset": "quick", "recipe": recipe}).resolved_recipe().loss

    assert loss({}, {"eps": "3x3sym"}) == "mse"
    assert loss({}, None) == "l1"  # scalars keep the published L1
    assert loss({"loss": "l1"}, {"eps": "3x3sym"}) == "l1"
    assert loss({"loss": "smooth_l1"}, {"eps": "6x6"}) == "smooth_l1"
