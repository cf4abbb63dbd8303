"""Transforms of structures into model inputs: ECN supercell graphs (:mod:`~crystalframer.data.transforms.ecn`)."""
