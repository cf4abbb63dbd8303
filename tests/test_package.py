"""The top-level package: lazy exports keep ``import crystalframer`` cheap, and every public name resolves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Runs in a fresh interpreter: what does a bare import load, and does each public name still resolve?
SCRIPT = r"""
import json, sys
import crystalframer as cf
import crystalframer.training as tr
loaded = sorted(m for m in sys.modules if m == "crystalframer" or m.startswith("crystalframer."))
torch_loaded = "torch" in sys.modules
version = cf.__version__
names = {n: type(getattr(cf, n)).__name__ for n in cf.__all__}
train_names = {n: type(getattr(tr, n)).__name__ for n in tr.__all__}
print(json.dumps({"loaded": loaded, "torch": torch_loaded, "version": version, "names": names,
                  "train_names": train_names, "dir": dir(cf), "sub": cf.frames.__name__}))
"""


@pytest.fixture(scope="module")
def fresh():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_import_loads_no_submodule_and_no_torch(fresh):
    # the version module and the (lazy) training package only: no network, reader or torch import
    assert fresh["loaded"] == ["crystalframer", "crystalframer._lazy", "crystalframer._version",
                               "crystalframer.training"]
    assert fresh["torch"] is False


def test_version_is_the_distribution_version(fresh):
    from crystalframer.checkpoint import library_version

    assert fresh["version"] == library_version()
    text = (Path(SRC).parent / "pyproject.toml").read_text()
    assert 'version = {attr = "crystalframer._version.__version__"}' in text


def test_every_public_name_resolves_lazily(fresh):
    assert fresh["names"]["CrystalFramer"] == "type" and fresh["names"]["load"] == "function"
    assert fresh["names"]["__version__"] == "str"
    assert set(fresh["names"]) == {"Crystal", "CrystalFramer", "ECN", "InvalidStructureError", "load",
                                   "load_official_checkpoint", "save_model", "to_crystal", "__version__"}
    assert fresh["train_names"]["train"] == "function" and fresh["train_names"]["TrainConfig"] == "type"
    assert {"CrystalFramer", "load", "training", "testing"} <= set(fresh["dir"])
    assert fresh["sub"] == "crystalframer.frames"


def test_lazy_names_are_the_defining_objects():
    import crystalframer as cf
    import crystalframer.training as tr
    from crystalframer.checkpoint import load
    from crystalframer.models import CrystalFramer
    from crystalframer.training.trainer import train

    assert cf.CrystalFramer is CrystalFramer and cf.load is load and tr.train is train
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        cf.nonexistent  # noqa: B018
    with pytest.raises(AttributeError, match="crystalframer.training"):
        tr.nonexistent  # noqa: B018
