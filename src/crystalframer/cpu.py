"""CPU arithmetic settings for training and prediction.

Far periodic images give attention weights, products and gradients below the smallest normal float (1.2e-38
in float32). x86 CPUs handle such *denormal* numbers in microcode, many times slower than normal ones, and
every product and sum they enter slows down with them. Flushing them to zero (their values are invisible next
to the weights that matter) makes a CPU training step 4–9 % faster (``benchmarks/bench_denormals.py``; 14–24 %
before the distance basis stopped producing them, see :func:`crystalframer.nn.basis.underflow_floor`).
``CRYSTALFRAMER_FLUSH_DENORMAL=0`` keeps them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["flush_denormals"]

_depth = 0
_lock = threading.Lock()


@contextmanager
def flush_denormals(enabled: bool | None = None) -> Iterator[bool]:
    """Flush denormal floats to zero on the CPU (``torch.set_flush_denormal``) inside the block.

    The setting belongs to the calling thread (where PyTorch runs CPU forward and backward passes with one
    intra-op thread); on leaving the outermost block it returns to PyTorch's default (off). Yields whether
    flushing is on. ``enabled=None`` reads ``CRYSTALFRAMER_FLUSH_DENORMAL`` (default on).
    """
    global _depth
    if enabled is None:
        enabled = os.environ.get("CRYSTALFRAMER_FLUSH_DENORMAL", "1") != "0"
    if not enabled:
        yield False
        return
    with _lock:
        _depth += 1
        on = torch.set_flush_denormal(True)  # False where the CPU has no such mode
    try:
        yield on
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.set_flush_denormal(False)
