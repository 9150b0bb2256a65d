"""Rendering speed and peak memory: a fitted model rendered to NIfTI at a scale or an explicit output shape.

    python benchmarks/render.py                                  # the shipped model, x2 (362 x 434 x 362)
    python benchmarks/render.py --shape 512 512 256              # peak memory of a 512 x 512 x 256 output
    python benchmarks/render.py --checkpoint runs/x/checkpoints/model.pt --chunk_size 65536

Each case runs in a fresh process so the peak resident memory (``ru_maxrss``) belongs to it alone. Results are
appended to ``benchmarks/results/render.md`` (and ``.json``) with the machine line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _one(args: argparse.Namespace) -> dict:
    """Render once in this process and report wall time and peak RSS."""
    from monai.bundle import ConfigWorkflow

    from cunerf_monai.evaluation.selfeval import machine_description
    from cunerf_monai.geometry import grid_for_scale, grid_for_shape
    from cunerf_monai.checkpoints import load_checkpoint
    from cunerf_monai.workflows import render_volume

    overrides = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    if args.chunk_size:
        overrides["chunk_size"] = args.chunk_size
    wf = ConfigWorkflow(config_file=str(ROOT / "bundle" / "configs" / "inference.json"), workflow_type="inference",
                        progress=False, **overrides)
    wf.initialize()
    network, inferer = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("inferer")
    record = load_checkpoint(wf.parser.get_parsed_content("checkpoint"), network)
    grid = grid_for_shape(record.geometry, args.shape) if args.shape else grid_for_scale(record.geometry, args.scale)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        values = inferer.render_grid(network, record.geometry, grid)
        render_s = time.perf_counter() - start
        render_volume(network, inferer, record, Path(tmp) / "sr.nii.gz", grid) if args.write else None
        total_s = time.perf_counter() - start
    del values
    return {
        "output_shape": list(grid.shape),
        "voxels": grid.num_voxels,
        "chunk_size": inferer.chunk_size,
        "points_per_voxel": inferer.points_per_target(training=False),
        "render_seconds": round(render_s, 1),
        "render_and_write_seconds": round(total_s, 1) if args.write else None,
        "voxels_per_second": round(grid.num_voxels / render_s),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
        "machine": machine_description(),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="checkpoint (default: bundle/models/model.pt)")
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--shape", type=int, nargs=3, default=None, help="explicit output shape instead of --scale")
    ap.add_argument("--chunk_size", type=int, default=None, help="targets per chunk (default: the config's)")
    ap.add_argument("--write", action="store_true", help="also write the NIfTI (included in the second time)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "render.md"))
    args = ap.parse_args(argv)
    if args.inner:
        print("RESULT " + json.dumps(_one(args)))
        return
    cmd = [sys.executable, __file__, "--inner", "--scale", str(args.scale)]
    for flag, val in (("--checkpoint", args.checkpoint), ("--chunk_size", args.chunk_size)):
        if val:
            cmd += [flag, str(val)]
    if args.shape:
        cmd += ["--shape", *map(str, args.shape)]
    if args.write:
        cmd.append("--write")
    res = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not line:
        sys.exit(f"render benchmark failed:\n{res.stderr[-3000:]}")
    result = json.loads(line[-1][7:])
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else []
    runs = [r for r in runs if (r["output_shape"], r["chunk_size"]) != (result["output_shape"], result["chunk_size"])]
    runs.append(result)
    out.with_suffix(".json").write_text(json.dumps(runs, indent=2))
    lines = [f"Machine: {result['machine']}", "",
             "| output shape | voxels | points/voxel | chunk size | render s | voxels/s | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {' × '.join(map(str, r['output_shape']))} | {r['voxels']:,} | {r['points_per_voxel']} | "
                     f"{r['chunk_size']:,} | {r['render_seconds']} | {r['voxels_per_second']:,} | {r['peak_rss_mb']:,} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
