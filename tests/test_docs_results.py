"""The Performance tables of the bundle docs are exactly what the benchmark scripts produce from their stored results
(no number in the docs that a script did not write)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "bundle" / "docs" / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


def block(name: str) -> str:
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, flags=re.S)
    assert found, f"the docs have no {name} block"
    return found.group(1).strip()


def test_quality_table_is_the_stored_runs():
    import quality

    table = block("quality")
    assert table == quality.docs_table(RESULTS / "quality").strip()
    assert table.count("\n") >= 3  # header, rule and at least two runs


@pytest.mark.parametrize(
    "name, result",
    [
        ("ablation", RESULTS / "ablation" / "ablation.md"),
        ("time_to_quality_nearest", RESULTS / "time_to_quality" / "nearest" / "time_to_quality.md"),
        ("time_to_quality_box", RESULTS / "time_to_quality" / "box" / "time_to_quality.md"),
        ("convergence", RESULTS / "convergence" / "convergence.md"),
        ("prior", RESULTS / "prior.md"),
    ],
)
def test_tables_are_the_result_files(name, result):
    """Tables whose result file starts with a title line (dropped in the docs)."""
    if not result.exists():
        pytest.skip(f"{result.relative_to(ROOT)} not produced yet")
    assert block(name) == result.read_text(encoding="utf-8").split("\n", 2)[2].strip()


@pytest.mark.parametrize("name", ["main_job", "throughput", "render", "side_by_side", "forward_model_study"])
def test_blocks_are_the_whole_result_files(name):
    assert block(name) == (RESULTS / f"{name}.md").read_text(encoding="utf-8").strip()


def test_replace_block_rewrites_only_the_block(tmp_path):
    from docs_block import replace_block

    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- t:begin -->\nold\n<!-- t:end -->\noutro\n")
    replace_block(doc, "t", "| a |\n|---|")
    assert doc.read_text() == "intro\n<!-- t:begin -->\n| a |\n|---|\n<!-- t:end -->\noutro\n"
    with pytest.raises(ValueError, match="no <!-- u:begin -->"):
        replace_block(doc, "u", "x")
