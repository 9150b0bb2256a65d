"""The README's Python snippet runs and does what it says (fits, renders ×2 with the documented shape)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippet_runs(capsys):
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no Python snippet"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the project's own documentation
    sr, grid = namespace["sr"], namespace["grid"]
    assert tuple(sr.shape) == (64, 64, 32) == grid.shape
    assert float(sr.min()) >= 0.0 and float(sr.max()) <= 1.0
    # the fit reproduces the input at the input's own voxels (output voxel 2·i is input voxel i)
    image = namespace["image"]
    err = (sr[::2, ::2, ::2] - image[0].as_tensor()).abs().mean()
    assert float(err) < 0.05, float(err)
    torch.testing.assert_close(torch.as_tensor(grid.spacing), torch.tensor([0.75, 0.75, 1.5], dtype=torch.float64))


def test_readme_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert "monai.bundle run training" in block[0] and "bundle/configs/train.json" in block[0]
    assert "pytest" in block[1]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -q -e \".[test]\"" in ci and "pytest -q -p no:cacheprovider tests" in ci
