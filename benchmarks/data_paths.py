"""Where the benchmarks find the shared data sets: ``$CUNERF_DATA``, else ``shared/data`` beside the repository
(``<repo>/../shared/data``). Result files name volumes relative to it, so they hold no one machine's folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["data_root", "data_path", "relative_to_data", "portable"]


def data_root() -> Path:
    """The shared data folder: ``$CUNERF_DATA`` when set, else ``<repo>/../shared/data``."""
    env = os.environ.get("CUNERF_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def data_path(name: str | os.PathLike) -> str:
    """A volume given as a path (used as it is when it exists or is absolute) or relative to :func:`data_root`."""
    p = Path(name)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(data_root() / p)


def relative_to(path: str | os.PathLike, root: Path) -> str | None:
    """``path`` relative to ``root`` (POSIX form) when it lies inside it, else ``None``."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def relative_to_data(path: str | os.PathLike) -> str:
    """``path`` relative to :func:`data_root` (POSIX form) when it lies inside it, else ``path`` as given."""
    inside = relative_to(path, data_root())
    return str(path) if inside is None else inside


def portable(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings …) with every absolute path inside the repository made relative to
    it and every one inside :func:`data_root` relative to that (a saved prior of ``runs/quality/<name>/fit``, a
    volume), so stored results hold no one machine's folders."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        for root in (ROOT, data_root()):
            inside = relative_to(value, root)
            if inside is not None:
                return inside
    return value
