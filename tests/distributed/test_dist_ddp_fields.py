"""DDP and the inferer's two field calls per step, checked under ``torchrun --nproc_per_node=2`` (gloo, CPU).

The inferer calls a DDP-wrapped :class:`~cunerf_monai.networks.CuNeRFModel` twice before one backward
(``network(points, field="coarse"|"fine", channel_dim=-1)``). A script run on two ranks, each with its own
targets and samples, compares the DDP gradients with an unwrapped copy's local gradients: after backward every
rank must hold the mean of the ranks' local gradients, for a shared field and for separate coarse/fine fields,
over several steps. Controls: calling the fields past DDP's ``forward`` leaves the gradients local (what the
inferer avoids), and with ``num_fine = 0`` and a separate fine field the overlay's ``find_unused_parameters``
rule keeps DDP working. Rendering through the wrapped model on rank 0 alone must not wait for rank 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r'''
import copy
import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from cunerf_monai.inferers import CuNeRFInferer
from cunerf_monai.losses import AdaptiveRenderingLoss
from cunerf_monai.networks import CuNeRFModel, PositionalMLPField

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
HALF = torch.full((3,), 0.05)


def field(seed):
    torch.manual_seed(seed)
    return PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=2, skips=())


def flat_grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


def gather(t):
    out = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return out


def run_case(separate, num_fine, bypass_forward=False, steps=3):
    model = CuNeRFModel(field(1), field(2) if separate else None)
    local = copy.deepcopy(model)
    ddp = DDP(model, forward_sync_buffers=False, find_unused_parameters=bool(separate and num_fine == 0))
    inferer, loss_fn = CuNeRFInferer(num_coarse=4, num_fine=num_fine), AdaptiveRenderingLoss()
    result = {"identical": [], "mean_of_local": [], "local_differ": []}
    for step in range(steps):
        g = torch.Generator().manual_seed(1000 * step + rank)  # each rank its own targets and samples
        x, target = torch.rand(16, 3, generator=g) * 2 - 1, torch.rand(16, generator=g)
        ddp.zero_grad(set_to_none=True)
        local.zero_grad(set_to_none=True)
        net = ddp.module if bypass_forward else ddp
        out = inferer(x, net, half_extent=HALF, generator=torch.Generator().manual_seed(7 + step + 100 * rank))
        loss_fn(out, target).backward()
        ref = inferer(x, local, half_extent=HALF, generator=torch.Generator().manual_seed(7 + step + 100 * rank))
        loss_fn(ref, target).backward()
        mine, theirs = gather(flat_grads(model)), gather(flat_grads(local))
        result["identical"].append(all(torch.equal(mine[0], m) for m in mine))
        result["mean_of_local"].append(bool(torch.allclose(mine[rank], sum(theirs) / world, rtol=1e-5, atol=1e-7)))
        result["local_differ"].append(not torch.equal(theirs[0], theirs[1]))
        with torch.no_grad():  # the same SGD step on both copies keeps the reference in line
            for p, q in zip(model.parameters(), local.parameters()):
                if p.grad is not None:
                    p -= 0.1 * p.grad
                q.copy_(p)
    return result


results = {
    "shared": run_case(separate=False, num_fine=4),
    "separate": run_case(separate=True, num_fine=4),
    "separate_no_fine_pass": run_case(separate=True, num_fine=0),
    "bypass_forward": run_case(separate=True, num_fine=4, bypass_forward=True, steps=1),
}

# rendering (eval, no grad) through the wrapped model on rank 0 only: no collective may run inside
ddp = DDP(CuNeRFModel(field(1), field(2)), forward_sync_buffers=False)
if rank == 0:
    values = CuNeRFInferer(num_coarse=4, num_fine=4).render_points(ddp, torch.zeros(10, 3), 10, HALF)
    results["rank0_render"] = list(values.shape)
dist.barrier()
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
dist.destroy_process_group()
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("ddp_fields")
    script, out = base / "ddp_fields.py", base / "results.json"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out)]
    res = subprocess.run(cmd, cwd=base, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(Path(out).read_text())


@pytest.mark.parametrize("case", ["shared", "separate", "separate_no_fine_pass"])
def test_two_forward_calls_then_backward_average_gradients(results, case):
    r = results[case]
    assert all(r["local_differ"])  # the ranks' own gradients differ (different targets and samples) ...
    assert all(r["identical"])  # ... yet DDP leaves the same gradient on both ranks ...
    assert all(r["mean_of_local"])  # ... their mean, at every step


def test_calling_fields_past_ddp_forward_leaves_gradients_local(results):
    r = results["bypass_forward"]
    assert r["local_differ"] == [True] and r["identical"] == [False]


def test_rendering_on_rank0_alone_does_not_wait_for_other_ranks(results):
    assert results["rank0_render"] == [10]
