"""Real two-process DDP on the CPU (gloo) through the command line: same result as one process.

Both runs use the same global batch (8): the 2-rank run gives each rank 4 structures of every global batch,
so its averaged gradients, and therefore its weights, must match the 1-rank run up to float reduction
order. If both ranks read the same data, or each read a full batch, the step count or the weights differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import crystalframer
from crystalframer.checkpoint import load_checkpoint
from tests.training.helpers import write_perov_csv

FLAGS = ["--targets", "heat_all", "--frame", "max", "--preset", "quick", "--epochs", "2", "--swa-epochs", "1",
         "--batch-size", "8", "--num-layers", "1", "--model-dim", "32", "--num-heads", "4", "--ff-dim", "64",
         "--cutoff", "4.0", "--model-arg", "head_dims=[32]", "--model-arg", "dist_bins=16", "--model-arg",
         "angle_bins=16", "--model-arg", "frame_noise=0", "--accelerator", "cpu", "--no-progress",
         "--no-tensorboard", "--no-plots"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    src = str(Path(crystalframer.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "CRYSTALFRAMER_RUN_DIR"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "crystalframer.cli", "train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_ranks_match_one_rank(shared_data, tmp_path):
    data = write_perov_csv(shared_data, tmp_path / "perov.csv", n_train=16, n_val=5, n_test=4)
    two = _run(["--data", str(data), *FLAGS, "--devices", "2", "--strategy", "ddp", "-o", "ddp2"], tmp_path)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "Starting with 2 processes" in two.stdout + two.stderr
    one = _run(["--data", str(data), *FLAGS, "--devices", "1", "-o", "ddp1"], tmp_path)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]

    m2 = json.loads((tmp_path / "ddp2" / "metrics.json").read_text())
    m1 = json.loads((tmp_path / "ddp1" / "metrics.json").read_text())
    assert m2["global_steps"] == m1["global_steps"] == 4  # 16 structures / global batch 8 × 2 epochs
    assert m2["swa_averaged_steps"] == m1["swa_averaged_steps"] == 2
    for name in ("checkpoints/last.pt", "model.pt"):
        a = load_checkpoint(tmp_path / "ddp2" / name)["state_dict"]
        b = load_checkpoint(tmp_path / "ddp1" / name)["state_dict"]
        for k in b:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (name, k)
    # it trained: the last weights moved away from the SWA average of the last epoch's two steps
    last = load_checkpoint(tmp_path / "ddp2" / "checkpoints" / "last.pt")["state_dict"]
    swa = load_checkpoint(tmp_path / "ddp2" / "model.pt")["state_dict"]
    assert any(not torch.equal(last[k], swa[k]) for k in last if k.endswith("weight"))
    # validation was sharded without duplicates (5 structures over 2 ranks) and summed exactly
    h2 = [l.split(",") for l in (tmp_path / "ddp2" / "history.csv").read_text().splitlines()]
    h1 = [l.split(",") for l in (tmp_path / "ddp1" / "history.csv").read_text().splitlines()]
    col = h1[0].index("val_loss")
    assert [float(r[col]) for r in h2[1:]] == pytest.approx([float(r[col]) for r in h1[1:]], rel=1e-5)
    for which in ("swa", "best"):
        assert m2[which]["test"]["heat_all"]["mae"] == pytest.approx(m1[which]["test"]["heat_all"]["mae"], rel=1e-4)
