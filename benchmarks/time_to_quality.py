"""Time to quality: PSNR of the full HR render against training wall time, for each field.

For every field config it simulates the LR volume (the evaluation protocol: Colin27, ×2 3D, ``--degradation``),
fits with the bundle's training workflow and the forward model matched to the degradation (as
``benchmarks/quality.py`` does), and at wall-clock checkpoints of *training* time (the clock is paused while it
measures) renders the whole HR grid and scores its PSNR. The best aligned interpolation baseline is drawn as a
line. Output: ``time_to_quality.png``, ``.md`` and ``.json`` in ``benchmarks/results/time_to_quality/<degradation>/``.

Example::

    python benchmarks/time_to_quality.py --fields spline hashgrid --minutes 10 --degradation nearest
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from data_paths import data_path, relative_to_data  # noqa: E402
CONFIGS = ROOT / "bundle" / "configs"
FIELDS = {
    "spline": {"label": "B-spline grid (train.json)", "files": ["train.json"]},
    "hashgrid": {"label": "hash grid (fields/hashgrid.json)", "files": ["train.json", "fields/hashgrid.json"]},
    "paper_mlp": {"label": "paper MLP (train_paper.json)", "files": ["train.json", "train_paper.json"]},
    "hashgrid_residual": {"label": "hash grid on the B-spline prior (fields/hashgrid_residual.json)",
                          "files": ["train.json", "fields/hashgrid_residual.json"], "own_batch": True},
}


MARGIN = 0.1  # dB: "beats the baseline" means by at least this much (smaller differences are ties)


def checkpoints_seconds(minutes: float) -> list[float]:
    """Measurement times in seconds of training: roughly doubling from 15 s up to ``minutes``."""
    end = minutes * 60.0
    times, t = [], 15.0
    while t < end:
        times.append(t)
        t *= 2.0
    return times + [end]


def config_value(name: str, key: str):
    """A top-level setting of a field's config files (the last file that sets it wins)."""
    value = None
    for f in FIELDS[name]["files"]:
        value = json.loads((CONFIGS / f).read_text()).get(key, value)
    return value


def run_field(name: str, lr_path: Path, hr: np.ndarray, hr_affine: np.ndarray, args, overrides: dict) -> list:
    """Fit one field for ``args.minutes`` of training time; returns ``[(seconds, iteration, psnr), …]``."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from cunerf_monai.evaluation.metrics import psnr
    from cunerf_monai.geometry import TargetGrid
    from cunerf_monai.transforms.array import denormalize_intensity

    files = [str(CONFIGS / f) for f in FIELDS[name]["files"]]
    settings = {"input_image": str(lr_path), "output_dir": str(Path(args.work) / "fits" / name), "resume": False}
    settings.update(overrides)
    workflow = ConfigWorkflow(config_file=files, workflow_type="train", **settings)
    workflow.initialize()
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    record = parser.get_parsed_content("volume_record")
    grid = TargetGrid(tuple(hr.shape), hr_affine)  # type: ignore[arg-type]
    marks = checkpoints_seconds(args.minutes)
    clock = {"trained": 0.0, "since": time.perf_counter()}
    curve: list[tuple[float, int, float]] = []

    def measure(engine) -> None:
        was_training = network.training
        network.eval()
        sr = inferer.render_grid(network, record.geometry, grid)
        network.train(was_training)
        sr = np.clip(denormalize_intensity(sr, record.intensity_range).numpy(), 0.0, 1.0)
        value = psnr(sr, hr)
        curve.append((round(clock["trained"], 1), int(engine.state.iteration), round(float(value), 3)))
        logging.info(f"{name}: {clock['trained']:.0f} s, iteration {engine.state.iteration}: PSNR {value:.2f} dB")

    @trainer.on(Events.ITERATION_COMPLETED)
    def _tick(engine) -> None:
        now = time.perf_counter()
        clock["trained"] += now - clock["since"]
        if marks and clock["trained"] >= marks[0]:
            while marks and clock["trained"] >= marks[0]:
                marks.pop(0)
            measure(engine)
            if not marks:
                engine.terminate()
        clock["since"] = time.perf_counter()

    @trainer.on(Events.STARTED)
    def _start(engine) -> None:
        clock["since"] = time.perf_counter()
        measure(engine)  # the field at initialisation, time 0
        clock["since"] = time.perf_counter()

    @trainer.on(Events.COMPLETED)
    def _last(engine) -> None:
        if not curve or curve[-1][1] != engine.state.iteration:
            measure(engine)

    workflow.run()
    workflow.finalize()
    return curve


def run(args: argparse.Namespace) -> Path:
    from quality import matched_overrides

    from cunerf_monai.evaluation.baselines import run_baselines
    from cunerf_monai.evaluation.metrics import psnr
    from cunerf_monai.evaluation.selfeval import machine_description
    from cunerf_monai.io import load_normalized, save_nifti
    from cunerf_monai.transforms.array import SimulateLowResolution, degradation_factors

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    img = load_normalized(data_path(args.volume))
    hr, hr_affine = img[0].numpy(), np.asarray(img.affine, dtype=np.float64)
    factors = degradation_factors(args.scale, None)
    lr = SimulateLowResolution(factors, args.degradation)(img)
    lr_np, lr_affine = lr[0].numpy(), np.asarray(lr.affine, dtype=np.float64)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    lr_path = Path(save_nifti(Path(args.work) / "lr.nii.gz", lr_np, lr_affine))
    baselines = {k: psnr(np.clip(v, 0.0, 1.0), hr) for k, v in run_baselines(lr_np, lr_affine, hr.shape, hr_affine,
                                                                              include_misaligned=False).items()}
    best = max(baselines, key=baselines.get)
    curves, iterations = stored_curves(out / "time_to_quality.json", args)
    for name in args.fields:
        overrides = matched_overrides(args.degradation, factors)
        own_batch = FIELDS[name].get("own_batch", False)  # the matched forward model, the config's batch and schedule
        if name in args.iterations or not own_batch:
            n = args.iterations.get(name, 100000)
            overrides.update(num_iterations=n, epoch_length=max(1, min(n, 250)))
        if own_batch:
            overrides.pop("batch_size")
        elif name != "spline":  # neural fields keep their own sample counts and batch (only the cube is matched)
            if args.degradation == "nearest":  # a point forward model: the voxel centre, more voxels per step
                overrides.update({"num_coarse": 1, "num_fine": 0, "batch_size": 16384})
            else:  # random samples of the footprint with the field's own counts
                for key in ("num_coarse", "num_fine", "batch_size", "cube_sampling", "grid_counts"):
                    overrides.pop(key)
        curves[name] = run_field(name, lr_path, hr, hr_affine, args, overrides)
        iterations[name] = overrides.get("num_iterations") or config_value(name, "num_iterations")
        result = {"machine": machine_description(), "volume": relative_to_data(data_path(args.volume)), "degradation": args.degradation,
                  "factors": list(factors), "baselines_psnr": baselines, "best_baseline": best,
                  "curves": {k: [{"seconds": s, "iteration": i, "psnr": p} for s, i, p in v] for k, v in curves.items()},
                  "scheduled_iterations": iterations}
        (out / "time_to_quality.json").write_text(json.dumps(result, indent=2))
        publish(out, result, args.update_docs)
    return out / "time_to_quality.md"


def stored_curves(path: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """Curves of the fields *not* being rerun from an earlier run of the same case (volume, degradation, factor),
    so that rerunning one field keeps the others' rows; ``({}, {})`` when there is none."""
    if not path.exists():
        return {}, {}
    old = json.loads(path.read_text())
    if old.get("volume") != relative_to_data(data_path(args.volume)) or old.get("degradation") != args.degradation or old.get("factors", [0])[0] != args.scale:
        return {}, {}
    keep = [k for k in old["curves"] if k not in args.fields and k in FIELDS]
    curves = {k: [(p["seconds"], p["iteration"], p["psnr"]) for p in old["curves"][k]] for k in keep}
    return curves, {k: old.get("scheduled_iterations", {}).get(k) for k in keep}


def publish(out: Path, result: dict, update_docs: bool) -> None:
    """Plot, table and (optionally) the docs block from a result dictionary."""
    plot(out, result)
    write_table(out, result)
    if update_docs:
        from docs_block import DOCS, replace_block

        text = (out / "time_to_quality.md").read_text(encoding="utf-8").split("\n", 2)[2]
        replace_block(DOCS, f"time_to_quality_{result['degradation']}", text)


def plot(out: Path, result: dict) -> None:
    """``time_to_quality.png``: PSNR against training minutes per field, the best baseline as a dashed line."""
    from cunerf_monai.evaluation.figures import plot_curve

    curves, best = result["curves"], result["best_baseline"]
    plot_curve(
        out / "time_to_quality.png",
        {FIELDS[k]["label"]: [p["seconds"] / 60.0 for p in v] for k, v in curves.items()},
        {FIELDS[k]["label"]: [p["psnr"] for p in v] for k, v in curves.items()},
        xlabel="training wall time (min)",
        ylabel="PSNR on the HR grid (dB)",
        title=f"{Path(result['volume']).name}: {result['degradation']} ×{result['factors'][0]} 3D",
        hlines={f"{best} (best aligned baseline)": result["baselines_psnr"][best]},
    )


def write_table(out: Path, result: dict) -> None:
    best = result["best_baseline"]
    target = result["baselines_psnr"][best]
    lines = [
        "# Time to quality",
        "",
        f"Machine: {result['machine']}",
        f"{Path(result['volume']).name}, {result['degradation']} ×{result['factors'][0]} 3D; best aligned baseline: {best} {target:.2f} dB. "
        "Training time excludes the measurements. The headline is the final checkpoint (what a run without the HR "
        "volume delivers); the best measurement is picked against the HR volume, an upper bound no user can select.",
        "",
        f"| field | PSNR at 1 min | at 4 min | at the end (time) | end − baseline (dB) "
        f"| best measurement − baseline (dB, picked on the HR volume) | first time ≥ baseline + {MARGIN} dB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, pts in result["curves"].items():
        def at(minutes: float) -> str:  # the measurement taken at that mark (the first one after it)
            got = [p["psnr"] for p in pts if p["seconds"] >= minutes * 60.0 - 1e-6]
            return f"{got[0]:.2f}" if got else "—"

        above = [p["seconds"] for p in pts if p["psnr"] >= target + MARGIN]
        last = pts[-1]
        lines.append(
            f"| {FIELDS[name]['label']} | {at(1)} | {at(4)} | {last['psnr']:.2f} ({last['seconds'] / 60:.1f} min, "
            f"{last['iteration']} it) | {last['psnr'] - target:+.2f} | {max(p['psnr'] for p in pts) - target:+.2f} "
            f"| {f'{above[0] / 60:.1f} min' if above else 'not reached'} |"
        )
    (out / "time_to_quality.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volume", default="colin27/ch2.nii.gz",
                   help="HR volume: a path, or a name in the shared data folder ($CUNERF_DATA, else ../shared/data)")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--degradation", default="nearest", choices=["nearest", "box"])
    p.add_argument("--fields", nargs="+", default=["spline", "hashgrid"], choices=sorted(FIELDS))
    p.add_argument("--minutes", type=float, default=10.0, help="training time per field")
    p.add_argument("--iterations", type=json.loads, default={"hashgrid": 3000},
                   help='scheduled iterations per field as JSON (the learning-rate decay spans them), e.g. {"hashgrid": 3000}')
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/time_to_quality/<degradation>)")
    p.add_argument("--work", default=None, help="LR volume and fits (checkpoints) folder "
                   "(default /tmp/cunerf_time_to_quality/<degradation>)")
    p.add_argument("--update-docs", dest="update_docs", action="store_true",
                   help="write the table into the Performance section of bundle/docs/README.md")
    p.add_argument("--table-only", dest="table_only", action="store_true",
                   help="only redraw the plot and table (and docs block) from the stored time_to_quality.json")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / "time_to_quality" / args.degradation)
    if args.work is None:
        args.work = str(Path("/tmp") / "cunerf_time_to_quality" / args.degradation)
    return args


if __name__ == "__main__":
    from docs_block import run_main

    run_main(parse_args, run, lambda a: publish(
        Path(a.out), json.loads((Path(a.out) / "time_to_quality.json").read_text()), a.update_docs))
