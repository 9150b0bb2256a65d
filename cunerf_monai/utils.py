"""Small shared utilities: where the bundle lives and its config overlays, atomic file writes (JSON included),
the telling error of an exception chain."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["bundle_root", "resolve_overlays", "atomic_path", "write_json", "sample_volume_path", "telling_error"]


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


def resolve_overlays(config: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    """Config overlay files as absolute paths: each item a path, or a name inside the bundle's ``configs/``
    (e.g. ``train_paper.json``); a string may list several, comma-separated.

    Raises:
        FileNotFoundError: an overlay is neither a file nor a file in ``configs/``.
    """
    if config is None:
        return []
    items = [config] if isinstance(config, (str, os.PathLike)) else list(config)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    out = []
    for name in names:
        p = Path(name)
        if not p.is_file():
            p = Path(bundle_root()) / "configs" / name
        if not p.is_file():
            raise FileNotFoundError(f"Config overlay not found: {name}")
        out.append(str(p.resolve()))
    return out


def telling_error(exc: BaseException) -> BaseException:
    """The most telling exception of a chain: MONAI wraps config errors in ``RuntimeError("Failed to evaluate
    …")``, so follow the causes down to the first project error (``ValueError``, ``OSError`` such as
    ``FileNotFoundError``, ``FloatingPointError``), which names the file and the problem."""
    shown = exc
    while not isinstance(shown, (ValueError, OSError, FloatingPointError)) and shown.__cause__ is not None:
        shown = shown.__cause__
    return shown


def sample_volume_path() -> str:
    """The embedded sample volume (Colin27 T1 MRI, see ``bundle/docs/data_license.txt``)."""
    return str(Path(bundle_root()) / "data" / "colin27_t1.nii.gz")


def _umask() -> int:
    """The process's file mode creation mask (read without changing it where ``/proc`` tells it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split(":", 1)[1].strip(), 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary file name next to ``path``; on success move it over ``path``, on error delete it.

    Readers never see a half-written file under the final name, and a failed write leaves an existing file
    untouched. The file gets the mode a plain ``open(path, "w")`` would give it (``0o666`` less the umask: 0644
    under umask 022), not the temporary file's private 0600, so outputs can be shared. ``suffix`` defaults to the
    final name's (possibly double, like ``.nii.gz``) extension so that writers that infer the format from it
    still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".nii.gz") else final.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{suffix}", dir=final.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> str:
    """Write ``data`` as indented JSON to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    text = json.dumps(data, indent=2)  # serialise first: an unserialisable value leaves no file behind
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + "\n", encoding="utf-8")
    return str(path)
