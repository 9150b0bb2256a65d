"""The many-volume job (``cunerf batch``, :mod:`cunerf_monai.batch`): partition, names, and a 2-process ``torchrun``
run over three tiny volumes and a corrupt one — every good volume is fitted and rendered exactly once, the bad one is
reported, rank 0 writes the summary and the command exits with status 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cunerf_monai.batch import list_volumes, partition, volume_names

ROOT = Path(__file__).resolve().parents[2]
GOOD = ("alpha", "beta", "gamma")
BAD = "broken"
SETTINGS = ["--iterations", "4", "--batch_size", "64", "--scale", "2", "--prior", "none"]


def _volume(path: Path, freq: float) -> None:
    i, j, k = np.meshgrid(np.arange(12), np.arange(12), np.arange(8), indexing="ij")
    data = (np.sin(i / freq) * np.cos(j / 3.0) + k / 8.0).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))


@pytest.mark.parametrize(
    "n, world, expected",
    [(4, 2, [[0, 2], [1, 3]]), (3, 2, [[0, 2], [1]]), (2, 3, [[0], [1], []]), (5, 1, [[0, 1, 2, 3, 4]])],
)
def test_partition_is_strided_and_covers_every_item_once(n, world, expected):
    shares = [partition(n, r, world) for r in range(world)]
    assert shares == expected
    assert sorted(i for s in shares for i in s) == list(range(n))


def test_partition_rejects_bad_rank():
    with pytest.raises(ValueError):
        partition(3, 2, 2)


def test_listing_sorts_folders_lists_and_skips_output(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("b.nii.gz", "a.nii", "c.nrrd", "notes.txt", ".hidden.nii.gz"):
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "in" / "series1").mkdir()
    (tmp_path / "in" / "out").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("# volumes\nin/a.nii\nextra.nii.gz  # comment\n")
    (tmp_path / "extra.nii.gz").write_bytes(b"x")
    found = list_volumes([str(tmp_path / "in"), str(listing)], exclude=[tmp_path / "in" / "out"])
    names = [Path(f).name for f in found]
    assert names == ["extra.nii.gz", "a.nii", "b.nii.gz", "c.nrrd", "series1"]  # sorted by full path, de-duplicated
    assert volume_names(["/x/a.nii.gz", "/y/a.nii", "/z/b.nrrd", "/w/a"]) == ["a", "a-2", "b", "a-3"]
    with pytest.raises(FileNotFoundError):
        list_volumes([str(tmp_path / "nope")])


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("batch")
    inputs = base / "inputs"
    inputs.mkdir()
    for n, name in enumerate(GOOD):
        _volume(inputs / f"{name}.nii.gz", 2.0 + n)
    (inputs / f"{BAD}.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(300))  # gzip magic, then garbage
    out = base / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cunerf_monai.cli", "batch", "--inputs", str(inputs), "--out", str(out), *SETTINGS]
    env = dict(os.environ, CUNERF_BUNDLE_ROOT=str(ROOT / "bundle"), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=300)
    return {"inputs": inputs, "out": out, "stdout": res.stdout, "stderr": res.stderr, "returncode": res.returncode,
            "env": env}


def test_a_failed_volume_makes_the_job_exit_non_zero_after_the_summary(job):
    assert job["returncode"] != 0, job["stderr"][-4000:]
    assert (job["out"] / "summary.json").is_file()
    # torchrun reports rank 0's status 1 (a failed volume), not an error of the command (status 2)
    assert "exitcode  : 1" in job["stderr"] and "cunerf: error" not in job["stderr"], job["stderr"][-4000:]


def test_summarize_only_through_the_module_alias(job, tmp_path):
    """``python -m cunerf_monai.batch`` is ``cunerf batch``: --summarize_only rebuilds the summary from the rank
    files, and the failed volume still gives status 1 (status 0 with --nofail_on_error)."""
    out = job["out"]
    (out / "summary.json").unlink()
    cmd = [sys.executable, "-m", "cunerf_monai.batch", "--summarize_only", "--out", str(out)]
    res = subprocess.run(cmd, cwd=tmp_path, env=job["env"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-4000:]
    assert json.loads((out / "summary.json").read_text())["failed"] == 1
    assert "3 ok, 1 failed" in res.stdout
    res = subprocess.run([*cmd, "--nofail_on_error"], cwd=tmp_path, env=job["env"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-4000:]
    res = subprocess.run([*cmd[:-1], str(tmp_path / "empty")], cwd=tmp_path, env=job["env"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "No rank files" in res.stderr


def test_every_good_volume_is_rendered_exactly_once(job):
    out = job["out"]
    assert sorted(p.parent.name for p in out.rglob("sr.nii.gz")) == sorted(GOOD)
    for name in GOOD:
        sr = nib.load(str(out / name / "sr.nii.gz"))
        assert sr.shape == (24, 24, 16)
        np.testing.assert_allclose(np.linalg.norm(sr.affine[:3, :3], axis=0), [0.5, 0.5, 1.0], atol=1e-6)
        assert np.isfinite(sr.get_fdata()).all()
        assert "model" in torch.load(out / name / "model.pt", map_location="cpu", weights_only=False)
        assert json.loads((out / name / "fit.json").read_text())["input"].endswith(f"{name}.nii.gz")
    assert not (out / BAD / "sr.nii.gz").exists()
    # each volume in exactly one rank's record file, the one the strided partition gives it
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    indices = [rec["index"] for data in ranks for rec in data["records"]]
    assert sorted(indices) == [0, 1, 2, 3]
    for r, data in enumerate(ranks):
        assert [rec["index"] for rec in data["records"]] == partition(4, r, 2)


def test_summary_reports_the_corrupt_volume(job):
    out = job["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["num_volumes"], summary["ok"], summary["failed"], summary["world_size"]) == (4, 3, 1, 2)
    rows = {row["volume"]: row for row in summary["volumes"]}
    assert list(rows) == sorted([*GOOD, BAD])  # the sorted order, which the partition strides over
    for i, name in enumerate(rows):
        assert rows[name]["rank"] == i % 2
    assert rows[BAD]["status"] == "failed" and rows[BAD]["output"] is None
    assert f"{BAD}.nii.gz" in rows[BAD]["error"] and rows[BAD]["error"].startswith("ValueError")
    for name in GOOD:
        assert rows[name]["status"] == "ok" and rows[name]["seconds"] > 0
        assert rows[name]["output"] == str(out / name / "sr.nii.gz")
    table = (out / "summary.md").read_text()
    assert "3 ok, 1 failed" in table and f"| {BAD} | 0 | failed |" in table
    assert "3 ok, 1 failed" in job["stdout"]  # rank 0 printed it (once)
    assert job["stdout"].count("| volume | rank |") == 1


def test_fits_do_not_depend_on_the_rank(job, tmp_path):
    """A volume fitted by rank 1 is bit-identical to a single-process fit of it (no process group while fitting)."""
    from cunerf_monai.fitting import fit

    result = fit(job["inputs"] / "beta.nii.gz", tmp_path / "fit", {"seed": 0, "progress": False, "prior": "none",
                                                                    "num_iterations": 4, "batch_size": 64})
    single = torch.load(result.checkpoint, map_location="cpu", weights_only=False)["model"]
    batch = torch.load(job["out"] / "beta" / "model.pt", map_location="cpu", weights_only=False)["model"]
    assert single.keys() == batch.keys()
    for key in single:
        assert torch.equal(single[key], batch[key]), key
