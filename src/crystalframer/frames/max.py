"""Max frames (dynamic) and static local frames (Ito et al., "Rethinking the role of frames for SE(3)-invariant
crystal structure modeling", ICLR 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from crystalframer.frames.axes import gather_slots, orthonormal_from_two
from crystalframer.frames.base import FrameInput, FrameMethod, register_frame
from crystalframer.frames.noise import draw_seed
from crystalframer.frames.search import COLLINEAR, LOG_FLOOR, two_axis_search
from crystalframer.frames.ties import two_axis_frame_set


def _two_axis_frame(inp: FrameInput, mode: str, use_qk: bool, literal: bool = False) -> Tensor:
    """e1 = slot maximising s1, r2 = the best non-collinear slot (see :mod:`.search`) → (N, H, 3, 3); the
    published noise in ``mode`` "noise" (drawn as in :meth:`FrameInput.uniform_noise`)."""
    seed = draw_seed() if mode == "noise" and inp.noise != 0 else None
    e1_idx, has1, r2_idx, has2 = two_axis_search(inp.qk if use_qk else None, inp.a, inp.d2, seed, inp.noise,
                                                 inp.candidate, inp.unit, literal)
    return orthonormal_from_two(gather_slots(inp.unit, e1_idx), gather_slots(inp.unit, r2_idx), has2 & has1)


@register_frame
class MaxFrame(FrameMethod):
    """Dynamic max frames (Ito et al. 2025, §3.1): the paper's main method.

    e1 points to the non-self image with the largest attention weight w_ij(n); r2 to the image
    maximising log[w · (1 − |e1·r̂|)] among non-collinear ones (|cos| < 0.9999); Gram–Schmidt and
    e3 = e1 × e2 give a right-handed orthonormal frame. Scores: q·k/√d_h + a(d² + u), with the
    tie-breaking noise u ~ U(−½, ½)·noise in Å² (0: first slot in (j, n) order wins).

    Ties (option ``ties``, :mod:`crystalframer.frames.ties`): ``"average"`` returns the weighted set of every
    tied (e1, r2) choice (per e1, then per e2), ``"noise"`` the published noise, ``"first"`` the slot order;
    ``"auto"`` (default) averages in evaluation, uses the noise in training and the slot order when
    ``frame_noise = 0``.
    """

    name = "max"
    equivariant = True
    cell_invariant = True

    def forward(self, inp: FrameInput) -> Tensor | tuple[Tensor, Tensor]:
        mode = self.tie_mode(inp)
        if mode == "average":
            ad2 = inp.a[:, None, :] * inp.d2[:, :, None]
            return _tie_set(self, inp, inp.qk + ad2, inp.qk.abs() + ad2.abs())
        return _two_axis_frame(inp, mode, use_qk=True)


def _tie_set(method: FrameMethod, inp: FrameInput, s1: Tensor, mag1: Tensor, literal_d2: Tensor | None = None):
    """Average policy: every tied (e1, r2) choice, weighted per e1 then per e2 (see :mod:`..ties`)."""

    def second(s1r, m1r, cos, n, slots):
        lg = torch.log(torch.clamp(1 - cos.abs(), min=LOG_FLOOR))
        if literal_d2 is not None:
            d2 = literal_d2[n[:, None], slots]
            return d2 + lg, d2.abs() + lg.abs()
        return s1r + lg, m1r + lg.abs()

    return two_axis_frame_set(inp.unit, inp.candidate, s1, mag1, second, COLLINEAR, LOG_FLOOR,
                              method.tie_atol, method.tie_rtol, method.tie_cap, bounded=literal_d2 is None)


@register_frame
class StaticFrame(FrameMethod):
    """Static local frames: nearest neighbour and nearest non-collinear neighbour (Ito et al., ICLR 2025).

    The paper's intent (default): max frames without the q·k term, i.e. e1 = nearest non-self image and
    r2 maximising a·d² + log(1 − |cos|) (near and non-collinear). ``literal=True`` reproduces the
    released kernel, whose second score lacks the factor a and so picks the *farthest* admissible image
    in the box (a sign slip, kept only for parity studies). Ties as :class:`MaxFrame` (without q·k, every
    nearest neighbour of any species ties: e.g. 24 frames in fcc, 48 in bcc metals under ``"average"``).
    """

    name = "static"
    equivariant = True
    cell_invariant = True

    def __init__(self, literal: bool = False, **options):
        super().__init__(**options)
        self.literal = literal

    def forward(self, inp: FrameInput) -> Tensor | tuple[Tensor, Tensor]:
        mode = self.tie_mode(inp)
        if mode == "average":
            s1 = inp.a[:, None, :] * inp.d2[:, :, None]
            return _tie_set(self, inp, s1, s1.abs(), inp.d2 if self.literal else None)
        return _two_axis_frame(inp, mode, use_qk=False, literal=self.literal)
