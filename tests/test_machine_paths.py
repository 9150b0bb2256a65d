"""No tracked file names one machine's folders; the benchmarks find the shared data relative to the repository
or through ``$CUNERF_DATA`` and record volumes relative to it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

MACHINE_FOLDER = "/" + "work" + "/"  # spelled in pieces so that this file does not name it


def test_no_tracked_file_names_a_machine_folder():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    offenders = []
    for name in (f.decode() for f in files if f):
        path = ROOT / name
        if not path.is_file():
            continue
        if MACHINE_FOLDER.encode() in path.read_bytes():
            offenders.append(name)
    assert offenders == [], f"files naming {MACHINE_FOLDER}: {offenders}"


def test_data_folder_is_found_beside_the_repository_or_from_the_environment(tmp_path, monkeypatch):
    from data_paths import data_path, data_root, relative_to_data

    monkeypatch.delenv("CUNERF_DATA", raising=False)
    assert data_root() == ROOT.parent / "shared" / "data"
    monkeypatch.setenv("CUNERF_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert data_path("colin27/ch2.nii.gz") == str(tmp_path / "colin27" / "ch2.nii.gz")
    assert relative_to_data(tmp_path / "colin27" / "ch2.nii.gz") == "colin27/ch2.nii.gz"
    outside = tmp_path.parent / "elsewhere.nii.gz"
    assert relative_to_data(outside) == str(outside)
    assert data_path(str(outside)) == str(outside)  # an absolute path is used as it is


def test_stored_results_name_repository_and_data_paths_relatively(tmp_path, monkeypatch):
    """A run's row names a saved prior in the repository's runs folder and a volume in the data folder relative to
    them; other paths and other values stay as they are."""
    from data_paths import portable

    monkeypatch.setenv("CUNERF_DATA", str(tmp_path))
    row = {"overrides": {"prior": str(ROOT / "runs" / "quality" / "a" / "fit")},
           "input": [str(tmp_path / "colin27" / "ch2.nii.gz"), "/elsewhere/x.nii.gz", 3, None]}
    assert portable(row) == {"overrides": {"prior": "runs/quality/a/fit"},
                             "input": ["colin27/ch2.nii.gz", "/elsewhere/x.nii.gz", 3, None]}
