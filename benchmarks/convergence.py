"""Convergence study: PSNR of the coarse and the fine render against training iterations, for the paper
configuration (``train_paper.json``) and the hash-grid field (``fields/hashgrid.json``), on a Colin27 crop.

Each case (field × degradation, ×2 3D) simulates the LR volume from a central crop of Colin27 (``--crop``, 64–96 HR
voxels), fits it with the bundle's training workflow (the config's own sampling, loss and schedule; the schedule
spans ``--iterations`` and the batch can be reduced with ``--batch``, both stated in the table) and, at log-spaced
iterations (0, 1, 2, 4, … and the last), renders the whole HR crop with the config's test-time counts and scores it
against the HR crop: the final render (the fine network's, when the config renders a fine pass) and the coarse
network's render alone (a case stopped by ``--minutes`` is also measured where it stopped). Training wall time excludes the measurements; training points/s is the field evaluations
of the training steps over that time.

Runs are resumable: every case keeps its checkpoints and its measurements in ``--work``; the same command continues
a case from its last checkpoint (a long study can be split into several runs, e.g. with ``--minutes``, which stops
each case at the first checkpoint after that much training in the current run). Results: ``convergence.json``,
``convergence.png`` and ``convergence.md`` in ``benchmarks/results/convergence/``, and (``--update-docs``) the
``convergence`` block of the bundle docs.

It also estimates what the paper's schedule (batch 2048 cubes, 64 + 128 samples, 250,000 iterations) would take on
one GPU, from the floating-point operations of one measured training step of ``train_paper.json`` (counted by
``torch.utils.flop_counter``, scaled linearly to the paper's batch): an estimate at a stated fraction of the GPU's
peak, not a measurement.

Examples::

    python benchmarks/convergence.py --iterations 256 --minutes 10 --update-docs
    CUNERF_DATA=/data python benchmarks/convergence.py --fields paper --degradations nearest
    python benchmarks/convergence.py --table-only --update-docs   # redraw from convergence.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
CONFIGS = ROOT / "bundle" / "configs"
FIELDS = {
    "paper": {"label": "paper MLP (train_paper.json)", "files": ["train.json", "train_paper.json"]},
    "hashgrid": {"label": "hash grid (fields/hashgrid.json)", "files": ["train.json", "fields/hashgrid.json"]},
}
#: the paper's schedule (Sec. 4: batch 2048 cubes, 64 coarse + 128 fine samples, 250k iterations, one RTX 3090)
PAPER_SCHEDULE = {"batch_size": 2048, "iterations": 250_000}
GPU = {"name": "RTX 3090", "fp32_tflops": 35.6}
UTILISATION = (1.0, 0.4)  # fractions of the GPU's FP32 peak the estimate is given at


def data_root(value: str | None = None) -> Path:
    """The shared data folder: ``value``, else ``$CUNERF_DATA``, else ``<repo>/../shared/data``."""
    return Path(value or os.environ.get("CUNERF_DATA") or ROOT.parent / "shared" / "data")


def eval_marks(iterations: int) -> list[int]:
    """Measurement iterations: 0, then powers of two below ``iterations``, then ``iterations``.

    Examples::

        >>> eval_marks(20)
        [0, 1, 2, 4, 8, 16, 20]
    """
    marks = [0] + [2**k for k in range(int(math.log2(max(iterations, 1))) + 1) if 2**k < iterations]
    return marks + [int(iterations)]


def prepare_case(args: argparse.Namespace, degradation: str, work: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """HR crop and simulated LR volume of one degradation: ``(lr_path, hr (X, Y, Z), hr_affine (4, 4))``."""
    from ablation import central_crop

    from cunerf_monai.io import load_normalized, save_nifti
    from cunerf_monai.transforms.array import SimulateLowResolution, degradation_factors

    work.mkdir(parents=True, exist_ok=True)
    hr_path = central_crop(str(data_root(args.data) / "colin27" / "ch2.nii.gz"), args.crop, work / "hr.nii.gz")
    img = load_normalized(hr_path)
    lr = SimulateLowResolution(degradation_factors(args.scale, None), degradation)(img)
    lr_path = Path(save_nifti(work / f"lr_{degradation}.nii.gz", lr[0].numpy(), np.asarray(lr.affine, np.float64)))
    return lr_path, img[0].numpy(), np.asarray(img.affine, dtype=np.float64)


def _save(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def run_case(field: str, degradation: str, args: argparse.Namespace) -> dict:
    """Fit (or continue fitting) one case and measure at its marks; returns the case's record."""
    import nibabel as nib
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from cunerf_monai.evaluation.baselines import run_baselines
    from cunerf_monai.evaluation.metrics import psnr
    from cunerf_monai.geometry import TargetGrid
    from cunerf_monai.transforms.array import denormalize_intensity

    name = f"{field}_{degradation}_x{args.scale}"
    iterations = schedule_of(field, args)
    work = Path(args.work) / name
    lr_path, hr, hr_affine = prepare_case(args, degradation, work)
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    overrides = {"num_iterations": iterations, "epoch_length": args.epoch_length, "resume": True,
                 "val_interval": 10**9, "progress": False, "seed": 0}
    if args.batch.get(field):
        overrides["batch_size"] = int(args.batch[field])
    if state.get("overrides", overrides) != overrides:
        raise ValueError(f"{work} holds a run with other settings ({state['overrides']}); use another --work.")
    checkpoint_iteration = int(state.get("checkpoint_iteration", 0))
    points = [p for p in state.get("points", []) if p["iteration"] <= checkpoint_iteration]
    seconds_base = float(state.get("checkpoint_seconds", 0.0))
    if points and points[-1]["iteration"] >= iterations:
        logging.info(f"{name}: finished earlier")
        return state
    lr = nib.load(str(lr_path))
    lr_np = np.asarray(lr.dataobj, dtype=np.float32)
    predictions = run_baselines(lr_np, lr.affine, hr.shape, hr_affine, include_misaligned=False)
    baselines = {k: psnr(np.clip(v, 0.0, 1.0), hr) for k, v in predictions.items()}

    files = [str(CONFIGS / f) for f in FIELDS[field]["files"]]
    workflow = ConfigWorkflow(config_file=files, workflow_type="train", input_image=str(lr_path),
                              output_dir=str(work / "fit"), **overrides)
    workflow.initialize()
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    record = parser.get_parsed_content("volume_record")
    batch = int(parser.get_parsed_content("batch_size"))
    points_per_iteration = batch * inferer.points_per_target(training=True)
    grid = TargetGrid(tuple(hr.shape), hr_affine)  # type: ignore[arg-type]
    marks = eval_marks(iterations)
    clock = {"session": 0.0, "start": 0.0, "resumed_at": None}

    def score(render: torch.Tensor) -> float:
        return round(float(psnr(np.clip(denormalize_intensity(render, record.intensity_range).numpy(), 0, 1), hr)), 3)

    def measure(engine, stopping: bool = False) -> None:
        it = int(engine.state.iteration)
        if (it not in marks and not stopping) or any(p["iteration"] == it for p in points):
            return
        was_training = network.training
        network.eval()
        final = score(inferer.render_grid(network, record.geometry, grid))
        coarse = score(inferer.coarse_only().render_grid(network, record.geometry, grid)) if inferer.num_fine_eval else None
        network.train(was_training)
        seconds = seconds_base + clock["session"]
        trained = it - clock["resumed_at"]
        rate = trained * points_per_iteration / clock["session"] if clock["session"] > 0 and trained > 0 else None
        points.append({"iteration": it, "seconds": round(seconds, 1), "psnr": final, "coarse_psnr": coarse,
                       "train_points_per_second": round(rate) if rate else None})
        logging.info(f"{name}: iteration {it}, {seconds:.0f} s: PSNR {final} (coarse {coarse})")

    def save(checkpointed: bool, engine) -> None:
        if checkpointed:
            state["checkpoint_iteration"] = int(engine.state.iteration)
            state["checkpoint_seconds"] = round(seconds_base + clock["session"], 2)
        state.update({"field": field, "degradation": degradation, "overrides": overrides, "points": points,
                      "baselines_psnr": baselines, "batch_size": batch, "points_per_iteration": points_per_iteration,
                      "iterations": iterations, "hr_shape": list(hr.shape), "train_seconds": round(seconds_base + clock["session"], 1)})
        _save(state_path, state)

    @trainer.on(Events.STARTED)
    def _started(engine) -> None:
        clock["resumed_at"] = int(engine.state.iteration)
        measure(engine)

    @trainer.on(Events.ITERATION_STARTED)
    def _tick(engine) -> None:
        clock["start"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _tock(engine) -> None:
        clock["session"] += time.perf_counter() - clock["start"]
        measure(engine)
        save(False, engine)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _epoch(engine) -> None:  # the workflow's checkpoint of this epoch is written right after this handler
        if args.minutes is not None and clock["session"] >= args.minutes * 60.0 and engine.state.iteration < iterations:
            logging.info(f"{name}: stopping after {clock['session']:.0f} s of training in this run (resumable)")
            measure(engine, stopping=True)  # the last iteration trained is measured too
            engine.terminate()
        save(True, engine)

    workflow.run()
    workflow.finalize()
    return state


def schedule_of(field: str, args: argparse.Namespace) -> int:
    """The schedule length of ``field``'s cases: ``--field-iterations`` for that field, else ``--iterations``."""
    return int(args.field_iterations.get(field, args.iterations))


def flops_estimate(args: argparse.Namespace, batch: int = 16) -> dict:
    """FLOPs of one ``train_paper.json`` training step (forward, backward), counted on ``batch`` cubes and scaled to
    the paper's batch, and the time the paper's schedule would take on one GPU at the fractions of peak in
    :data:`UTILISATION` (an estimate)."""
    from throughput import build, training_step
    from torch.utils.flop_counter import FlopCounterMode

    network, inferer, optimizer, dataset, parser = build(["train_paper.json"], shape=(32, 32, 32), batch_size=batch)
    step = training_step(network, inferer, optimizer, dataset, parser.get_parsed_content("loss"))
    with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
        step()  # plain linear layers, so that every matrix product is counted
    per_cube = counter.get_total_flops() / batch
    per_iteration = per_cube * PAPER_SCHEDULE["batch_size"]
    total = per_iteration * PAPER_SCHEDULE["iterations"]
    hours = {f"{int(u * 100)}%": round(total / (GPU["fp32_tflops"] * 1e12 * u) / 3600.0, 2) for u in UTILISATION}
    return {"flops_per_cube": per_cube, "flops_per_iteration": per_iteration, "total_flops": total,
            "points_per_cube": inferer.points_per_target(training=True), "gpu": GPU, "hours": hours,
            "schedule": PAPER_SCHEDULE}


def write_outputs(out: Path, result: dict, update_docs: bool) -> None:
    """``convergence.md`` and ``convergence.png`` from ``result`` (and the docs block)."""
    from cunerf_monai.evaluation.figures import plot_curve

    cases = result["cases"]
    xs, ys, hlines = {}, {}, {}
    for name, case in cases.items():
        best = max(case["baselines_psnr"], key=case["baselines_psnr"].get)
        hlines[f"{best} ({case['degradation']})"] = case["baselines_psnr"][best]
        label = f"{FIELDS[case['field']]['label']}, {case['degradation']}"
        pts = case["points"]
        xs[label], ys[label] = [p["iteration"] + 1 for p in pts], [p["psnr"] for p in pts]
        if any(p["coarse_psnr"] is not None for p in pts):
            xs[label + " (coarse)"] = [p["iteration"] + 1 for p in pts]
            ys[label + " (coarse)"] = [p["coarse_psnr"] if p["coarse_psnr"] is not None else float("nan") for p in pts]
    plot_curve(out / "convergence.png", xs, ys, xlabel="training iterations + 1", ylabel="PSNR on the HR crop (dB)",
               title=f"Colin27 crop {result['crop']}³, ×{result['scale']} 3D", logx=True, hlines=hlines)
    lines = [
        "# Convergence",
        "",
        f"Machine: {result['machine']}",
        f"Colin27 central crop {result['crop']}³ (HR), ×{result['scale']} 3D; schedule: the iterations the learning-rate "
        f"decay is compressed into (column `schedule`); budget: {result['budget']}. PSNR of the whole HR crop; the final "
        "render is the fine network's when the config renders a fine pass, the coarse network's render beside it; "
        "training points/s is the mean since the start of the run that trained up to that iteration.",
        "",
        "| field | degradation | batch (cubes × points) | schedule | iteration | training time (s) | training points/s "
        "| final PSNR | coarse PSNR | best aligned baseline |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases.values():
        best = max(case["baselines_psnr"], key=case["baselines_psnr"].get)
        per_cube = case["points_per_iteration"] // case["batch_size"]
        for p in case["points"]:
            rate = f"{p['train_points_per_second']:,}" if p.get("train_points_per_second") else "—"
            coarse = f"{p['coarse_psnr']:.2f}" if p["coarse_psnr"] is not None else "—"
            lines.append(
                f"| {FIELDS[case['field']]['label']} | {case['degradation']} | {case['batch_size']} × {per_cube} "
                f"| {case.get('iterations', result['iterations'])} | {p['iteration']} | {p['seconds']:.0f} | {rate} | {p['psnr']:.2f} | {coarse} "
                f"| {best} {case['baselines_psnr'][best]:.2f} |"
            )
    est = result.get("estimate")
    if est:
        hours = ", ".join(f"{h} h at {u} of peak" for u, h in est["hours"].items())
        lines += [
            "",
            f"Estimate (not a measurement) of the paper's schedule on one {est['gpu']['name']} "
            f"({est['gpu']['fp32_tflops']} TFLOP/s FP32 peak): a `train_paper.json` step counts "
            f"{est['flops_per_cube'] / 1e9:.2f} GFLOP per cube ({est['points_per_cube']} field evaluations, forward "
            f"and backward, counted by `torch.utils.flop_counter` on one CPU step), so "
            f"{est['flops_per_iteration'] / 1e12:.2f} TFLOP per iteration of {est['schedule']['batch_size']} cubes and "
            f"{est['total_flops'] / 1e18:.1f} EFLOP for {est['schedule']['iterations']:,} iterations: {hours}.",
        ]
    (out / "convergence.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if update_docs:
        from docs_block import DOCS, replace_block

        replace_block(DOCS, "convergence", (out / "convergence.md").read_text(encoding="utf-8").split("\n", 2)[2])


def run(args: argparse.Namespace) -> Path:
    from cunerf_monai.evaluation.selfeval import machine_description

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "convergence.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    same = (result.get("crop"), result.get("scale"), result.get("iterations")) == (args.crop, args.scale, args.iterations)
    if not same:
        result = {}
    result.update({"machine": machine_description(), "crop": args.crop, "scale": args.scale,
                   "iterations": args.iterations, "budget": args.budget_note})
    result.setdefault("cases", {})
    if args.estimate or "estimate" not in result:
        result["estimate"] = flops_estimate(args)
    for field in args.fields:
        for degradation in args.degradations:
            case = run_case(field, degradation, args)
            result["cases"][f"{field}_{degradation}_x{args.scale}"] = {
                k: case[k] for k in ("field", "degradation", "batch_size", "points_per_iteration", "points",
                                     "baselines_psnr", "train_seconds", "iterations")}
            _save(path, result)
            write_outputs(out, result, args.update_docs)
    return out / "convergence.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="shared data folder (default $CUNERF_DATA or <repo>/../shared/data)")
    p.add_argument("--crop", type=int, default=64, help="central crop edge in HR voxels (64–96)")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--fields", nargs="+", default=list(FIELDS), choices=sorted(FIELDS))
    p.add_argument("--degradations", nargs="+", default=["nearest", "box"], choices=["nearest", "box"])
    p.add_argument("--iterations", type=int, default=256, help="schedule length (the learning-rate decay spans it)")
    p.add_argument("--field-iterations", dest="field_iterations", type=json.loads, default={},
                   help='schedule length per field, overriding --iterations (JSON, e.g. \'{"hashgrid": 1024}\')')
    p.add_argument("--epoch-length", dest="epoch_length", type=int, default=16, help="iterations per checkpoint")
    p.add_argument("--batch", type=json.loads, default={"paper": 256},
                   help='cubes per iteration per field as JSON (default: the paper config at 256 cubes, not 2048)')
    p.add_argument("--minutes", type=float, default=None,
                   help="stop each case after this much training in this run (at its next checkpoint; resumable)")
    p.add_argument("--budget-note", dest="budget_note", default="as many iterations as the stated schedule",
                   help="how the run's budget is described in the table")
    p.add_argument("--estimate", action="store_true", help="recount the FLOPs estimate even if stored")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "convergence"))
    p.add_argument("--work", default=str(Path("/tmp") / "cunerf_convergence"), help="checkpoints and measurements")
    p.add_argument("--update-docs", dest="update_docs", action="store_true")
    p.add_argument("--table-only", dest="table_only", action="store_true",
                   help="only redraw the table and plot (and docs block) from the stored convergence.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    from docs_block import run_main

    run_main(parse_args, run, lambda a: write_outputs(
        Path(a.out), json.loads((Path(a.out) / "convergence.json").read_text()), a.update_docs))
