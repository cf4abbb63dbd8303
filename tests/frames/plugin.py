"""A frame method outside the package, used by the registry tests through its "module:Class" path."""

from __future__ import annotations

from torch import Tensor

from crystalframer.frames.base import FrameInput, FrameMethod
from crystalframer.frames.global_frames import qr_frame


class QRLatticeFrame(FrameMethod):
    """One frame per crystal: the QR frame of its lattice (l1 along e1, l2 in the (e1, e2) plane)."""

    name = "qr_lattice_plugin"
    equivariant = True
    per_structure = True

    def forward(self, inp: FrameInput) -> Tensor:
        H = inp.a.shape[1]
        return qr_frame(inp.lattice)[inp.batch][:, None].expand(-1, H, -1, -1)
