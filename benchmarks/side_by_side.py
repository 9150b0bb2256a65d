"""Training speed of the paper configuration here and in the authors' code, side by side on this machine.

    python benchmarks/side_by_side.py --authors-code /path/to/CuNeRF [--iterations 3] [--repeats 2] [--update-docs]

``--authors-code`` is a checkout of github.com/NarcissusEx/CuNeRF (its ``src/`` is imported, never copied). Its
training step runs unchanged on the CPU (the only port is not setting a CUDA default tensor type): cube sampling
→ coarse NeRFMLP → cube rendering → importance sampling → fine NeRFMLP → rendering → adaptive loss → backward →
Adam step, on a synthetic batch in its dataset's format. This project's step is the bundle's
``train_paper.json`` trainer step (inferer + ``AdaptiveRenderingLoss`` + Adam) with the same network (the layers
the authors' forward actually applies: 7 linear layers of width 256, the encoded input re-entering before the
5th, L = 10) and the same point counts (its example config: 1024 cubes × (64 coarse + 128 fine) MLP points).

The authors' code is also timed with this project's allocator setting (``cunerf_monai.allocator``, which the
bundle's training applies), to show how much of the difference that setting alone makes. Each run has its own
process (peak RSS is its own). Results go to
``benchmarks/results/side_by_side.{md,json}``, and with ``--update-docs`` into the bundle docs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
SIDES = ("authors", "authors_retain", "ours")
BATCH, N_COARSE, N_FINE = 1024, 64, 64  # the authors' configs/example.yaml: bs_train, n_samples, n_imps
#: The authors' network (configs/example.yaml) and the same layers in PositionalMLPField terms.
AUTHORS_MODEL = {"netD": 8, "netW": 256, "in_ch": 3, "out_ch": 2, "skips": [4], "max_freq": 10,
                 "p_fns": ["sin", "cos"]}
OUR_FIELD = {"_target_": "cunerf_monai.networks.PositionalMLPField", "num_frequencies": 10,
             "hidden_features": 256, "num_layers": 7, "skips": [4]}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_steps(step, iterations: int) -> float:
    """Median seconds per step over ``iterations`` steps after one warm-up step."""
    step()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def _authors_modules(code: Path) -> dict:
    """The authors' ``src`` submodules, imported from their checkout without running ``src/__init__.py`` (which
    pulls in SimpleITK, cv2 and their experiment manager)."""
    src = Path(code) / "src"
    if not (src / "sampling.py").is_file():
        raise FileNotFoundError(f"{code} is not a CuNeRF checkout: {src / 'sampling.py'} is missing.")
    pkg = types.ModuleType("cunerf_authors_src")
    pkg.__path__ = [str(src)]
    sys.modules["cunerf_authors_src"] = pkg
    names = ("sampling", "rendering", "importance", "loss", "models")
    return {n: importlib.import_module(f"cunerf_authors_src.{n}") for n in names}


def run_authors(code: Path, iterations: int, seed: int = 0, retain: bool = False) -> dict:
    """Seconds per training step of the authors' code on a batch in their dataset's format (``retain``: with this
    project's allocator setting, :func:`cunerf_monai.allocator.retain_freed_memory`, applied to their process)."""
    if retain:
        from cunerf_monai.allocator import retain_freed_memory

        retain_freed_memory("cpu")
    m = _authors_modules(code)
    torch.manual_seed(seed)
    model = m["models"].NeRFMLP(**AUTHORS_MODEL)
    model_ft = m["models"].NeRFMLP(**AUTHORS_MODEL)
    optim = torch.optim.Adam(list(model.parameters()) + list(model_ft.parameters()), lr=2e-3, betas=(0.9, 0.999),
                             eps=1e-6)
    # Their Medical3D training batch: one LR slice, 1024 cube centres (x, y, z) with x/y cube bounds; coordinates
    # span [-pi, pi] over the padded volume, pad = scale (x2) voxels; depths are the slice's z bounds.
    half = 2 * math.pi / 256 * 2
    gts = torch.rand(BATCH)
    xy = torch.rand(BATCH, 2) * 6 - 3
    z = torch.full((BATCH, 1), 0.3)
    coords = torch.cat([xy, z, xy[:, :1] - half, xy[:, :1] + half, xy[:, 1:] - half, xy[:, 1:] + half], 1)
    depths = (torch.tensor([0.3 - half]), torch.tensor([0.3 + half]))
    sample = lambda b, d: m["sampling"].cube_sampling(b, d, n_samples=N_COARSE, is_train=True, R=None)  # noqa: E731

    def step():  # their Cfg.Render + run.train, minus logging
        optim.zero_grad()
        ans0 = sample(coords, depths)
        raw0 = model(ans0["pts"])
        out0 = m["rendering"].cube_rendering(raw0, **ans0)
        ans = m["importance"].cube_imp(**ans0, **out0, is_train=True, n_samples=N_FINE)
        raw = model_ft(ans["pts"])
        out = m["rendering"].cube_rendering(raw, **ans)
        loss = m["loss"].Adaptive_MSE_LOSS(out["rgb"], out0["rgb"], gts)
        loss.backward()
        optim.step()

    seconds = _time_steps(step, iterations)
    return {"seconds_per_iteration": seconds, "points_per_iteration": BATCH * (N_COARSE + N_COARSE + N_FINE),
            "peak_rss_mb": _peak_rss_mb()}


def run_ours(iterations: int, seed: int = 0) -> dict:
    """Seconds per training step of ``train_paper.json`` with the authors' network and point counts."""
    from throughput import build, training_step

    from cunerf_monai.losses import AdaptiveRenderingLoss

    torch.manual_seed(seed)
    overrides = {"num_coarse": N_COARSE, "num_fine": N_FINE, "field": dict(OUR_FIELD),
                 "network_def#fine": dict(OUR_FIELD)}
    network, inferer, optimizer, dataset, _ = build(["train_paper.json"], shape=(91, 109, 91), batch_size=BATCH,
                                                    overrides=overrides)
    seconds = _time_steps(training_step(network, inferer, optimizer, dataset, AdaptiveRenderingLoss(), seed),
                          iterations)
    per_target = inferer.points_per_target(training=True)
    return {"seconds_per_iteration": seconds, "points_per_iteration": dataset.batch_size * per_target,
            "peak_rss_mb": _peak_rss_mb(),
            "parameters": sum(p.numel() for p in network.parameters())}


def table(rows: dict, machine: str, iterations: int, repeats: int = 1) -> str:
    """Markdown table of the runs and their speed relative to the authors' code as shipped."""
    lines = [f"Machine: {machine}; median of {iterations} timed iterations after one warm-up, best of {repeats} "
             "alternating runs of each (one process per run).", "",
             "| code | MLP points/iteration | s/iteration | training points/s | peak RSS | speed vs authors |",
             "|---|---|---|---|---|---|"]
    base = rows["authors"]["points_per_iteration"] / rows["authors"]["seconds_per_iteration"]
    labels = {"authors": "authors' code (CPU, unchanged `src/`)",
              "authors_retain": "authors' code + this project's allocator setting",
              "ours": "cunerf-monai `train_paper.json` with the authors' network (7 layers) and point counts"}
    for side in SIDES:
        r = rows[side]
        rate = r["points_per_iteration"] / r["seconds_per_iteration"]
        lines.append(f"| {labels[side]} | {r['points_per_iteration']:,} | {r['seconds_per_iteration']:.2f} | "
                     f"{rate:,.0f} | {r['peak_rss_mb'] / 1024:.2f} GB | {rate / base:.2f}× |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors-code", required=True, help="a checkout of github.com/NarcissusEx/CuNeRF")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per run")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    ap.add_argument("--update-docs", action="store_true", help="write the table into bundle/docs/README.md")
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:
        result = (run_ours(args.iterations) if args.side == "ours"
                  else run_authors(Path(args.authors_code), args.iterations, retain=args.side == "authors_retain"))
        print("RESULT " + json.dumps(result), flush=True)
        return
    from cunerf_monai.evaluation.selfeval import machine_description

    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(args.repeats):  # the sides alternate, so a slow spell of the machine hits them alike
        for side in SIDES:
            cmd = [sys.executable, __file__, "--authors-code", args.authors_code, "--iterations",
                   str(args.iterations), "--side", side]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"the {side} run failed:\n{proc.stderr[-3000:]}")
            out = proc.stdout
            runs[side].append(json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:]))
            print(side, runs[side][-1], flush=True)
    rows = {side: min(r, key=lambda x: x["seconds_per_iteration"]) for side, r in runs.items()}
    text = table(rows, machine_description(), args.iterations, args.repeats)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "side_by_side.md").write_text(text + "\n")
    (RESULTS / "side_by_side.json").write_text(
        json.dumps({"machine": machine_description(), "iterations": args.iterations, "repeats": args.repeats,
                    "best": rows, "runs": runs}, indent=2))
    print(text)
    if args.update_docs:
        from docs_block import DOCS, replace_block

        replace_block(DOCS, "side_by_side", text)


if __name__ == "__main__":
    main()
