"""The ``crystalframer`` command line end to end on a few real perov_5 structures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalframer.cli import main
from tests.training.helpers import TINY, perov_crystals, write_fake_shared_root, write_perov_csv

TINY_FLAGS = ["--num-layers", "1", "--model-dim", "32", "--num-heads", "4", "--ff-dim", "64", "--cutoff", "4.0",
              "--model-arg", "head_dims=[32]", "--model-arg", "dist_bins=16", "--model-arg", "angle_bins=16",
              "--model-arg", "frame_noise=0"]
assert {"num_layers", "model_dim", "num_heads", "ff_dim", "cutoff"} < set(TINY)
QUICK = ["--preset", "quick", "--epochs", "2", "--swa-epochs", "1", "--batch-size", "8", "--accelerator", "cpu",
         "--devices", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """A run trained through the CLI on a tiny copy of the shared perov_5 folder."""
    tmp = tmp_path_factory.mktemp("cli")
    root = write_fake_shared_root(shared_data, tmp / "shared", n=16)
    out = tmp / "run"
    rc = main(["train", "--dataset", "perov_5", "--data-root", str(root), "--frame", "max", *QUICK, *TINY_FLAGS,
               "--no-tensorboard", "-o", str(out)])
    assert rc == 0
    return out, root


def _structure_files(shared_data, folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for c in perov_crystals(shared_data, "test", n):
        p = folder / f"perov-{c.id}.cif"
        c.to_pymatgen().to(filename=str(p))
        files.append(p)
    return files


def test_train_prints_the_test_mae_and_writes_the_run(trained, capsys):
    out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"train": 16, "val": 16, "test": 16}
    assert metrics["target_units"] == ["eV"] and metrics["global_steps"] == 4
    for name in ("model.pt", "checkpoints/best.pt", "parity_test.png", "learning_curves.png", "config.yaml"):
        assert (out / name).is_file(), name
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["dataset"] == "perov_5" and cfg["frame"] == "max" and cfg["model"]["head_dims"] == [32]


def test_train_output_line(shared_data, tmp_path, capsys):
    data = write_perov_csv(shared_data, tmp_path / "perov.csv", n_train=8, n_val=4, n_test=4)
    rc = main(["train", "--data", str(data), "--targets", "heat_all", "--units", "eV", "--frame", "none", *QUICK,
               *TINY_FLAGS, "--no-tensorboard", "--no-plots", "--epochs", "1", "--swa-epochs", "0",
               "-o", str(tmp_path / "run")])
    assert rc == 0
    text = capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    mae = metrics["last"]["test"]["heat_all"]["mae"]
    assert f"test MAE (last) heat_all: {mae:.6g} eV" in text
    assert metrics["split_sizes"] == {"train": 8, "val": 4, "test": 4}
    # the run folder is protected: a second start without --resume is refused
    assert main(["train", "--data", str(data), "--targets", "heat_all", *QUICK, *TINY_FLAGS,
                 "-o", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume of a finished run re-reads its config and only re-evaluates
    assert main(["train", "--resume", "-o", str(tmp_path / "run"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert again["last"]["test"]["heat_all"]["mae"] == pytest.approx(mae, rel=1e-6)


def test_predict_evaluate_embed(trained, shared_data, tmp_path, capsys):
    out, root = trained
    ckpt = out / "model.pt"
    files = _structure_files(shared_data, tmp_path / "cifs")
    bad = tmp_path / "cifs" / "broken.cif"
    bad.write_text("data_broken\n_cell_length_a 3.0\nthis is not a CIF\n")
    preds = tmp_path / "preds.csv"
    rc = main(["predict", str(ckpt), *map(str, files), str(bad), str(tmp_path / "missing.cif"), "-o", str(preds),
               "--device", "cpu"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "broken.cif" in err and "missing.cif" in err
    with open(preds) as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [p.stem for p in files]
    assert list(rows[0]) == ["id", "heat_all [eV]"]
    # same numbers as the Python API on the same files
    from crystalframer.checkpoint import load

    ref = load(ckpt).predict([str(p) for p in files])[:, 0]
    assert np.allclose([float(r["heat_all [eV]"]) for r in rows], ref, atol=1e-6)
    assert main(["predict", str(ckpt), str(bad), "-o", str(tmp_path / "none.csv")]) == 1
    assert main(["predict", str(ckpt), str(files[0]), str(bad), "-o", str(tmp_path / "s.csv"), "--strict"]) == 1
    capsys.readouterr()

    # evaluate on the test split of the shared set: same MAE as the run's own final evaluation
    js = tmp_path / "eval.json"
    assert main(["evaluate", str(ckpt), "--dataset", "perov_5", "--data-root", str(root), "--split", "test",
                 "--json", str(js), "-o", str(tmp_path / "eval.csv"), "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    got = json.loads(js.read_text())["metrics"]["heat_all"]
    assert got["n"] == 16 and got["mae"] == pytest.approx(metrics["swa"]["test"]["heat_all"]["mae"], rel=1e-5)
    assert "heat_all: MAE" in capsys.readouterr().out

    emb = tmp_path / "emb.npz"
    assert main(["embed", str(ckpt), str(tmp_path / "cifs"), "-o", str(emb), "--device", "cpu"]) == 0
    z = np.load(emb)
    assert z["embeddings"].shape == (3, 32) and sorted(z["ids"].tolist()) == sorted(p.stem for p in files)
    assert main(["info", str(ckpt)]) == 0 and "CrystalFramer" in capsys.readouterr().out
    assert main(["info", str(bad)]) == 1


def test_console_entry_point_runs_as_a_module():
    import crystalframer

    src = str(Path(crystalframer.__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-m", "crystalframer.cli", "--help"], capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": src}, timeout=120)
    assert r.returncode == 0 and "train" in r.stdout and "predict" in r.stdout


def test_fine_tune_from_a_checkpoint(trained, shared_data, tmp_path):
    out, _ = trained
    data = write_perov_csv(shared_data, tmp_path / "perov.csv", n_train=8, n_val=4, n_test=4)
    rc = main(["train", "--data", str(data), "--targets", "heat_all", "--init-from", str(out / "model.pt"), *QUICK,
               "--epochs", "1", "--swa-epochs", "0", "--no-tensorboard", "--no-plots", "-o", str(tmp_path / "ft")])
    assert rc == 0
    from crystalframer.checkpoint import load

    base, tuned = load(out / "model.pt"), load(tmp_path / "ft" / "model.pt")
    assert tuned.config == base.config  # the architecture comes from the checkpoint, not from the preset
    y = np.array([c.targets[0] for c in perov_crystals(shared_data, "train", 8)])
    assert float(tuned.target_mean[0]) == pytest.approx(y.mean())  # normalisation re-fitted on the new data
    assert any(not torch.equal(p, q) for p, q in zip(base.parameters(), tuned.parameters()))


def test_metal_classifier_train_and_evaluate(shared_data, tmp_path, capsys):
    """--binarize + --loss bce through the CLI; evaluate labels the data the way the model was trained."""
    out = tmp_path / "metal"
    assert main(["train", "--dataset", "mp_20_subset", "--data-root", str(shared_data), "--targets", "band_gap",
                 "--binarize", "band_gap=0", "--loss", "bce", "--limit", "24", *QUICK, *TINY_FLAGS,
                 "--no-tensorboard", "--no-plots", "-o", str(out)]) == 0
    assert "test accuracy (swa) band_gap>0" in capsys.readouterr().out
    csv_path = tmp_path / "eval.csv"
    assert main(["evaluate", str(out / "model.pt"), "--dataset", "mp_20_subset", "--data-root", str(shared_data),
                 "--split", "test", "--limit", "10", "--device", "cpu", "-o", str(csv_path)]) == 0
    assert "band_gap>0: accuracy" in capsys.readouterr().out
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    assert {r["band_gap>0_true"] for r in rows} <= {"0.0", "1.0"}
    assert all(0.0 < float(r["band_gap>0_probability"]) < 1.0 for r in rows)


def test_relative_paths_with_a_folder_part_through_the_cli(tmp_path, monkeypatch, capsys):
    """The README's own form: ``crystalframer predict model.pt structures/a.cif`` from the working folder;
    the same for folders, embed, evaluate and train --data."""
    from pymatgen.core import Lattice, Structure

    from crystalframer.checkpoint import save_model
    from tests.training.helpers import tiny_model

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_model(tiny_model(), "model.pt")
    Path("structures").mkdir()
    rng = np.random.default_rng(0)
    names = []
    for k in range(10):
        a = 3.8 + 0.05 * k
        s = Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        s.to(filename=f"structures/s{k}.cif")
        names.append(f"s{k}")
    Path("structures/id_prop.csv").write_text("".join(f"{n},{rng.normal():.6f}\n" for n in names))

    assert main(["predict", "model.pt", "structures/s0.cif", "structures/s1.cif", "-o", "out/one.csv",
                 "--device", "cpu", "--strict"]) == 0
    with open("out/one.csv") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["s0", "s1"]
    assert main(["predict", "model.pt", "structures", "-o", "out/all.csv", "--device", "cpu", "--strict"]) == 0
    with open("out/all.csv") as f:
        assert sorted(r["id"] for r in csv.DictReader(f)) == sorted(names)
    assert main(["embed", "model.pt", "structures/", "-o", "out/emb.npz", "--device", "cpu", "--strict"]) == 0
    assert np.load("out/emb.npz")["embeddings"].shape == (10, 32)
    assert main(["evaluate", "model.pt", "structures", "--device", "cpu"]) == 0
    assert "heat_all: MAE" in capsys.readouterr().out
    assert main(["train", "--data", "structures", "--targets", "target", "--frame", "none", *QUICK, *TINY_FLAGS,
                 "--epochs", "1", "--swa-epochs", "0", "--no-tensorboard", "--no-plots", "-o", "runs/r"]) == 0
    assert Path("runs/r/model.pt").is_file()
    # the same name twice (two folders) is warned about once
    Path("other").mkdir()
    Path("structures/s0.cif").rename("other/s0.cif")
    Path("structures/s1.cif").rename("other/s1.cif")
    Path("structures/s1.cif").write_text(Path("other/s1.cif").read_text())
    with pytest.warns(UserWarning, match=r"inputs: 1 duplicate id\(s\): 's1'"):
        assert main(["predict", "model.pt", "other/s0.cif", "other/s1.cif", "structures/s1.cif", "-o",
                     "out/dup.csv", "--device", "cpu"]) == 0
