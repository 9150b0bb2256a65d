"""Throughput of each field: training points per second (forward + backward + optimiser step, through the inferer)
and rendering voxels per second, on the machine it runs on.

    python benchmarks/throughput.py [--iterations 10] [--out benchmarks/results/throughput.md]

Fields are built from the bundle's own configs (the default ``train.json`` B-spline grid, the
``fields/hashgrid.json`` hash grid, the hash grid on a B-spline prior of ``fields/hashgrid_residual.json``
and the paper's MLP from ``train_paper.json``) with each config's own sample
counts, on a Colin27-sized geometry (181 x 217 x 181). A point is one field
evaluation; a training iteration evaluates ``B · (N_c + N_c + N_f)`` points (coarse pass, then the fine pass on the
union of coarse and fine samples).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cunerf_monai.allocator import retain_freed_memory  # noqa: E402
from cunerf_monai.enums import BatchKeys  # noqa: E402
from cunerf_monai.evaluation.selfeval import machine_description  # noqa: E402

CONFIGS = ROOT / "bundle" / "configs"


def build(overlays: list[str], shape=(181, 217, 181), batch_size: int | None = None, overrides: dict | None = None):
    """Network, inferer, optimizer and a training batch from the bundle config (+ overlays, + ``overrides`` by config
    id) for a volume shape."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), *[str(CONFIGS / o) for o in overlays]])
    image = MetaTensor(torch.rand(1, *shape), affine=torch.eye(4))
    image.meta["intensity_range"] = [0.0, 1.0]
    parser["train"]["image"] = "$@_bench_image"
    parser["_bench_image"] = image
    parser["device"] = "$torch.device('cpu')"
    if batch_size is not None:
        parser["batch_size"] = batch_size
    for key, value in (overrides or {}).items():
        parser[key] = value
    retain_freed_memory(parser.get_parsed_content("device"), parser["retain_freed_memory"])  # as train.json does
    network = parser.get_parsed_content("network")
    inferer = parser.get_parsed_content("inferer")
    optimizer = parser.get_parsed_content("optimizer")
    dataset = parser.get_parsed_content("train#dataset")
    return network, inferer, optimizer, dataset, parser


def training_step(network, inferer, optimizer, dataset, loss_fn, seed: int = 0):
    """A function doing one training step of the bundle's trainer (batch → inferer → loss → backward → step)."""
    gen = torch.Generator().manual_seed(seed)
    network.train()

    def step() -> None:
        b = dataset.sample(gen)
        pred = inferer(b[BatchKeys.CENTRE], network, half_extent=b[BatchKeys.HALF_EXTENT], generator=gen)
        loss = loss_fn(pred, b[BatchKeys.TARGET])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_rate(network, inferer, optimizer, dataset, iterations: int, loss_fn) -> dict:
    """Training points/s over ``iterations`` steps after one warm-up step."""
    per_target = inferer.points_per_target(training=True)
    step = training_step(network, inferer, optimizer, dataset, loss_fn)
    step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    seconds = time.perf_counter() - start
    points = iterations * dataset.batch_size * per_target
    return {"points_per_second": points / seconds, "seconds_per_iteration": seconds / iterations,
            "batch_size": dataset.batch_size, "points_per_target": per_target}


def render_rate(network, inferer, n_targets: int) -> dict:
    """Rendering voxels/s with the config's test-time sample counts."""
    centres = torch.rand(n_targets, 3) * 1.8 - 0.9
    half = torch.full((3,), 0.005)
    inferer.render_points(network, centres[: min(1000, n_targets)], min(1000, n_targets), half)
    start = time.perf_counter()
    inferer.render_points(network, centres, n_targets, half)
    seconds = time.perf_counter() - start
    per_voxel = inferer.points_per_target(training=False)
    return {"voxels_per_second": n_targets / seconds, "points_per_voxel": per_voxel,
            "points_per_second": n_targets * per_voxel / seconds}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=5, help="timed training iterations per field")
    ap.add_argument("--render_voxels", type=int, default=200_000, help="voxels rendered per field")
    ap.add_argument("--paper_batch", type=int, default=256, help="cubes per iteration for the paper MLP (its "
                    "points/s hardly depends on it; 2048 cubes x 320 points takes minutes per step on a CPU)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput.md"))
    args = ap.parse_args(argv)
    from cunerf_monai.losses import AdaptiveRenderingLoss

    rows = []
    cases = (
        ("B-spline grid (train.json)", [], None),
        ("hash grid (fields/hashgrid.json)", ["fields/hashgrid.json"], None),
        ("hash grid on the B-spline prior (fields/hashgrid_residual.json)", ["fields/hashgrid_residual.json"], None),
        ("paper MLP (train_paper.json)", ["train_paper.json"], args.paper_batch),
    )
    for name, overlays, batch in cases:
        network, inferer, optimizer, dataset, _ = build(overlays, batch_size=batch)
        params = sum(p.numel() for p in network.parameters())
        tr = train_rate(network, inferer, optimizer, dataset, args.iterations, AdaptiveRenderingLoss())
        paper = "train_paper.json" in overlays
        rr = render_rate(network, inferer, args.render_voxels // 10 if paper else args.render_voxels)
        rows.append({"field": name, "parameters": params, **{f"train_{k}": v for k, v in tr.items()},
                     **{f"render_{k}": v for k, v in rr.items()}})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[-1]["train_points_per_second"]
    lines = [
        f"Machine: {machine_description()}",
        "",
        "| field | parameters | cubes/iter × points/cube | training points/s | s/iteration | render points/voxel |"
        " render voxels/s | training speed vs paper MLP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['field']} | {r['parameters']:,} | {r['train_batch_size']} × {r['train_points_per_target']} | "
            f"{r['train_points_per_second']:,.0f} | {r['train_seconds_per_iteration']:.2f} | "
            f"{r['render_points_per_voxel']} | {r['render_voxels_per_second']:,.0f} | "
            f"{r['train_points_per_second'] / base:.1f}× |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
