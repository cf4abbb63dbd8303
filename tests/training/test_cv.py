"""k-fold cross-validation: Matbench folds and ids, fold files, the ``cv`` command, resume and parallel folds."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from crystalframer.cli import main
from crystalframer.data.sources.matbench import kfold_test_indices, load_matbench, matbench_ids, matbench_task
from crystalframer.training.cv import JDFT2D_LEADERBOARD, cross_validate, read_fold_file, read_leaderboard

TINY_CV = ["--preset", "quick", "--epochs", "2", "--swa-epochs", "1", "--batch-size", "4", "--frame", "max",
           "--num-layers", "1", "--model-dim", "32", "--num-heads", "4", "--ff-dim", "64", "--cutoff", "4.0",
           "--model-arg", "head_dims=[32]", "--model-arg", "dist_bins=16", "--model-arg", "angle_bins=16",
           "--model-arg", "frame_noise=0", "--no-plots", "--quiet"]
TINY_MODEL = dict(num_layers=1, model_dim=32, num_heads=4, ff_dim=64, head_dims=[32], cutoff=4.0, dist_bins=16,
                  angle_bins=16, frame_noise=0.0)


def _toy_rows(n: int, seed: int = 0) -> list:
    """Rock-salt-like cells (pymatgen dicts) with a target that depends on the cell and the element."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a = 3.6 + 0.8 * rng.random()
        el = ["Na", "K", "Li"][i % 3]
        s = Structure(Lattice.cubic(a), [el, "Cl"], [[0, 0, 0], [0.5 + 0.05 * rng.random(), 0.5, 0.5]])
        rows.append([s.as_dict(), float(10 * a + (i % 3))])
    return rows


def _write_matbench(path: Path, n: int) -> Path:
    rows = _toy_rows(n)
    with gzip.open(path, "wt") as f:
        json.dump({"index": list(range(n)), "columns": ["structure", "toy_en"], "data": rows}, f)
    return path


# -- folds -------------------------------------------------------------------------------------------------


def test_kfold_matches_sklearn_kfold():
    # KFold(3, shuffle=True, random_state=18012019) on 10 rows, as scikit-learn 1.9 gives it
    assert [f.tolist() for f in kfold_test_indices(10, 3, 18012019)] == [[1, 2, 3, 9], [4, 5, 8], [0, 6, 7]]
    assert [f.tolist() for f in kfold_test_indices(7, 3, None)] == [[0, 1, 2], [3, 4], [5, 6]]
    sk = pytest.importorskip("sklearn.model_selection")
    for n, k, seed in ((636, 5, 18012019), (11, 4, 7), (100, 10, 0)):
        ours = kfold_test_indices(n, k, seed)
        theirs = [t for _, t in sk.KFold(k, shuffle=True, random_state=seed).split(np.arange(n))]
        assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    with pytest.raises(ValueError, match="cannot cut 3 rows into 5 folds"):
        kfold_test_indices(3, 5)


def test_official_matbench_folds_and_ids(shared_data):
    folder = shared_data / "matbench_jdft2d"
    if not (folder / "folds.json").is_file():
        pytest.skip(f"{folder} is absent")
    official = json.loads((folder / "folds.json").read_text())["folds"]
    ours = kfold_test_indices(636)
    assert [official[f"fold_{k}"]["test_rows"] for k in range(5)] == [f.tolist() for f in ours]
    task = load_matbench(folder / "matbench_jdft2d.json.gz")
    assert (task.task, task.target, task.n_rows, len(task.dataset)) == ("jdft2d", "exfoliation_en", 636, 636)
    assert task.dataset[0].id == "mb-jdft2d-001" and task.dataset[635].id == "mb-jdft2d-636"
    # the fold file of the data folder names the same rows as the seeded folds
    ids = matbench_ids("jdft2d", 636)
    assert read_fold_file(folder / "folds.json", ids) == task.fold_test_ids()


def test_matbench_names():
    assert matbench_task("data/matbench_jdft2d.json.gz") == "jdft2d"
    assert matbench_ids("jdft2d", 3) == ["mb-jdft2d-001", "mb-jdft2d-002", "mb-jdft2d-003"]
    assert matbench_ids("dielectric", 4764)[0] == "mb-dielectric-0001"


def test_fold_file_layouts_and_errors(tmp_path):
    ids = ["a", "b", "c", "d"]
    f = tmp_path / "folds.json"
    for doc in ({"folds": {"fold_0": {"test_ids": ["a", "c"]}, "fold_1": {"test_rows": [1, 3]}}},
                {"fold_1": ["b", "d"], "fold_0": ["a", "c"]}, [["a", "c"], ["b", "d"]]):
        f.write_text(json.dumps(doc))
        assert read_fold_file(f, ids) == [["a", "c"], ["b", "d"]]
    f.write_text(json.dumps([["a", "b"], ["b", "c"]]))
    with pytest.raises(ValueError, match="'b' is in folds 0 and 1"):
        read_fold_file(f, ids)
    f.write_text(json.dumps([["a", "x"], ["b"]]))
    with pytest.raises(ValueError, match="fold 0 names 1 ids not in the data"):
        read_fold_file(f, ids)


def test_leaderboard_table(tmp_path):
    md = tmp_path / "board.md"
    md.write_text("intro\n\n| algorithm | jdft2d (meV/atom) | phonons |\n|---|---|---|\n"
                  "| A | **33.19 ± 7.34** | 1 |\n| B | 40 | 2 |\n\ntext\n")
    assert read_leaderboard(md, "jdft2d") == {"A": (33.19, 7.34), "B": (40.0, None)}
    with pytest.raises(ValueError, match="no table with a 'gap' column"):
        read_leaderboard(md, "gap")


def test_embedded_leaderboard_matches_the_published_table(shared_data):
    doc = shared_data.parent / "docs" / "matbench-leaderboard.md"
    if not doc.is_file():
        pytest.skip(f"{doc} is absent")
    assert read_leaderboard(doc, "jdft2d") == JDFT2D_LEADERBOARD


# -- the cv command ------------------------------------------------------------------------------------------


def test_cv_command_resumes_and_keeps_test_rows_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_matbench(tmp_path / "matbench_toy.json.gz", 15)
    import crystalframer.training.trainer as trainer

    calls: list[str] = []
    real_train = trainer.train

    def counting_train(cfg, *a, **kw):
        calls.append(Path(cfg.output).parent.name)
        res = real_train(cfg, *a, **kw)
        if Path(cfg.output).parent.name == "fold_1" and len(calls) == 2:
            raise KeyboardInterrupt  # killed after training, before the fold's record was written
        return res

    monkeypatch.setattr(trainer, "train", counting_train)
    base = ["cv", "--matbench", "matbench_toy.json.gz", "--n-folds", "3", "-o", "run", *TINY_CV]
    assert main([*base, "--folds", "0"]) == 0
    first = json.loads(Path("run/results.json").read_text())
    assert list(first["folds"]) == ["fold_0"] and not first["complete"]
    fold0 = Path("run/fold_0/fold.json").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        main(base)
    assert not Path("run/fold_1/fold.json").exists()
    assert main(base) == 0
    assert calls == ["fold_0", "fold_1", "fold_1", "fold_2"]  # fold 0 never retrained
    assert Path("run/fold_0/fold.json").read_bytes() == fold0

    res = json.loads(Path("run/results.json").read_text())
    assert res["complete"] and res["target"] == "toy_en" and res["settings"]["n_folds"] == 3
    labels = {f"mb-toy-{i + 1:03d}": y for i, (_, y) in enumerate(_toy_rows(15))}
    seen = []
    for k in range(3):
        f = res["folds"][f"fold_{k}"]
        rec = json.loads(Path(f"run/fold_{k}/fold.json").read_text())
        test = set(f["ids"])
        assert not test & set(rec["train_ids"]) and not test & set(rec["val_ids"])
        assert set(rec["train_ids"]) | set(rec["val_ids"]) | test == set(labels)
        assert f["true"] == [labels[x] for x in f["ids"]]
        err = np.abs(np.array(f["predictions"]) - np.array(f["true"]))
        assert f["metrics"]["mae"] == pytest.approx(err.mean())
        assert f["metrics"]["max_error"] == pytest.approx(err.max())
        assert f["n_val"] == 1 and f["wall_s"] > 0 and f["cpu_s"] > 0
        seen += f["ids"]
    assert sorted(seen) == sorted(labels)  # every row predicted exactly once
    assert [sorted(res["folds"][f"fold_{k}"]["ids"]) for k in range(3)] == \
        [[f"mb-toy-{i + 1:03d}" for i in f] for f in kfold_test_indices(15, 3)]
    maes = [res["folds"][f"fold_{k}"]["metrics"]["mae"] for k in range(3)]
    assert res["metrics"]["mae_mean"] == pytest.approx(np.mean(maes))
    assert res["metrics"]["mae_std"] == pytest.approx(np.std(maes))
    assert res["wall_s"] == pytest.approx(sum(res["folds"][f"fold_{k}"]["wall_s"] for k in range(3)))
    assert res["versions"]["crystalframer"]
    assert "3-fold cross-validation" in Path("run/summary.md").read_text()
    # other settings in the same folder are refused, not mixed in; output switches are not settings
    assert main([*base, "--epochs", "3"]) == 2
    assert main([*base, "--plots"]) == 0 and Path("run/parity.png").is_file()
    assert calls == ["fold_0", "fold_1", "fold_1", "fold_2"]


def test_cv_parallel_folds_ensemble_and_best_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = _toy_rows(12, seed=1)
    Path("toy.json").write_text(json.dumps([{"structure": s, "toy_en": y, "material_id": f"m{i}"}
                                            for i, (s, y) in enumerate(rows)]))
    cfg = dict(data={"source": "toy.json", "targets": ["toy_en"]}, frame="max", preset="quick", model=TINY_MODEL,
               recipe=dict(epochs=2, swa_epochs=1, batch_size=4), accelerator="cpu", devices=1,
               progress_bar=False, tensorboard=False, plots=True)
    res = cross_validate(cfg, "run", n_folds=2, fold_seed=5, ensemble=2, select="best", jobs=2, verbose=False)
    assert sorted(res.trained) == [0, 1] and res.results["complete"]
    for k in range(2):
        f = res.results["folds"][f"fold_{k}"]
        assert f["threads"] == 1  # two processes on the machine's cores share them
        seeds = [m["seed"] for m in f["members"]]
        assert seeds == [123, 124]
        mean = np.mean([m["predictions"] for m in f["members"]], axis=0)
        np.testing.assert_allclose(f["predictions"], mean)
        assert set(f["ids"]) == {f"m{i}" for i in kfold_test_indices(12, 2, 5)[k]}
    assert Path("run/parity.png").is_file() and Path("run/fold_0/member_1/model.pt").is_file()
    again = cross_validate(cfg, "run", n_folds=2, fold_seed=5, ensemble=2, select="best", jobs=2, verbose=False)
    assert again.trained == [] and again.results["folds"] == res.results["folds"]


def test_cv_ensemble_of_losses_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_matbench(Path("matbench_toy.json.gz"), 10)
    base = ["cv", "--matbench", "matbench_toy.json.gz", "--n-folds", "2", "--folds", "0", *TINY_CV]
    assert main([*base, "--ensemble-losses", "l1", "mse", "-o", "run"]) == 0
    res = json.loads(Path("run/results.json").read_text())
    fold = res["folds"]["fold_0"]
    assert [(m["seed"], m["loss"]) for m in fold["members"]] == [(123, "l1"), (124, "mse")]
    np.testing.assert_allclose(fold["predictions"], np.mean([m["predictions"] for m in fold["members"]], axis=0))
    for j, loss in enumerate(("l1", "mse")):  # the loss each member really trained with
        assert json.loads(Path(f"run/fold_0/member_{j}/config.json").read_text())["resolved"]["recipe"]["loss"] == loss
    # a member count that contradicts the losses is refused before anything trains
    assert main([*base, "--ensemble", "3", "--ensemble-losses", "l1", "mse", "-o", "run2"]) == 2
    assert "one loss per member" in capsys.readouterr().err
    assert not Path("run2/fold_0").exists()


# -- a tensor target -----------------------------------------------------------------------------------------


def test_cv_command_with_a_tensor_target(tmp_path, monkeypatch):
    """cv --target-shape eps=3x3sym on a user CSV (nested-list cells): per-fold tensor metrics (Frobenius
    error, EwT, component MAE) recomputed from the stored per-row components, every row predicted once."""
    from crystalframer.geometry.tensors import column_names
    from tests.helpers import tensor_table

    monkeypatch.chdir(tmp_path)
    df = tensor_table(10)
    df.to_csv("eps.csv", index=False)
    base = ["cv", "--data", "eps.csv", "--targets", "eps", "--target-shape", "eps=3x3sym", "--n-folds", "2",
            "--fold-seed", "3", "--val-fraction", "0.2", "-o", "run", *TINY_CV]
    assert main(base) == 0
    res = json.loads(Path("run/results.json").read_text())
    cols = column_names("eps", "3x3sym")
    assert (res["target"], res["target_shape"], res["columns"]) == ("eps", "3x3sym", cols)
    assert res["complete"] and res["settings"]["target_shape"] == "3x3sym"
    labels = {r["id"]: np.array(json.loads(r["eps"])).reshape(-1) for r in df.to_dict("records")}
    seen = []
    for k in range(2):
        f = res["folds"][f"fold_{k}"]
        pred, true = np.array(f["predictions"]), np.array(f["true"])
        assert pred.shape == (len(f["ids"]), 9)
        np.testing.assert_allclose(true, [labels[x] for x in f["ids"]])
        err = np.linalg.norm(pred - true, axis=1)
        rel = err / np.linalg.norm(true, axis=1)
        m = f["metrics"]
        assert m["n"] == len(f["ids"])
        assert m["fnorm"] == pytest.approx(err.mean()) and m["rel_fnorm"] == pytest.approx(rel.mean())
        for p in (25, 10, 5):
            assert m[f"ewt{p}"] == pytest.approx(float((rel < p / 100).mean()))
        assert m["mae"] == pytest.approx(np.abs(pred - true).mean(axis=0).mean())
        assert m["components"]["eps[1,2]"]["mae"] == pytest.approx(np.abs(pred[:, 5] - true[:, 5]).mean())
        assert f["n_val"] == 1 and f["val_fnorm"] > 0
        assert np.array(f["members"][0]["predictions"]).shape == pred.shape
        seen += f["ids"]
    assert sorted(seen) == sorted(labels)
    assert [sorted(res["folds"][f"fold_{k}"]["ids"]) for k in range(2)] == \
        [sorted(f"c{i}" for i in f) for f in kfold_test_indices(10, 2, 3)]
    fnorms = [res["folds"][f"fold_{k}"]["metrics"]["fnorm"] for k in range(2)]
    assert res["metrics"]["fnorm_mean"] == pytest.approx(np.mean(fnorms))
    assert res["metrics"]["fnorm_std"] == pytest.approx(np.std(fnorms))
    assert res["metrics"]["pooled"]["n"] == 10
    summary = Path("run/summary.md").read_text()
    assert "‖ΔT‖_F" in summary and "EwT 10 %" in summary and "component MAE" in summary
    # resumed with the plot on: nothing retrained, the parity plot of the components is written
    assert main([*base, "--plots"]) == 0 and Path("run/parity.png").is_file()
    assert json.loads(Path("run/results.json").read_text())["folds"] == res["folds"]


@pytest.mark.parametrize("extra, message", [
    (["--target-shape", "eps=6x6"], r"eps\.csv: column 'eps' of id 'c0' has shape \(3, 3\), expected \(6, 6\)"),
    (["--target-shape", "eps=3x3sym", "--targets", "eps", "gap"], r"scores one target .*\['eps', 'gap'\]"),
    (["--target-shape", "gap=3"], r"target shapes given for \['gap'\], which are not among the targets"),
    (["--target-shape", "eps=3x3sym", "--leaderboard", "board.md"], r"leaderboard .* 3x3sym target 'eps'"),
    (["--target-shape", "eps=4x4"], r"unsupported target shape"),
])
def test_cv_refuses_bad_tensor_requests(tmp_path, monkeypatch, capsys, extra, message):
    from tests.helpers import tensor_table

    monkeypatch.chdir(tmp_path)
    tensor_table(6).to_csv("eps.csv", index=False)
    Path("board.md").write_text("| algorithm | eps |\n|---|---|\n| x | 1.0 |\n")
    rc = main(["cv", "--data", "eps.csv", "--targets", "eps", "--n-folds", "2", "-o", "run", *TINY_CV, *extra])
    assert rc == 2
    assert re.search(message, capsys.readouterr().err)
    assert not Path("run/fold_0").exists()  # refused before any training


def test_cv_refuses_a_shape_the_shared_tensors_do_not_have(shared_data, tmp_path, monkeypatch, capsys):
    if not (shared_data / "mp_dielectric_2017").is_dir():
        pytest.skip(f"{shared_data / 'mp_dielectric_2017'} is absent")
    monkeypatch.chdir(tmp_path)
    rc = main(["cv", "--dataset", "mp_dielectric_2017", "--data-root", str(shared_data), "--targets", "e_electronic",
               "--target-shape", "e_electronic=6x6", "--n-folds", "2", "-o", "run", *TINY_CV])
    assert rc == 2
    assert "no structure has a readable 6x6 label for 'e_electronic'" in capsys.readouterr().err
    assert not Path("run/fold_0").exists()
