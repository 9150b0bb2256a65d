"""The version is said once (``cunerf_monai.__version__``); the package metadata and the bundle follow it."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import cunerf_monai

ROOT = Path(__file__).resolve().parents[1]


def test_setup_cfg_reads_the_package_version():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: cunerf_monai.__version__"


def test_bundle_metadata_and_changelog_agree_with_the_package():
    meta = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["version"] == cunerf_monai.__version__
    newest = next(iter(meta["changelog"]))
    assert newest == cunerf_monai.__version__, "the changelog's first entry is the current version"
    as_numbers = [tuple(int(p) for p in v.split(".")) for v in meta["changelog"]]
    assert as_numbers == sorted(as_numbers, reverse=True), "changelog entries newest first"
