"""Frame methods, one registry: ``build_frame(name, **options)``.

Registered: ``max`` (dynamic max frames), ``static`` (static local frames), ``weighted_pca`` (dynamic
weighted PCA, paper definition), ``pca`` (global PCA), ``lattice`` (lattice frames); ``none`` gives
Crystalformer (no angular features).
"""

from crystalframer.frames import lattice, max, pca, spframe  # noqa: F401  (registration)
from crystalframer.frames.base import FRAMES, FrameInput, FrameMethod, build_frame, register_frame

__all__ = ["FRAMES", "FrameInput", "FrameMethod", "build_frame", "register_frame"]
