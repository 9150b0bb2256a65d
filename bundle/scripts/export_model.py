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
import tempfile
from pathlib import Path

import torch


def export(checkpoint: str, out: str) -> dict:
    """Write ``{"model", "volume"}`` of ``checkpoint`` to ``out`` (atomically); returns the slim checkpoint."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    missing = {"model", "volume"} - set(ckpt)
    if missing:
        raise ValueError(f"{checkpoint} lacks {sorted(missing)}: not a cunerf-monai training checkpoint.")
    slim = {"model": {k: v.contiguous() for k, v in ckpt["model"].items()}, "volume": ckpt["volume"]}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=Path(out).parent, suffix=".part")
    os.close(fd)
    try:
        torch.save(slim, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return slim


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "models" / "model.pt"))
    args = ap.parse_args()
    export(args.checkpoint, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
