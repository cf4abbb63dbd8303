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


# -- hostile arguments, outputs and data: refused up front, with one line naming the problem -------------------


def _perov_csv(shared_data, path="perov.csv", **change):
    """A small perov_5 CSV in the current folder (relative path); ``change``: column -> new values."""
    import pandas as pd

    write_perov_csv(shared_data, Path(path), n_train=8, n_val=4, n_test=4)
    df = pd.read_csv(path)
    for col, values in change.items():
        df[col] = values if not callable(values) else values(df[col])
    df.to_csv(path, index=False)
    return path


SMALL = [*QUICK, *TINY_FLAGS, "--no-tensorboard", "--no-plots", "--epochs", "1", "--swa-epochs", "0"]


@pytest.mark.parametrize("argv, flag", [
    (["train", "--data", "perov.csv", "--batch-size", "0"], "--batch-size"),
    (["train", "--data", "perov.csv", "--batch-size", "-5"], "--batch-size"),
    (["train", "--data", "perov.csv", "--limit", "0"], "--limit"),
    (["train", "--data", "perov.csv", "--limit", "-3"], "--limit"),
    (["predict", "model.pt", "a.cif", "-o", "p.csv", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "model.pt", "perov.csv", "--limit", "-3"], "--limit"),
])
def test_counts_below_one_are_refused_by_the_parser(tmp_path, monkeypatch, capsys, argv, flag):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--model-arg", "num_layer=1"], "unknown model settings ['num_layer']"),
    (["--recipe-arg", "lr=abc"], "recipe setting lr must be a finite number, got 'abc'"),
    (["--recipe-arg", "learning_rate=0.1"], "unknown recipe settings ['learning_rate']"),
    (["--targets", "heat_all", "heat_all"], "name ['heat_all'] more than once"),
    (["--init-from", "model.pt"], "the architecture comes from the checkpoint"),
    (["--binarize", "heat_all=nan", "--loss", "bce"], "threshold of 'heat_all' must be a finite number"),
    (["--binarize", "heat_all=100", "--loss", "bce"], "only one class"),
    (["--binarize", "heat_all=high", "--loss", "bce"], "--binarize heat_all=high: the threshold must be a number"),
    (["--config", "bad.yaml"], "config file bad.yaml is not valid YAML"),
    (["--config", "bad.json"], "config file bad.json is not valid JSON"),
])
def test_bad_train_settings_fail_in_one_line_before_anything_is_written(shared_data, tmp_path, monkeypatch, capsys,
                                                                        extra, message):
    monkeypatch.chdir(tmp_path)
    _perov_csv(shared_data)
    Path("bad.yaml").write_text("recipe: {lr: [1, 2\n")
    Path("bad.json").write_text('{"recipe": {"lr": 1e-3,}}')
    Path("model.pt").write_bytes(b"")  # never read: the settings are refused first
    if "--targets" not in extra:
        extra = ["--targets", "heat_all", *extra]
    assert main(["train", "--data", "perov.csv", *SMALL, *extra, "-o", "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not Path("run").exists()


@pytest.mark.parametrize("column, message", [
    (lambda y: ["n/a"] * len(y), "no numeric label among the 8 training structures"),
    (lambda y: y * 1e40, "beyond the float32 range"),
])
def test_labels_that_cannot_train_fail_before_training(shared_data, tmp_path, monkeypatch, capsys, column, message):
    monkeypatch.chdir(tmp_path)
    _perov_csv(shared_data, heat_all=column)
    assert main(["train", "--data", "perov.csv", "--targets", "heat_all", *SMALL, "-o", "run"]) == 2
    assert message in capsys.readouterr().err
    assert not Path("run").exists()


def test_train_never_replaces_an_existing_run_without_overwrite(trained, tmp_path, monkeypatch, capsys):
    import shutil

    out, root = trained
    monkeypatch.chdir(tmp_path)
    shutil.copytree(out, "run", ignore=shutil.ignore_patterns("checkpoints"))  # results, no resume state
    before = {p: p.read_bytes() for p in Path("run").rglob("*") if p.is_file()}
    argv = ["train", "--dataset", "perov_5", "--data-root", str(root), "--frame", "max", *QUICK, *TINY_FLAGS,
            "--no-tensorboard", "--no-plots", "--epochs", "1", "--swa-epochs", "0", "-o", "run"]
    assert main(argv) == 2
    assert "run already holds a run" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in Path("run").rglob("*") if p.is_file()} == before
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads(Path("run/metrics.json").read_text())["epochs"] == 1


def test_resume_with_other_flags_names_the_difference_and_keeps_the_config(trained, tmp_path, monkeypatch, capsys):
    import shutil

    out, root = trained
    monkeypatch.chdir(tmp_path)
    shutil.copytree(out, "run")
    config = Path("run/config.json").read_bytes()
    assert main(["train", "--resume", "-o", "run", "--model-dim", "64", "--no-progress"]) == 2
    assert "model model_dim: 32 -> 64" in capsys.readouterr().err
    assert Path("run/config.json").read_bytes() == config
    assert main(["train", "--resume", "-o", "run", "--limit", "8", "--no-progress"]) == 2
    assert "data: SHA-256" in capsys.readouterr().err
    assert Path("run/config.json").read_bytes() == config


def test_resume_refuses_a_checkpoint_that_runs_code(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a common setting: unsafe torch.load default
    monkeypatch.chdir(tmp_path)
    _perov_csv(shared_data)
    Path("run/checkpoints").mkdir(parents=True)
    torch.save({"epoch": 0, "payload": _Touch("pwned")}, "run/checkpoints/last.ckpt")
    assert main(["train", "--resume", "-o", "run", "--data", "perov.csv", "--targets", "heat_all", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "run/checkpoints/last.ckpt" in err and "pickled objects are refused" in err
    assert not Path("pwned").exists()


class _Touch:
    """Unpickling this creates a file: what an attacker's checkpoint would do with os.system."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return (open, (self.name, "w"))


@pytest.fixture()
def workdir(trained, shared_data, tmp_path, monkeypatch):
    """The current folder holds model.pt, a.cif, structures/a.cif and perov.csv (relative paths, as users type
    them)."""
    import shutil

    out, _ = trained
    monkeypatch.chdir(tmp_path)
    shutil.copy(out / "model.pt", "model.pt")
    (f,) = _structure_files(shared_data, Path("structures"), n=1)
    f.rename("structures/a.cif")
    shutil.copy("structures/a.cif", "a.cif")
    _perov_csv(shared_data)
    return {p: Path(p).read_bytes() for p in ("model.pt", "structures/a.cif", "a.cif", "perov.csv")}


@pytest.mark.parametrize("argv", [
    ["predict", "model.pt", "structures/a.cif", "-o", "model.pt", "--overwrite"],
    ["predict", "model.pt", "structures/a.cif", "-o", "structures/a.cif", "--overwrite"],
    ["predict", "model.pt", "structures/", "-o", "structures/../model.pt", "--overwrite"],
    ["embed", "model.pt", "structures/a.cif", "-o", "./structures/a.cif", "--overwrite"],
    ["evaluate", "model.pt", "perov.csv", "--json", "perov.csv", "--overwrite"],
    ["evaluate", "model.pt", "perov.csv", "-o", "model.pt", "--overwrite"],
])
def test_outputs_never_replace_an_input(workdir, capsys, argv):
    """Even with --overwrite, the checkpoint, a structure file or the data table is never written over."""
    assert main([*argv, "--device", "cpu"]) == 2
    assert "is also an input" in capsys.readouterr().err
    assert {p: Path(p).read_bytes() for p in workdir} == workdir


@pytest.mark.parametrize("argv", [
    ["predict", "model.pt", "a.cif", "-o", "old.csv"],
    ["embed", "model.pt", "a.cif", "-o", "old.csv"],
    ["evaluate", "model.pt", "perov.csv", "-o", "old.csv"],
    ["evaluate", "model.pt", "perov.csv", "--json", "old.csv"],
])
def test_existing_outputs_need_overwrite(workdir, capsys, argv):
    Path("old.csv").write_text("keep me\n")
    assert main([*argv, "--device", "cpu"]) == 2
    assert "old.csv already exists; pass --overwrite" in capsys.readouterr().err
    assert Path("old.csv").read_text() == "keep me\n"
    assert main([*argv, "--device", "cpu", "--overwrite"]) == 0
    assert Path("old.csv").read_text() != "keep me\n"


def test_strict_leaves_no_output_file(workdir, capsys):
    Path("broken.cif").write_text("data_broken\n_cell_length_a 3.0\nthis is not a CIF\n")
    assert main(["predict", "model.pt", "a.cif", "broken.cif", "-o", "p.csv", "--strict",
                 "--device", "cpu"]) == 1
    assert "nothing written" in capsys.readouterr().err and not Path("p.csv").exists()


def test_unwritable_output_folder_fails_before_any_work(workdir, monkeypatch, capsys):
    import crystalframer.training.evaluation as ev

    def never(*a, **k):
        raise AssertionError("predicted before checking the output")

    monkeypatch.setattr(ev, "predict_crystals", never)
    monkeypatch.setattr(ev, "evaluate_crystals", never)
    # /proc refuses new files even to root; a chmod-ed folder would not stop root
    assert main(["predict", "model.pt", "structures/a.cif", "-o", "/proc/self/p.csv", "--device", "cpu"]) == 2
    assert "/proc/self" in capsys.readouterr().err
    assert main(["train", "--data", "perov.csv", "--targets", "heat_all", *SMALL, "-o", "/proc/self/run"]) == 2
    assert "run folder /proc/self/run" in capsys.readouterr().err


def test_duplicate_evaluation_targets_are_refused(workdir, capsys):
    assert main(["evaluate", "model.pt", "perov.csv", "--targets", "heat_all", "heat_all", "--device", "cpu"]) == 2
    assert "named more than once" in capsys.readouterr().err


def test_device_cuda_without_cuda_is_named(workdir, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["predict", "model.pt", "structures/a.cif", "-o", "p.csv", "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
    assert not Path("p.csv").exists()


def test_absurd_model_size_in_a_checkpoint_is_refused(workdir, capsys):
    raw = torch.load("model.pt", weights_only=True)
    raw["config"]["model_dim"] = 10**7
    torch.save(raw, "huge.pt")
    with pytest.raises(SystemExit, match="huge.pt: weights do not fit"):
        main(["predict", "huge.pt", "structures/a.cif", "-o", "p.csv", "--device", "cpu"])

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
