"""Slim a training checkpoint into a shippable model: keep only the network weights and the fitted volume's record.

    python bundle/scripts/export_model.py --checkpoint runs/train/checkpoints/model.pt --out bundle/models/model.pt

How `bundle/models/model.pt` was made (Colin27 degraded by a 2x2x2 box average, default config):

    python benchmarks/quality.py --volumes colin27 --scales 2 --modes 3d --degradations box --out /tmp/q
    python bundle/scripts/export_model.py --checkpoint /tmp/q/colin27_x2_3d_box/fit/checkpoints/model.pt \\
        --out bundle/models/model.pt
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from cunerf_monai.utils import atomic_path


def export(checkpoint: str, out: str) -> dict:
    """Write ``{"model", "volume"}`` of ``checkpoint`` to ``out`` (atomically); returns the slim checkpoint."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    missing = {"model", "volume"} - set(ckpt)
    if missing:
        raise ValueError(f"{checkpoint} lacks {sorted(missing)}: not a cunerf-monai training checkpoint.")
    slim = {"model": {k: v.contiguous() for k, v in ckpt["model"].items()}, "volume": ckpt["volume"]}
    with atomic_path(out) as tmp:
        torch.save(slim, tmp)
    return slim


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "models" / "model.pt"))
    args = ap.parse_args()
    export(args.checkpoint, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
