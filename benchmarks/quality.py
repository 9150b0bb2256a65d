"""Quality benchmark: self-evaluation of the fitted field against the aligned interpolation baselines.

For every combination of volume × scale × mode (3D / slice axis) × degradation (nearest / box) it runs
:func:`cunerf_monai.evaluation.selfeval.self_evaluate` (HR → simulated LR → fit on the LR only → render on
the HR grid → PSNR/SSIM) and writes one combined Markdown table with the margin over the best aligned
baseline, the fit budget and the machine line.

The forward model of the fit is matched to the degradation (``--forward-model matched``, the default):

* ``box``: every LR voxel is rendered as the mean of the field over its footprint along the degraded axes
  (a point along the others), with fixed midpoint samples on a ``factors`` sub-grid (for a ×k box these are
  exactly the HR voxel centres inside the LR voxel: ``k³`` in 3D, ``k`` along the slice axis); HR voxels are
  rendered at their centres;
* ``nearest``: every LR voxel is a point (1 sample at its centre); HR voxels at their centres.

``--forward-model config`` keeps whatever the config files say.

Examples::

    python benchmarks/quality.py --volumes colin27 --scales 2 --modes 3d --degradations box --update-docs
    python benchmarks/quality.py --overlay bundle/configs/fields/hashgrid.json --iterations 300 --suffix _hashgrid
    python benchmarks/quality.py --docs-only   # rebuild quality.md and the docs table from the stored runs

Every run keeps ``<name>.json`` (its row, with budget and machine), ``<name>.metrics.json`` and ``<name>.png`` in
``--out``; ``quality.md`` and the docs table list every stored run (overlays named).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_paths import data_path, portable, relative_to_data  # noqa: E402  (the shared data folder, said once)

DEFAULT_VOLUMES = {"colin27": "colin27/ch2.nii.gz", "chest_ct": "chest_ct/dicom"}  # relative to the data folder
# slice axis of each volume (the thick / through-plane axis), for the slice-axis ("volumetric") mode
SLICE_AXIS = {"colin27": 2, "chest_ct": 2}
DEFAULT_OVERLAY = ""  # the bundle's default train.json
POINTS_PER_ITERATION = 262144  # field evaluations per training step (batch = this / samples per cube)


def matched_overrides(degradation: str, factors: tuple[int, int, int]) -> dict:
    """Config overrides that make the fit's forward model the degradation's (see the module docstring).

    ``box``: the footprint is a box of the LR voxel along the degraded axes and a point along the others
    (``forward_model`` per axis), sampled at the midpoints of a ``factors`` sub-grid (``grid_counts``: ``k`` samples
    for a slice-axis ×k box, ``k³`` for a 3D one: exactly the HR voxel centres); ``nearest``: a point (one centre
    sample). The grid field keeps its cubic B-spline kernel. HR voxels are read at their centres.
    """
    if degradation == "box":
        profiles = ["box" if f > 1 else "point" for f in factors]
        counts = [int(f) for f in factors]
    else:
        profiles, counts = ["point"] * 3, [1, 1, 1]
    samples = counts[0] * counts[1] * counts[2]
    return {
        "forward_model": profiles,
        "kernel": "bspline",
        "num_coarse": samples,
        "grid_counts": counts,
        "num_fine": 0,
        "num_coarse_eval": 1,
        "num_fine_eval": 0,
        "batch_size": max(256, POINTS_PER_ITERATION // samples),
    }


def run(args: argparse.Namespace) -> Path:
    from cunerf_monai.evaluation.selfeval import self_evaluate
    from cunerf_monai.io import load_normalized
    from cunerf_monai.transforms.array import degradation_factors

    torch.set_num_threads(args.threads)
    out_root, work_root = Path(args.out), Path(args.work)
    out_root.mkdir(parents=True, exist_ok=True)
    paths = {"colin27": args.colin27, "chest_ct": args.chest_ct}
    config_files = [str(ROOT / "bundle" / "configs" / "train.json")]
    if args.overlay:
        config_files.append(str(Path(args.overlay).resolve()))
    shapes: dict[str, tuple[int, ...]] = {}  # HR shapes, read once per volume for --passes
    for volume in args.volumes:
        for scale in args.scales:
            for mode in args.modes:
                for degradation in args.degradations:
                    slice_axis = SLICE_AXIS[volume] if mode == "slice" else None
                    factors = degradation_factors(scale, slice_axis)
                    blind = args.forward_model == "blind"
                    name = f"{volume}_x{scale}_{mode}_{degradation}{args.suffix}{'_blind' if blind else ''}"
                    overrides: dict = {}
                    if args.forward_model == "matched":
                        overrides.update(matched_overrides(degradation, factors))
                    iterations = args.iterations
                    if iterations is None and args.passes is not None:
                        if volume not in shapes:
                            shapes[volume] = tuple(load_normalized(paths[volume]).shape[1:])
                        iterations = passes_to_iterations(args.passes, shapes[volume], factors, overrides)
                    if iterations is not None:
                        overrides["num_iterations"] = iterations
                        overrides["epoch_length"] = max(1, iterations // max(1, args.validations))
                    overrides.update(json.loads(args.overrides) if args.overrides else {})
                    logging.info(f"=== {name}: overrides {overrides}")
                    start = time.perf_counter()
                    m = self_evaluate(
                        paths[volume],
                        work_root / name,
                        scale=scale,
                        slice_axis=slice_axis,
                        degradation=degradation,
                        overrides=overrides,
                        config_files=config_files,
                        save_volumes=args.save_volumes,
                    )
                    row = result_row(name, volume, degradation, m, time.perf_counter() - start)
                    row["configs"] = [Path(c).name for c in config_files]
                    row["overrides"] = overrides
                    row["forward_model"] = "blind" if blind else args.forward_model
                    m["input"] = relative_to_data(m["input"])
                    store_run(out_root, work_root / name, row, m)
                    write_table(out_root)
                    if args.update_docs:
                        update_docs(out_root)
    return out_root / "quality.md"


def passes_to_iterations(passes: float, shape: tuple[int, ...], factors: tuple[int, int, int], overrides: dict) -> int:
    """Iterations for the fit to draw ``passes`` × (number of LR voxels) targets, for an HR volume of ``shape``
    degraded by ``factors``: a budget that scales with the volume, so a 512×512×64 CT gets as many looks at each
    voxel as a 181×217×181 MRI."""
    import math

    voxels = math.prod(int(s) // int(f) for s, f in zip(shape, factors))  # the decimated shape
    batch = int(overrides.get("batch_size", 32768))
    return max(1, math.ceil(passes * voxels / batch))


def result_row(name: str, volume: str, degradation: str, m: dict, total: float) -> dict:
    """One table row from a self-evaluation's metrics."""
    res, best = m["results"], m["best_aligned_baseline"]
    return {
        "name": name,
        "volume": volume,
        "factors": m["factors"],
        "degradation": degradation,
        "ours_psnr": res["cunerf"]["psnr"],
        "ours_ssim": res["cunerf"]["ssim"],
        "best": best,
        "best_psnr": res[best]["psnr"],
        "best_ssim": res[best]["ssim"],
        "margin_psnr": m["margin_psnr_db"],
        "margin_ssim": m["margin_ssim"],
        "misaligned_psnr": res.get("bicubic_misaligned", {}).get("psnr"),
        "coarse_psnr": res.get("cunerf_coarse", {}).get("psnr"),  # a model with a fine pass: its coarse render
        "budget": m["budget"],
        "total_seconds": round(total, 1),
        "fitted_forward_model": m.get("forward_model"),
        "prior": m.get("prior"),  # the thick-slice prior's settings, grid, times (None: the field alone)
        "proposal_psnr": res.get("prior_proposal", {}).get("psnr"),
        "data_consistency_psnr": m.get("data_consistency_psnr_db"),
        "machine": m.get("machine"),
    }


def store_run(out_root: Path, work: Path, row: dict, metrics: dict) -> None:
    """Keep a run's result files in the results folder: ``<name>.json`` (the row), ``<name>.metrics.json`` and
    ``<name>.png`` (the comparison figure)."""
    name = row["name"]
    (out_root / f"{name}.json").write_text(json.dumps([portable(row)], indent=2))
    (out_root / f"{name}.metrics.json").write_text(json.dumps(portable(metrics), indent=2))
    if (work / "figure.png").exists():
        shutil.copyfile(work / "figure.png", out_root / f"{name}.png")


def stored_rows(out_root: Path) -> list[dict]:
    """Every stored run's row, ordered by volume, mode, scale and degradation."""
    rows = []
    for f in sorted(out_root.glob("*.json")):
        if f.name.endswith(".metrics.json") or f.name == "quality.json":
            continue
        rows.extend(json.loads(f.read_text()))

    def key(r: dict) -> tuple:
        slice_mode = len(set(r["factors"])) > 1
        return (r["volume"], slice_mode, max(r["factors"]), r["degradation"], r["name"])

    return sorted(rows, key=key)


def write_table(out_root: Path) -> None:
    """``quality.md`` / ``quality.json``: every stored run, with its budget."""
    from cunerf_monai.evaluation.selfeval import machine_description

    rows = stored_rows(out_root)
    lines = [
        "# Quality: fitted field vs the best aligned baseline",
        "",
        f"Machine: {machine_description()}",
        "",
        "| run | factors | degradation | ours PSNR | ours SSIM | best baseline | its PSNR | its SSIM | ΔPSNR (dB) | ΔSSIM "
        "| iterations | batch | fit (s) | render (s) | points/s |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = r["budget"]
        lines.append(
            f"| {r['name']} | {'x'.join(str(f) for f in r['factors'])} | {r['degradation']} | {r['ours_psnr']:.2f} "
            f"| {r['ours_ssim']:.4f} | {r['best']} | {r['best_psnr']:.2f} | {r['best_ssim']:.4f} "
            f"| {r['margin_psnr']:+.2f} | {r['margin_ssim']:+.4f} | {b['iterations']} | {b['batch_size']} "
            f"| {b['fit_seconds']:.0f} | {b['render_seconds']:.0f} | {b['train_points_per_second']:,} |"
        )
    (out_root / "quality.md").write_text("\n".join(lines) + "\n")
    (out_root / "quality.json").write_text(json.dumps(rows, indent=2))


BASELINE_NAMES = {"bspline": "B-spline", "keys": "Keys cubic", "trilinear": "trilinear", "nearest": "nearest"}


def _model_note(row: dict) -> str:
    """The forward model a run used, short: per-axis profiles and the kernel (``point·point·box, bspline``)."""
    fm = row.get("fitted_forward_model")
    if not fm:
        return "—"
    return f"{'·'.join(fm['profiles'])}, {fm['kernel']}"


def docs_table(out_root: Path) -> str:
    """The Performance table of ``bundle/docs/README.md``, from the stored runs: per row the fit told the degradation
    (matched) and the shipped defaults told nothing (blind, the ``*_blind`` runs), against the best aligned baseline;
    overlays other than the default ``train.json`` are named in the first column."""
    lines = [
        "| volume | degradation | matched PSNR / SSIM | blind PSNR / SSIM (forward model chosen) | best aligned baseline "
        "| ΔPSNR matched | ΔPSNR blind | ΔSSIM matched | ΔSSIM blind | misaligned bicubic "
        "| budget matched (iterations × points, fit, render) |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    rows = stored_rows(out_root)
    blind = {r["name"][: -len("_blind")]: r for r in rows if r["name"].endswith("_blind")}
    rows = [r for r in rows if not r["name"].endswith("_blind")]
    default = [r for r in rows if r.get("configs", ["train.json"]) == ["train.json"]]
    for r in default + [r for r in rows if r not in default]:
        overlays = [c for c in r.get("configs", ["train.json"]) if c != "train.json"]
        suffix = r["name"].split(f"_{r['degradation']}", 1)[-1].lstrip("_").replace("_", " ")
        note = ", ".join(overlays) if overlays else suffix
        volume = r["volume"] + (f" ({note})" if note else "")
        f, b = r["factors"], r["budget"]
        where = f"×{max(f)} 3D" if len(set(f)) == 1 else f"×{max(f)} slice axis {f.index(max(f))}"
        mis = f"{r['misaligned_psnr']:.2f}" if r.get("misaligned_psnr") is not None else "—"
        bl = blind.get(r["name"])
        if bl is not None:
            blind_cells = (f"{bl['ours_psnr']:.2f} / {bl['ours_ssim']:.4f} ({_model_note(bl)})", f"{bl['margin_psnr']:+.2f}",
                           f"{bl['margin_ssim']:+.4f}")
        else:
            blind_cells = ("—", "—", "—")
        coarse = f" (coarse pass {r['coarse_psnr']:.2f})" if r.get("coarse_psnr") is not None else ""
        lines.append(
            f"| {volume} | {r['degradation']} {where} | {r['ours_psnr']:.2f} / {r['ours_ssim']:.4f}{coarse} | {blind_cells[0]} "
            f"| {BASELINE_NAMES.get(r['best'], r['best'])} {r['best_psnr']:.2f} / {r['best_ssim']:.4f} "
            f"| {r['margin_psnr']:+.2f} | {blind_cells[1]} | {r['margin_ssim']:+.4f} | {blind_cells[2]} | {mis} "
            f"| {b['iterations']} × {b['points_per_iteration']:,}, {b['fit_seconds']:.0f} s, {b['render_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def update_docs(out_root: Path) -> None:
    """Replace the block between ``<!-- quality:begin -->`` and ``<!-- quality:end -->`` in the bundle docs."""
    from docs_block import DOCS, replace_block

    replace_block(DOCS, "quality", docs_table(out_root))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", nargs="+", default=["colin27", "chest_ct"], choices=sorted(DEFAULT_VOLUMES))
    p.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    p.add_argument("--modes", nargs="+", default=["3d", "slice"], choices=["3d", "slice"])
    p.add_argument("--degradations", nargs="+", default=["nearest", "box"], choices=["nearest", "box"])
    p.add_argument("--overlay", default=str(DEFAULT_OVERLAY), help="config overlay on train.json ('' for none)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations (default: the config's)")
    p.add_argument("--passes", type=float, default=None,
                   help="budget in passes over the LR voxels (iterations = passes × voxels / batch), instead of the "
                        "config's iterations")
    p.add_argument("--validations", type=int, default=2, help="validation rounds during a fit (with --iterations)")
    p.add_argument("--forward-model", choices=["matched", "blind", "config"], default="matched",
                   help="matched: the fit is told the degradation; blind: the shipped defaults, told nothing (runs are "
                        "named *_blind); config: whatever the config files say")
    p.add_argument("--overrides", default=None, help="extra config overrides as JSON, applied last")
    p.add_argument("--colin27", default=data_path(DEFAULT_VOLUMES["colin27"]), help="Colin27 NIfTI path")
    p.add_argument("--chest-ct", dest="chest_ct", default=data_path(DEFAULT_VOLUMES["chest_ct"]),
                   help="chest CT DICOM folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-volumes", action="store_true", help="also write lr/sr NIfTI volumes per run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality"), help="results folder")
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"), help="working folder (fits, volumes)")
    p.add_argument("--suffix", default="", help="appended to run names (e.g. '_hashgrid' for an overlay)")
    p.add_argument("--update-docs", dest="update_docs", action="store_true",
                   help="rewrite the Performance table of bundle/docs/README.md from the stored runs")
    p.add_argument("--docs-only", dest="docs_only", action="store_true",
                   help="only rewrite quality.md and the docs table from the stored runs (no fitting)")
    return p.parse_args(argv)


def redraw(args: argparse.Namespace) -> None:
    """Rewrite ``quality.md`` and the docs table from the stored runs."""
    write_table(Path(args.out))
    update_docs(Path(args.out))


if __name__ == "__main__":
    from docs_block import run_main

    run_main(parse_args, run, redraw, redraw_flag="docs_only")
