"""The GPU path (issue 5, target 5): the same PyTorch code on a CUDA device, checked against the CPU path.

Skipped where no CUDA device is present (CI and the development machine have none); run
``python -m pytest tests/test_gpu.py`` on a GPU machine. float64 on both devices, so the comparison is tight
(reduction order differs between devices: 1e-9 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crystalframer as cf
from crystalframer.data.batch import collate
from crystalframer.data.structures import to_crystal

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device on this machine; the GPU path is checked where one is")

FRAMES = ["none", "max", "static", "weighted_pca", "pca", "lattice", "spframe_quat"]


def _structures(real_low_symmetry, small_cells):
    from pymatgen.core import Lattice, Structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return list(real_low_symmetry) + list(small_cells) + [nacl]  # NaCl: tied frames (tie averaging in eval)


@pytest.mark.parametrize("frame", FRAMES)
def test_cuda_predictions_equal_cpu_predictions(frame, real_low_symmetry, small_cells):
    structs = _structures(real_low_symmetry, small_cells)
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame, num_layers=2).double().eval()
    cpu = m.predict(structs)
    gpu = m.to("cuda").predict(structs)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("frame", ["none", "max", "spframe_quat"])
def test_cuda_gradients_equal_cpu_gradients(frame, real_low_symmetry, small_cells):
    structs = _structures(real_low_symmetry, small_cells)[:-1]
    torch.manual_seed(0)
    m = cf.CrystalFramer(frame=frame, num_layers=2, frame_noise=0.0).double().train()
    batch = collate([to_crystal(s) for s in structs]).to("cpu", torch.float64)
    grads = []
    for dev in ("cpu", "cuda"):
        m.to(dev).zero_grad(set_to_none=True)
        m(batch.to(dev)).square().mean().backward()
        grads.append({n: p.grad.detach().cpu() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-8, atol=1e-12, msg=n)
