"""Optional Numba CPU kernels: availability, the on/off switch and a thread-safe launcher.

Numba comes with the ``fast`` extra (``pip install "crystalframer[fast]"``). Every kernel has a PyTorch
counterpart that serves other devices, tensors that need gradients the kernel does not give, and installs
without Numba; the tests check each kernel against it. ``CRYSTALFRAMER_NUMBA=0`` forces PyTorch.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch
from torch import Tensor

try:  # optional dependency
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None
    njit = prange = None

_LOCK = threading.Lock()  # numba's workqueue threading layer must not be entered from two threads at once


def numba_enabled() -> bool:
    """Whether Numba kernels serve CPU tensors (installed and not disabled by CRYSTALFRAMER_NUMBA=0)."""
    return numba is not None and os.environ.get("CRYSTALFRAMER_NUMBA", "1") != "0"


def use_numba(x: Tensor) -> bool:
    """Whether the Numba kernels run for tensors like ``x`` (CPU, float32 or float64)."""
    return numba_enabled() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def np_scalar(value: float, dtype: torch.dtype):
    """``value`` in the numpy type of ``dtype``: kernels get scalars in their arrays' precision, since Numba
    promotes float32 op Python float to float64."""
    return (np.float32 if dtype == torch.float32 else np.float64)(value)


def run_kernel(kernel, *args) -> None:
    """Run a parallel kernel on torch's thread count, leaving that count as the caller set it.

    Numba's OpenMP threading layer sets the process's OpenMP thread count when it starts, which torch
    reads back as its own (1 would become the core count for the rest of the process, oversubscribing
    shared nodes); the caller's setting is restored after every launch.
    """
    with _LOCK:
        threads = torch.get_num_threads()
        try:
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
            kernel(*args)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
