"""The learned priors on the rows of the quality matrix: field alone, prior alone, fused.

Every row (volume × scale × degradation × mode; matched and blind forward model) is one run of
``benchmarks/quality.py`` in its own process, so its peak resident memory is its own. With the shipped defaults a
fit runs a prior (``prior: auto``): the thick-slice prior on a thick-slice LR (the slice-axis rows, the chest CT's 3D
rows), the cross-scale prior on an isotropic LR of box voxels (the Colin27 3D box rows; ``evaluate`` tells the fit
the HR grid's spacing), and both in turn on a thick-slice LR whose in-plane voxels are boxes too (the chest CT's 3D box
rows told the degradation, ``matched``). The quality runs already score:

* **fused** (``cunerf``): the prior's proposal made consistent with the LR and held by the field, the default output;
* **prior alone** (``prior_proposal``): the proposal before the (last) consistency correction;
* **field alone**: the same row fitted with ``prior: none`` (the ``*_field`` runs, ``--field`` reruns them).

A ``*_slices_only`` run is a row fitted with ``prior_spacing`` the HR slice spacing on every axis (``quality.py
--overrides '{"prior_spacing": 5.0}' --suffix _slices_only``): a thick-slice scan then runs the thick-slice prior
alone, no cross-scale part in-plane, to measure what each part adds.

``--prior-data DIR`` adds a row per run fitted with ``prior_data: DIR`` (HR volumes a user already has add training
pairs; the ``*_prior_data`` runs): e.g. the chest CT's HR slices teaching the Colin27 MRI's prior. ``--saved-prior
PATH`` adds a row per run that applies the saved prior of another run instead of training its own (``prior: PATH``;
the ``*_saved_prior`` runs): every quality run keeps its fit in ``runs/quality/<name>/fit``, whose
``checkpoints/prior_model.pt`` is the prior it trained.

The table (``benchmarks/results/prior.md`` and the docs block ``prior``) gives PSNR above the best aligned
baseline, ΔSSIM, the data consistency (the output degraded as the LR was made, against the LR), fit + render time,
peak memory and how well the uncertainty map ranks the error (Spearman). Timings are only meaningful with no other
job on the machine; the machine line of every run says what it ran on.

Examples::

    python benchmarks/prior.py                       # the 16 slice-axis rows (about an hour on 2 cores), the table
    python benchmarks/prior.py --volumes colin27 --scales 4 --degradations box --forward-models blind
    python benchmarks/prior.py --modes 3d --volumes colin27 --degradations box --forward-models matched --field
    python benchmarks/prior.py --modes 3d --volumes chest_ct --degradations box --forward-models matched --field
    python benchmarks/prior.py --modes 3d --volumes colin27 --scales 2 --degradations box --forward-models matched \
        --prior-data /data/hr_volumes                # the prior_data row
    python benchmarks/prior.py --volumes colin27 --scales 2 --degradations box --forward-models blind \
        --saved-prior runs/quality/chest_ct_x2_slice_box_blind/fit   # that row's saved prior applied to Colin27
    python benchmarks/prior.py --field               # also rerun the field-alone rows (prior: none)
    python benchmarks/prior.py --table-only          # rebuild the table from the stored runs
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
QUALITY = ROOT / "benchmarks" / "results" / "quality"
OUT = ROOT / "benchmarks" / "results"


def row_name(volume: str, scale: int, degradation: str, blind: bool, suffix: str = "", mode: str = "slice") -> str:
    """The quality benchmark's run name of a row (``mode``: ``slice`` or ``3d``)."""
    return f"{volume}_x{scale}_{mode}_{degradation}{suffix}{'_blind' if blind else ''}"


def run_row(
    volume: str, scale: int, degradation: str, forward_model: str, threads: int, mode: str = "slice",
    overrides: dict | None = None, suffix: str = "",
) -> None:
    """One quality run in a fresh process (``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep instead of spinning
    when they wait, so a process sharing the cores is not slowed many times over)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--volumes", volume, "--scales", str(scale),
           "--modes", mode, "--degradations", degradation, "--forward-model", forward_model,
           "--threads", str(threads)]
    if overrides:
        cmd += ["--overrides", json.dumps(overrides), "--suffix", suffix]
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    subprocess.run(cmd, check=True, env=env)


def _load(name: str) -> tuple[dict, dict] | None:
    row, metrics = QUALITY / f"{name}.json", QUALITY / f"{name}.metrics.json"
    if not row.is_file() or not metrics.is_file():
        return None
    return json.loads(row.read_text())[0], json.loads(metrics.read_text())


def _profile(prior: dict | None) -> str:
    """The prior's profile, or why the row is the field alone."""
    if not prior:  # a slice-axis row of `prior: auto` stored before the verdict was recorded
        return "stepped aside"
    if not prior.get("applied", True):
        gain = prior.get("inplane_gain_db")
        return "stepped aside" + ("" if gain is None else f": {gain:+.2f} dB held-out")
    if "slices" in prior:  # the thick-slice prior then the cross-scale prior: both parts' profiles
        cross = prior["cross_scale"]["profile"] if len(prior.get("grids", ())) > 1 else "stepped aside"
        return f"{prior['slices']['profile']}, then in-plane {cross}"
    return prior["profile"]


def _data(prior: dict | None) -> list[str] | None:
    """The names of the ``prior_data`` volumes the prior trained on (a combined prior: its parts'), or ``None``."""
    prior = prior or {}
    return prior.get("data") or (prior.get("slices") or {}).get("data")


def _source(prior: dict | None) -> str:
    """The run whose saved prior a ``_saved_prior`` row applied: the quality run's name in the path of its
    ``prior_model.pt`` (``runs/quality/<name>/fit/checkpoints/prior_model.pt``), else the file's folder."""
    prior = prior or {}
    path = Path(prior.get("pretrained") or (prior.get("slices") or {}).get("pretrained") or "?")
    parts = path.parts
    if "quality" in parts[:-1]:
        return parts[parts.index("quality") + 1]
    return path.parent.name


def table_rows(volumes, scales, degradations, forward_models, modes=("slice",)) -> list[dict]:
    """One record per stored row with a prior (fused), with its field-alone twin when stored, then its
    ``prior_data`` twin when stored."""
    rows = []
    for mode, volume, scale, degradation, fm in itertools.product(modes, volumes, scales, degradations, forward_models):
        blind = fm == "blind"
        field = _load(row_name(volume, scale, degradation, blind, "_field", mode))
        for suffix in ("", "_prior_data", "_saved_prior", "_slices_only"):
            fused = _load(row_name(volume, scale, degradation, blind, suffix, mode))
            if fused is None or "prior" not in fused[1]:  # no run, or one from before the prior existed
                continue
            if mode == "3d" and fused[1]["prior"] is None:  # an isotropic LR of point samples: no prior, by design
                continue
            row, m = fused
            res, best, budget = m["results"], m["best_aligned_baseline"], m["budget"]
            proposal = res.get("prior_proposal")  # none when the prior stepped aside (the field alone)
            data = _data(m["prior"])
            rows.append({
                "row": f"{volume} ×{scale} {'slice axis' if mode == 'slice' else '3D'} {degradation}",
                "forward_model": fm + (f" + prior_data {', '.join(data)}" if suffix and data else "")
                + (f" + saved prior of {_source(m['prior'])}" if suffix == "_saved_prior" else "")
                + (", told the slice spacing only" if suffix == "_slices_only" else ""),
                "profile": _profile(m.get("prior")), "kind": (m["prior"] or {}).get("kind", "slices"),
                "best": best, "best_psnr": res[best]["psnr"],
                "field": None if field is None else field[0]["margin_psnr"],
                "prior_alone": None if proposal is None else proposal["psnr"] - res[best]["psnr"],
                "fused": m["margin_psnr_db"], "ssim": m["margin_ssim"], "consistency": m["data_consistency_psnr_db"],
                "seconds": row["total_seconds"], "fit_render": budget["fit_seconds"] + budget["render_seconds"],
                "peak_gb": budget.get("peak_rss_mb", float("nan")) / 1024.0,
                "spearman": (m.get("uncertainty") or {}).get("spearman", float("nan")), "machine": m.get("machine", ""),
            })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| row | forward model (prior) | best aligned baseline | ΔPSNR field alone | ΔPSNR prior alone "
        "| ΔPSNR fused | ΔSSIM fused | data consistency | fit + render | peak memory | uncertainty vs error |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        field = "—" if r["field"] is None else f"{r['field']:+.2f}"
        alone = "—" if r["prior_alone"] is None else f"{r['prior_alone']:+.2f}"
        lines.append(
            f"| {r['row']} | {r['forward_model']} ({r['kind']}: {r['profile']}) | {r['best']} {r['best_psnr']:.2f} | {field} "
            f"| {alone} | **{r['fused']:+.2f}** | {r['ssim']:+.4f} | {r['consistency']:.1f} dB "
            f"| {r['fit_render']:.0f} s | {r['peak_gb']:.2f} GB | {r['spearman']:.2f} |"
        )
    machines = sorted({r["machine"] for r in rows if r["machine"]})
    if machines:
        lines += ["", "Machine: " + "; ".join(machines)]
    return "\n".join(lines)


def write_table(args: argparse.Namespace) -> Path:
    from docs_block import DOCS, replace_block

    rows = table_rows(args.volumes, args.scales, args.degradations, args.forward_models, ("slice", "3d"))
    text = markdown(rows)
    (OUT / "prior.json").write_text(json.dumps(rows, indent=2))
    (OUT / "prior.md").write_text("# The learned priors: slice-axis and 3D rows\n\n" + text + "\n")
    replace_block(DOCS, "prior", text)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--docs-only"], check=True)
    return OUT / "prior.md"


def run(args: argparse.Namespace) -> Path:
    for mode, volume, scale, degradation, fm in itertools.product(
        args.modes, args.volumes, args.scales, args.degradations, args.forward_models
    ):
        if args.field:
            run_row(volume, scale, degradation, fm, args.threads, mode, {"prior": "none"}, "_field")
        if args.prior_data:
            run_row(volume, scale, degradation, fm, args.threads, mode,
                    {"prior_data": str(Path(args.prior_data).resolve())}, "_prior_data")
        elif args.saved_prior:
            run_row(volume, scale, degradation, fm, args.threads, mode,
                    {"prior": str(Path(args.saved_prior).resolve())}, "_saved_prior")
        else:
            run_row(volume, scale, degradation, fm, args.threads, mode)
    return write_table(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", nargs="+", default=["colin27", "chest_ct"])
    p.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    p.add_argument("--degradations", nargs="+", default=["box", "nearest"])
    p.add_argument("--forward-models", dest="forward_models", nargs="+", default=["matched", "blind"],
                   choices=["matched", "blind"])
    p.add_argument("--modes", nargs="+", default=["slice"], choices=["slice", "3d"])
    p.add_argument("--field", action="store_true", help="also rerun the field-alone rows (prior: none)")
    p.add_argument("--prior-data", dest="prior_data", default=None,
                   help="a folder of HR volumes: run the rows with prior_data (the *_prior_data runs) instead")
    p.add_argument("--saved-prior", dest="saved_prior", default=None,
                   help="a saved prior (prior_model.pt, or the folder of a run holding one): run the rows with it "
                        "instead of training theirs (the *_saved_prior runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table-only", dest="table_only", action="store_true", help="only rebuild the table")
    return p.parse_args(argv)


if __name__ == "__main__":
    from docs_block import run_main

    run_main(parse_args, run, write_table)
