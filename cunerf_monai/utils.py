"""Small shared utilities: where the bundle lives, atomic file writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["bundle_root", "atomic_path", "sample_volume_path"]


def bundle_root() -> str:
    """The bundle folder: ``$CUNERF_BUNDLE_ROOT``, else ``./bundle`` or ``.`` (when it holds ``configs/``), else the
    ``bundle/`` folder next to the installed package (a source checkout)."""
    env = os.environ.get("CUNERF_BUNDLE_ROOT")
    if env:
        return str(Path(env).resolve())
    cwd = Path.cwd()
    for cand in (cwd / "bundle", cwd):
        if (cand / "configs" / "metadata.json").is_file():
            return str(cand.resolve())
    return str((Path(__file__).resolve().parent.parent / "bundle"))


def sample_volume_path() -> str:
    """The embedded sample volume (Colin27 T1 MRI, see ``bundle/docs/data_license.txt``)."""
    return str(Path(bundle_root()) / "data" / "colin27_t1.nii.gz")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary file name next to ``path``; on success move it over ``path``, on error delete it.

    Readers never see a half-written file under the final name. ``suffix`` defaults to the final name's
    (possibly double, like ``.nii.gz``) extension so that writers that infer the format from it still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".nii.gz") else final.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{suffix}", dir=final.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
