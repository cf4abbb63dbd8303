"""crystalframer: CrystalFramer / Crystalformer crystal-property transformers (and SPFrame, ECN) in pure PyTorch."""

__version__ = "0.1.0"

from crystalframer.data.structures import Crystal, InvalidStructureError, to_crystal  # noqa: E402
from crystalframer.models import ECN, CrystalFramer  # noqa: E402
from crystalframer.checkpoint import load, save_model  # noqa: E402
from crystalframer.official import load_official_checkpoint  # noqa: E402

__all__ = ["Crystal", "CrystalFramer", "ECN", "InvalidStructureError", "load", "load_official_checkpoint", "save_model", "to_crystal",
           "__version__"]
