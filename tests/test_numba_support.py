"""The Numba launcher respects the caller's torch thread settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba", reason="numba is an optional extra (crystalframer[fast])")

SCRIPT = """
import numpy as np, torch
torch.set_num_threads(1)
from numba import njit, prange
from crystalframer.numba_support import run_kernel

@njit(parallel=True)
def add_one(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0

a = np.zeros(64)
run_kernel(add_one, a)
run_kernel(add_one, a)
print(torch.get_num_threads(), a.sum())
"""


def test_first_kernel_keeps_the_callers_thread_count():
    import crystalframer

    src = str(Path(crystalframer.__file__).resolve().parents[1])
    env = {**__import__("os").environ, "PYTHONPATH": src, "NUMBA_NUM_THREADS": "2", "CRYSTALFRAMER_NUMBA": "1"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "128.0"]  # a fresh process: the OpenMP layer starts in this call
