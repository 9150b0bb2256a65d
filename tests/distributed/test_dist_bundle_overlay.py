"""The multi-GPU overlay on CPU: ``torchrun --nproc_per_node=2`` with the gloo backend on a tiny volume.

Two runs of ``train.json + multi_gpu_train.json`` with a test overlay whose hooks dump, per rank, the weights,
the first training batch, the random streams and every file write into the checkpoint folder (a Python audit
hook). The first run stops after its second epoch (iteration 4 of 8), the second resumes it to the end.
Checks: both ranks run every iteration, draw different cubes and end with bit-identical weights (the gradients
were averaged; the weights moved); only rank 0 writes checkpoints; on resume each rank gets its own random
streams back from rank 0's checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
NPROC = 2
ARGS = ["--num_iterations", "8", "--epoch_length", "2", "--batch_size", "64", "--progress", "False", "--prior", "none"]

HOOKS = '''
"""Per-rank probes for the overlay test (imported by the test overlay)."""
import os
import sys

import torch
import torch.distributed as dist
from ignite.engine import Events


def _rank():
    return dist.get_rank() if dist.is_initialized() else 0


def audit_writes(ckpt_dir, out_dir):
    """Log every file creation, write-open or rename inside ckpt_dir to out_dir/writes_rank<r>.txt."""
    ckpt_dir, log = os.path.realpath(ckpt_dir), os.path.join(out_dir, f"writes_rank{_rank()}.txt")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def inside(p):
        return isinstance(p, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(p)).startswith(ckpt_dir)

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags)
            hit = writing and inside(path)
        elif event in ("os.rename", "os.replace", "tempfile.mkstemp", "shutil.copyfile", "shutil.move"):
            hit = any(inside(a) for a in args[:2])
        else:
            return
        if hit:
            with open(log, "a") as f:
                f.write(f"{event} {args[:2]}\\n")

    os.makedirs(out_dir, exist_ok=True)
    open(log, "w").close()
    sys.addaudithook(hook)


def _weights(network):
    module = getattr(network, "module", network)
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _streams(dataset, prepare_batch):
    return {"data": dataset.state_dict(), "sampler": prepare_batch.state_dict(), "torch": torch.get_rng_state()}


def dump(trainer, network, dataset, prepare_batch, out_dir):
    r = _rank()

    @trainer.on(Events.STARTED)
    def _initial(engine):
        torch.save(_weights(network), os.path.join(out_dir, f"initial_rank{r}.pt"))
        torch.save(_streams(dataset, prepare_batch), os.path.join(out_dir, f"streams_start_rank{r}.pt"))

    @trainer.on(Events.ITERATION_STARTED(once=1) | Events.ITERATION_STARTED(once=5))
    def _first_batch(engine):
        batch = {k: v.cpu() for k, v in engine.state.batch.items()}
        torch.save(batch, os.path.join(out_dir, f"batch{engine.state.iteration}_rank{r}.pt"))

    @trainer.on(Events.COMPLETED)
    def _final(engine):
        torch.save(_weights(network), os.path.join(out_dir, f"final_rank{r}.pt"))
        torch.save(_streams(dataset, prepare_batch), os.path.join(out_dir, f"streams_end_rank{r}.pt"))
        with open(os.path.join(out_dir, f"ran_rank{r}_of_{dist.get_world_size()}.txt"), "w") as f:
            f.write(str(engine.state.iteration))


def stop_after_epochs(trainer, epochs):
    """Stop the run at the end of epoch `epochs` (after the checkpoint handler, registered earlier)."""
    if epochs:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=int(epochs)), lambda engine: engine.terminate())
'''


def _probe_overlay(stop_after: int = 0) -> dict:
    training = json.loads((CONFIGS / "train.json").read_text())["run"]  # the one run body (resuming broadcasts rank 0's last.pt)
    steps = [
        "$ddp_probe_hooks.audit_writes(@ckpt_dir, @output_dir)",
        *training[:-1],
        "$ddp_probe_hooks.dump(@train#trainer, @network, @train#dataset, @train#prepare_batch, @output_dir)",
        f"$ddp_probe_hooks.stop_after_epochs(@train#trainer, {stop_after})",
        training[-1],
    ]
    return {"+imports": ["$import ddp_probe_hooks"], "training": steps}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("ddp")
    (base / "ddp_probe_hooks.py").write_text(textwrap.dedent(HOOKS))
    volume = base / "v.nii.gz"
    i, j, k = np.meshgrid(np.arange(12), np.arange(12), np.arange(8), indexing="ij")
    data = (np.sin(i / 2.0) * np.cos(j / 3.0) + k / 8.0).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.2, 2.0, 1.0])), str(volume))
    return {"base": base, "volume": str(volume)}


#: what the C++ runtime prints when a rank aborts without a Python exception
NATIVE_ABORT = "terminate called without an active exception"


def _torchrun(setup: dict, out: Path, overlay: dict, volume: str | None = None, args=ARGS) -> subprocess.CompletedProcess:
    probe = out.parent / f"{out.name}_probe.json"
    probe.write_text(json.dumps(overlay))
    files = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(probe)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={NPROC}",
        "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(files),
        "--input_image", volume or setup["volume"], "--output_dir", str(out), *args,
    ]
    env = dict(
        os.environ, CUNERF_BUNDLE_ROOT=str(ROOT / "bundle"), OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(setup["base"]), os.environ.get("PYTHONPATH", "")]),
    )
    before = out.parent / f"{out.name}_before"  # the folder as the run found it (a resumed run needs it again)
    shutil.rmtree(before, ignore_errors=True)
    if out.exists():
        shutil.copytree(out, before)
    res = subprocess.run(cmd, cwd=setup["base"], env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    if res.returncode != 0 and NATIVE_ABORT in res.stderr:
        # a rank aborted inside the native process-group code (seen once in a full run on 2 loaded cores, with no
        # Python error on any rank): run once more from the same start, saying so; a Python error fails at once
        print(f"torchrun: a rank aborted natively ({NATIVE_ABORT!r}); running once more from the same start")
        shutil.rmtree(out, ignore_errors=True)
        if before.exists():
            shutil.copytree(before, out)
        res = subprocess.run(cmd, cwd=setup["base"], env=env, capture_output=True, encoding="utf-8", errors="replace",
                             timeout=300)
    shutil.rmtree(before, ignore_errors=True)
    return res


@pytest.fixture(scope="module")
def runs(setup) -> dict:
    out = setup["base"] / "run"
    res = _torchrun(setup, out, _probe_overlay(stop_after=2))
    assert res.returncode == 0, res.stderr[-4000:]
    first = setup["base"] / "first"
    shutil.copytree(out, first)  # the stopped run's dumps and checkpoints, before the resumed run replaces them
    res = _torchrun(setup, out, _probe_overlay())
    assert res.returncode == 0, res.stderr[-4000:]
    return {"first": first, "resumed": out}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_both_ranks_run_every_iteration(runs):
    for r in range(NPROC):
        assert (runs["first"] / f"ran_rank{r}_of_{NPROC}.txt").read_text() == "4"  # stopped after epoch 2
        assert (runs["resumed"] / f"ran_rank{r}_of_{NPROC}.txt").read_text() == "8"


def test_ranks_draw_different_cubes(runs):
    for run, iteration in ((runs["first"], 1), (runs["resumed"], 5)):
        b0, b1 = _load(run / f"batch{iteration}_rank0.pt"), _load(run / f"batch{iteration}_rank1.pt")
        assert b0["centre"].shape == b1["centre"].shape == (64, 3)
        assert not torch.equal(b0["centre"], b1["centre"])


def test_gradients_are_averaged_so_ranks_end_identical(runs):
    first, resumed = runs["first"], runs["resumed"]
    _assert_same_weights(_load(first / "initial_rank0.pt"), _load(first / "initial_rank1.pt"))  # DDP broadcast
    for run in (first, resumed):  # the same averaged gradient on both ranks at every step
        _assert_same_weights(_load(run / "final_rank0.pt"), _load(run / "final_rank1.pt"))
    # the resumed run starts from the stopped run's weights, and training moved them
    _assert_same_weights(_load(resumed / "initial_rank0.pt"), _load(first / "final_rank0.pt"))
    init, final = _load(first / "initial_rank0.pt"), _load(resumed / "final_rank0.pt")
    assert any(not torch.equal(init[k], final[k]) for k in init)
    _assert_same_weights(_load(resumed / "checkpoints" / "model.pt")["model"], final)  # plain keys, no "module."


def test_only_rank0_writes_checkpoints(runs):
    for run in (runs["first"], runs["resumed"]):
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "model.pt"]
        assert (run / "writes_rank1.txt").read_text() == ""
        writes0 = (run / "writes_rank0.txt").read_text()
        assert "last.pt" in writes0 and "model.pt" in writes0


def test_each_rank_resumes_its_own_random_streams(runs):
    first, resumed = runs["first"], runs["resumed"]
    saved = _load(first / "checkpoints" / "last.pt")
    assert saved["trainer"]["iteration"] == 4
    for key in ("data", "sampler", "random"):
        assert len(saved[key]["per_rank"]) == NPROC  # every rank's stream, gathered into rank 0's file
    for r in range(NPROC):
        at_stop, at_resume = _load(first / f"streams_end_rank{r}.pt"), _load(resumed / f"streams_start_rank{r}.pt")
        assert torch.equal(saved["data"]["per_rank"][r]["generator"], at_stop["data"]["generator"])
        assert torch.equal(saved["sampler"]["per_rank"][r]["generator"], at_stop["sampler"]["generator"])
        for key in ("data", "sampler"):
            assert torch.equal(at_resume[key]["generator"], at_stop[key]["generator"]), (r, key)
        assert torch.equal(at_resume["torch"], at_stop["torch"])
    ends = [_load(first / f"streams_end_rank{r}.pt") for r in range(NPROC)]
    assert not torch.equal(ends[0]["data"]["generator"], ends[1]["data"]["generator"])
    assert not torch.equal(ends[0]["sampler"]["generator"], ends[1]["sampler"]["generator"])


def test_rank0_trains_the_prior_and_every_rank_holds_its_result(setup):
    """A thick-slice volume under torchrun: only rank 0 trains the prior (both ranks log at INFO while the prior is
    built, so a prior trained on every rank would log its training twice); both ranks fit the same fused volume."""
    volume = setup["base"] / "thick.nii.gz"
    i, j, k = np.meshgrid(np.arange(24), np.arange(20), np.arange(6), indexing="ij")
    data = ((np.sin(i / 2.0) * np.cos(j / 3.0) > 0) + k / 6.0).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 4.0, 1.0])), str(volume))
    args = [*ARGS[: ARGS.index("--prior")], "--prior", "auto", "--prior_steps", "4", "--prior_min_gain", "-100",
            "--forward_model", json.dumps(["point", "point", "box"])]
    out = setup["base"] / "prior"
    res = _torchrun(setup, out, _probe_overlay(), volume=str(volume), args=args)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (out / "checkpoints" / "prior.pt").is_file()
    assert (res.stdout + res.stderr).count("training planes") == 1
    final0, final1 = _load(out / "final_rank0.pt"), _load(out / "final_rank1.pt")
    assert tuple(final0["coarse.samples"].shape) == (24, 20, 24)  # the prior's 1 mm grid along the 4 mm axis
    _assert_same_weights(final0, final1)
