"""crystalframer: CrystalFramer / Crystalformer crystal-property transformers (and SPFrame, ECN) in pure PyTorch.

The names below load on first use (PEP 562), so ``import crystalframer`` is cheap: it imports neither
torch nor any submodule until a name such as ``crystalframer.CrystalFramer`` is looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crystalframer._lazy import lazy_exports
from crystalframer._version import __version__

if TYPE_CHECKING:  # static imports for type checkers and IDEs; at run time the names load lazily
    from crystalframer.checkpoint import load, save_model
    from crystalframer.data.structures import Crystal, InvalidStructureError, to_crystal
    from crystalframer.models import ECN, CrystalFramer
    from crystalframer.official import load_official_checkpoint

# public name -> defining module
_EXPORTS: dict[str, str] = {
    "Crystal": "crystalframer.data.structures",
    "InvalidStructureError": "crystalframer.data.structures",
    "to_crystal": "crystalframer.data.structures",
    "CrystalFramer": "crystalframer.models",
    "ECN": "crystalframer.models",
    "load": "crystalframer.checkpoint",
    "save_model": "crystalframer.checkpoint",
    "load_official_checkpoint": "crystalframer.official",
}
# subpackages reachable as attributes (``crystalframer.training.train``) without an explicit import
_SUBMODULES = frozenset({"atomic", "checkpoint", "cli", "data", "frames", "geometry", "models", "nn",
                         "numba_support", "official", "testing", "training"})

__all__ = ["Crystal", "CrystalFramer", "ECN", "InvalidStructureError", "load", "load_official_checkpoint",
           "save_model", "to_crystal", "__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
