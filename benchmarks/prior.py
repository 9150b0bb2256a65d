"""The thick-slice prior on the slice-axis rows of the quality matrix: field alone, prior alone, fused.

Every row (volume × scale × degradation, slice axis only; matched and blind forward model) is one run of
``benchmarks/quality.py`` in its own process, so its peak resident memory is its own. With the shipped defaults a
fit on a thick-slice LR runs the prior (``prior: auto``); the quality runs already score:

* **fused** (``cunerf``): the prior's proposal made consistent with the LR and held by the field, the default output;
* **prior alone** (``prior_proposal``): the proposal before the consistency correction;
* **field alone**: the same row fitted with ``prior: none`` (the ``*_field`` runs, ``--field`` reruns them).

The table (``benchmarks/results/prior.md`` and the docs block ``prior``) gives PSNR above the best aligned
baseline, ΔSSIM, the data consistency (the output degraded as the LR was made, against the LR), fit + render time,
peak memory and how well the uncertainty map ranks the error (Spearman). Timings are only meaningful with no other
job on the machine; the machine line of every run says what it ran on.

Examples::

    python benchmarks/prior.py                       # all 16 rows (about an hour on 2 cores), then the table
    python benchmarks/prior.py --volumes colin27 --scales 4 --degradations box --forward-models blind
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


def row_name(volume: str, scale: int, degradation: str, blind: bool, suffix: str = "") -> str:
    """The quality benchmark's run name of a slice-axis row."""
    return f"{volume}_x{scale}_slice_{degradation}{suffix}{'_blind' if blind else ''}"


def run_row(volume: str, scale: int, degradation: str, forward_model: str, field: bool, threads: int) -> None:
    """One quality run in a fresh process (``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep instead of spinning
    when they wait, so a process sharing the cores is not slowed many times over)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--volumes", volume, "--scales", str(scale),
           "--modes", "slice", "--degradations", degradation, "--forward-model", forward_model,
           "--threads", str(threads)]
    if field:
        cmd += ["--overrides", json.dumps({"prior": "none"}), "--suffix", "_field"]
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
    return prior["profile"]


def table_rows(volumes, scales, degradations, forward_models) -> list[dict]:
    """One record per stored row with the prior (fused), with its field-alone twin when stored."""
    rows = []
    for volume, scale, degradation, fm in itertools.product(volumes, scales, degradations, forward_models):
        blind = fm == "blind"
        fused = _load(row_name(volume, scale, degradation, blind))
        if fused is None or "prior" not in fused[1]:  # no run, or one from before the prior existed
            continue
        row, m = fused
        res, best, budget = m["results"], m["best_aligned_baseline"], m["budget"]
        field = _load(row_name(volume, scale, degradation, blind, "_field"))
        proposal = res.get("prior_proposal")  # none when the prior stepped aside (the field alone)
        rows.append({
            "row": f"{volume} ×{scale} {degradation}", "forward_model": fm,
            "profile": _profile(m.get("prior")),
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
        "| row (slice axis) | forward model | best aligned baseline | ΔPSNR field alone | ΔPSNR prior alone "
        "| ΔPSNR fused | ΔSSIM fused | data consistency | fit + render | peak memory | uncertainty vs error |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        field = "—" if r["field"] is None else f"{r['field']:+.2f}"
        alone = "—" if r["prior_alone"] is None else f"{r['prior_alone']:+.2f}"
        lines.append(
            f"| {r['row']} | {r['forward_model']} ({r['profile']}) | {r['best']} {r['best_psnr']:.2f} | {field} "
            f"| {alone} | **{r['fused']:+.2f}** | {r['ssim']:+.4f} | {r['consistency']:.1f} dB "
            f"| {r['fit_render']:.0f} s | {r['peak_gb']:.2f} GB | {r['spearman']:.2f} |"
        )
    machines = sorted({r["machine"] for r in rows if r["machine"]})
    if machines:
        lines += ["", "Machine: " + "; ".join(machines)]
    return "\n".join(lines)


def write_table(args: argparse.Namespace) -> Path:
    from docs_block import DOCS, replace_block

    rows = table_rows(args.volumes, args.scales, args.degradations, args.forward_models)
    text = markdown(rows)
    (OUT / "prior.json").write_text(json.dumps(rows, indent=2))
    (OUT / "prior.md").write_text("# The thick-slice prior: slice-axis rows\n\n" + text + "\n")
    replace_block(DOCS, "prior", text)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--docs-only"], check=True)
    return OUT / "prior.md"


def run(args: argparse.Namespace) -> Path:
    for volume, scale, degradation, fm in itertools.product(
        args.volumes, args.scales, args.degradations, args.forward_models
    ):
        if args.field:
            run_row(volume, scale, degradation, fm, True, args.threads)
        run_row(volume, scale, degradation, fm, False, args.threads)
    return write_table(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", nargs="+", default=["colin27", "chest_ct"])
    p.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    p.add_argument("--degradations", nargs="+", default=["box", "nearest"])
    p.add_argument("--forward-models", dest="forward_models", nargs="+", default=["matched", "blind"],
                   choices=["matched", "blind"])
    p.add_argument("--field", action="store_true", help="also rerun the field-alone rows (prior: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--table-only", dest="table_only", action="store_true", help="only rebuild the table")
    return p.parse_args(argv)


if __name__ == "__main__":
    from docs_block import run_main

    run_main(parse_args, run, write_table)
