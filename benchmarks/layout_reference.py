"""Reference outputs for the layout parity test: ``python benchmarks/layout_reference.py``.

Builds one small model per frame method (every name in the frame registry, plus ``none``), one ECN and one
tensor-output model, seeded, and stores their weights and their eval-mode outputs on
``../shared/bench/batch48.json`` (48 MP structures, 529 atoms) in ``tests/golden/layout_batch48.pt``.
``tests/test_layout.py`` reloads the weights into models built by the current code and requires the outputs
to be bit-identical: moving code between modules must not change a single float. Regenerate only when a
change of outputs is intended, and say so in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("CRYSTALFRAMER_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "tests" / "golden" / "layout_batch48.pt"
THREADS = 2

SMALL = dict(num_layers=2, model_dim=32, num_heads=4, ff_dim=64, head_dims=(32,))


def configs() -> dict[str, tuple[str, dict]]:
    """name -> (model class name, constructor arguments)."""
    from crystalframer.frames import FRAMES

    out = {f"frame:{name}": ("CrystalFramer", dict(SMALL, frame=name)) for name in ["none", *sorted(FRAMES)]}
    out["tensor:max"] = ("CrystalFramer", dict(SMALL, frame="max", n_targets=2, target_names=["eps", "g"],
                                                target_shapes=[(3, 3), ()]))
    out["ecn:s8"] = ("ECN", dict(width=16, edge_dim=8, num_layers=2, num_rbf=8))
    return out


def structures() -> list[dict]:
    return json.loads((SHARED / "bench" / "batch48.json").read_text())


def build(kind: str, kwargs: dict):
    import crystalframer as cf

    return getattr(cf, kind)(**kwargs)


def outputs(model, items: list[dict]) -> torch.Tensor:
    """Eval-mode forward on the whole batch, normalised scale, (B, n_outputs) float32."""
    from crystalframer.data.structures import to_crystal

    model.eval()
    batch = model.collate([to_crystal(o) for o in items])
    with torch.no_grad():
        return model(batch).detach().clone()


def main() -> None:
    torch.set_num_threads(THREADS)
    items = structures()
    ref = {"threads": THREADS, "models": {}}
    for name, (kind, kwargs) in configs().items():
        torch.manual_seed(0)
        model = build(kind, kwargs)
        y = outputs(model, items)
        ref["models"][name] = {"kind": kind, "config": json.dumps(model.config), "state": model.state_dict(),
                               "outputs": y}
        print(f"{name:24s} {tuple(y.shape)} {float(y.abs().sum()):.6f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
