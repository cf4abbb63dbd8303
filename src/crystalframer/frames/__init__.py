"""Frame methods: pure geometry (tensors in, axes out), one registry: ``build_frame(name, **options)``.

Built-in names: ``max`` (dynamic max frames), ``static`` (static local frames), ``weighted_pca`` (dynamic
weighted PCA, paper definition), ``pca`` (global PCA), ``lattice`` (lattice frames), and the learned SPFrame
predictors ``spframe_quat``, ``spframe_gs``, ``spframe_global``, ``equiv_gs_local`` (defined in
:mod:`crystalframer.nn.frame_predictors`, imported on first use); ``none`` gives Crystalformer (no angular
features). A ``"package.module:Class"`` name builds a plugin :class:`FrameMethod` subclass.
"""

from crystalframer.frames.base import (FRAMES, FrameInput, FrameMethod, build_frame, load_frame_class,
                                       register_frame)

__all__ = ["FRAMES", "FrameInput", "FrameMethod", "build_frame", "load_frame_class", "register_frame"]
