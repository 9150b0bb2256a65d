"""What the blind forward model can and cannot tell, measured in seconds with the exact fixed point of the grid fit.

The default grid field fitted through a separable forward model (a per-axis footprint on the LR grid) converges to
``v = ⊗_a M_a⁻¹ y`` (``M_a``: the footprint means of the field's interpolant along axis ``a``), and renders the HR
grid as ``⊗_a W_a v`` (``W_a``: the interpolant at the HR positions). This script applies those small per-axis
matrices directly, so every candidate forward model is scored on every benchmark row in seconds, without training:

* ``auto``: what :func:`cunerf_monai.forward_model.estimate_forward_model` chooses for the LR volume (told nothing);
* ``box 1`` / ``point``: every degraded axis a box of one LR voxel / every axis a point (B-spline kernel), the
  matched models of the box and nearest rows;
* ``isotropic box w``: every axis a box of ``w`` LR voxels, for the isotropic (3D) rows: no single width serves
  both point-sampled and box-averaged volumes;
* the self-consistency statistic of re-degrading the LR by ×2 with each candidate and reconstructing it (box minus
  point, dB), which does not separate box-averaged from point-decimated 3D volumes;
* the spectral fall-off of the isotropic rows (:func:`spectral_falloff`): how much faster the LR's power falls from
  the mid to the top band than a power law from the low to the mid band predicts. A box footprint steepens it, but
  the anatomy sets it more: no one threshold separates both volumes' box rows from their point rows.

Numbers are PSNRs of the whole HR volume minus the best aligned baseline's (the quality benchmark's headline), so the
table reads like the Performance table. The trained fits of ``benchmarks/quality.py`` land within a few hundredths
of a dB of these fixed points (its ``colin27_x2_slice_box``: 43.94 dB trained, 43.94 dB here).

Usage::

    python benchmarks/forward_model_study.py            # writes benchmarks/results/forward_model_study.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
OUT = ROOT / "benchmarks" / "results"


def axis_operator(n: int, coords: np.ndarray, kernel: str, profile: str, width_voxels: float, k: int) -> np.ndarray:
    """``W M⁻¹`` ``(len(coords), n)``: LR values → fitted field at ``coords`` (LR indices) along one axis."""
    from cunerf_monai.evaluation.baselines import _weights_1d
    from cunerf_monai.sampling import profile_ticks

    name = {"linear": "trilinear"}.get(kernel, kernel)
    offsets = [0.0] if profile == "point" else list(profile_ticks(profile, k).numpy() * width_voxels / 2.0)
    m = sum(_weights_1d(np.clip(np.arange(n) + o, 0, n - 1), n, name) for o in offsets) / len(offsets)
    return _weights_1d(np.clip(coords, 0, n - 1), n, name) @ np.linalg.inv(m)


def fixed_point(lr: np.ndarray, lr_affine: np.ndarray, hr_shape, hr_affine: np.ndarray, model) -> np.ndarray:
    """The converged grid fit of ``lr`` under ``model`` (a :class:`ForwardModel`) rendered on the HR grid."""
    from cunerf_monai.evaluation.baselines import lr_index_map

    index = lr_index_map(lr_affine, hr_affine)
    out = lr.astype(np.float64)
    for a in range(3):
        coords = index[a, a] * np.arange(hr_shape[a]) + index[a, 3]
        width = model.widths[a] / model.spacing[a]
        op = axis_operator(lr.shape[a], coords, model.kernel, model.profiles[a], width, model.samples[a])
        out = np.moveaxis(np.tensordot(op, out, axes=([1], [a])), 0, a)
    return out


#: bands of the spectral fall-off, cycles per LR voxel
BANDS = {"low": (0.05, 0.10), "mid": (0.15, 0.25), "top": (0.35, 0.50)}


def spectral_falloff(lr: np.ndarray, spacing) -> float:
    """Mean over the axes of ``log(P_top / P_mid) − c · log(P_mid / P_low)`` (natural logs of the band-mean line
    power, :func:`cunerf_monai.forward_model.line_spectrum`; ``c`` the ratio of the bands' octave distances, so a
    power law scores 0): negative when the top band falls faster than the anatomy's own slope predicts."""
    from cunerf_monai.forward_model import line_spectrum

    centre = {k: np.log2(0.5 * (lo + hi)) for k, (lo, hi) in BANDS.items()}
    c = (centre["top"] - centre["mid"]) / (centre["mid"] - centre["low"])
    values = []
    for a in range(3):
        nu, power = line_spectrum(lr, a, float(spacing[a]))
        f = nu * float(spacing[a])
        band = {k: power[(f >= lo) & (f <= hi)].mean() for k, (lo, hi) in BANDS.items()}
        values.append(np.log(band["top"] / band["mid"]) - c * np.log(band["mid"] / band["low"]))
    return float(np.mean(values))


def rows(volumes: dict[str, str]):
    """``(name, hr, hr_affine, lr, lr_affine, factors, degradation)`` for every row of the quality matrix."""
    from cunerf_monai.io import load_normalized
    from cunerf_monai.transforms.array import SimulateLowResolution, degradation_factors
    from quality import SLICE_AXIS

    for volume, path in volumes.items():
        hr = load_normalized(path)
        for scale in (2, 4):
            for mode in ("3d", "slice"):
                for degradation in ("nearest", "box"):
                    factors = degradation_factors(scale, SLICE_AXIS[volume] if mode == "slice" else None)
                    lr = SimulateLowResolution(factors, degradation)(hr)
                    yield (f"{volume}_x{scale}_{mode}_{degradation}", hr[0].numpy(), np.asarray(hr.affine),
                           lr[0].numpy(), np.asarray(lr.affine), factors, degradation)


def study(volumes: dict[str, str]) -> list[dict]:
    from cunerf_monai.evaluation.baselines import BASELINES, resample_to_grid
    from cunerf_monai.evaluation.metrics import psnr
    from cunerf_monai.forward_model import ForwardModel, estimate_forward_model
    from cunerf_monai.transforms.array import SimulateLowResolution
    from monai.data import MetaTensor

    results = []
    for name, hr, hr_aff, lr, lr_aff, factors, degradation in rows(volumes):
        spacing = np.abs(np.diag(lr_aff)[:3])

        def score(model) -> float:
            return psnr(np.clip(fixed_point(lr, lr_aff, hr.shape, hr_aff, model), 0.0, 1.0), hr)

        best = max(psnr(np.clip(resample_to_grid(lr, lr_aff, hr.shape, hr_aff, b), 0.0, 1.0), hr) for b in BASELINES)
        auto = estimate_forward_model(lr, spacing)
        degraded = [f > 1 for f in factors]
        box = ForwardModel(tuple("box" if d else "point" for d in degraded),
                           tuple(s if d else 0.0 for s, d in zip(spacing, degraded)),
                           tuple(int(f) for f in factors), "bspline", tuple(spacing))
        point = ForwardModel(("point",) * 3, (0.0,) * 3, (1, 1, 1), "bspline", tuple(spacing))
        row = {"name": name, "degradation": degradation, "factors": list(factors), "best_baseline_psnr": best,
               "auto": auto.as_dict(), "auto_margin": score(auto) - best,
               "matched_margin": score(box if degradation == "box" else point) - best}
        if len(set(factors)) == 1:  # isotropic LR: one box width for every axis, and the self-consistency test
            row["isotropic_box_margin"] = {}
            for w in (0.25, 0.5, 0.75, 1.0):
                model = ForwardModel(("box",) * 3, tuple(w * s for s in spacing), (2, 2, 2), "bspline", tuple(spacing))
                row["isotropic_box_margin"][str(w)] = score(model) - best
            image = MetaTensor(torch.as_tensor(lr[None]), affine=torch.as_tensor(lr_aff))
            again = {}
            for mode, profile in (("nearest", "point"), ("box", "box")):
                lr2 = SimulateLowResolution((2, 2, 2), mode)(image)
                sp2 = np.abs(np.diag(np.asarray(lr2.affine))[:3])
                model = ForwardModel((profile,) * 3, tuple(sp2) if profile == "box" else (0.0,) * 3,
                                     (2, 2, 2) if profile == "box" else (1, 1, 1), "bspline", tuple(sp2))
                rec = fixed_point(lr2[0].numpy(), np.asarray(lr2.affine), lr.shape, lr_aff, model)
                again[mode] = psnr(np.clip(rec, 0.0, 1.0), lr)
            row["self_consistency_box_minus_point_db"] = again["box"] - again["nearest"]
            row["spectral_falloff"] = spectral_falloff(lr, spacing)
        results.append(row)
        print(f"{name}: auto {auto.describe()} → {row['auto_margin']:+.2f} dB (matched {row['matched_margin']:+.2f})")
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| row | auto forward model (per axis; kernel) | auto − best baseline | matched − best baseline "
        "| isotropic box 0.25 / 0.5 / 0.75 / 1 LR voxel | re-degrade ×2: box − point | spectral fall-off |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for r in results:
        iso = r.get("isotropic_box_margin")
        iso_cell = " / ".join(f"{v:+.2f}" for v in iso.values()) if iso else "—"
        sc, falloff = r.get("self_consistency_box_minus_point_db"), r.get("spectral_falloff")
        model = f"{'·'.join(r['auto']['profiles'])}; {r['auto']['kernel']}"
        lines.append(f"| {r['name']} | {model} | {r['auto_margin']:+.2f} | {r['matched_margin']:+.2f} | {iso_cell} "
                     f"| {'—' if sc is None else f'{sc:+.2f}'} | {'—' if falloff is None else f'{falloff:+.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from data_paths import data_path
    from quality import DEFAULT_VOLUMES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--colin27", default=data_path(DEFAULT_VOLUMES["colin27"]))
    p.add_argument("--chest-ct", dest="chest_ct", default=data_path(DEFAULT_VOLUMES["chest_ct"]))
    p.add_argument("--table-only", action="store_true", help="redraw the table and docs block from the stored JSON")
    args = p.parse_args(argv)
    store = OUT / "forward_model_study.json"
    if args.table_only:
        results = json.loads(store.read_text())
    else:
        results = study({"colin27": args.colin27, "chest_ct": args.chest_ct})
        store.write_text(json.dumps(results, indent=2))
    text = table(results)
    (OUT / "forward_model_study.md").write_text(text + "\n")
    from docs_block import DOCS, replace_block

    replace_block(DOCS, "forward_model_study", text)
    print(text)


if __name__ == "__main__":
    main()
