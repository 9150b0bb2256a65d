"""Super-resolve many volumes: one independent fit per volume, the volumes shared over processes.

Each process (rank) takes the volumes ``r, r + W, r + 2W, …`` of the sorted input list, fits each one with
:func:`cunerf_monai.fitting.fit` (one process per fit, no DDP inside), renders it and writes
``OUT/<name>/sr.nii.gz``, ``OUT/<name>/model.pt`` and ``OUT/<name>/fit.json`` (so ``cunerf render OUT/<name>``
works on the result). A volume that fails is recorded with its error and the others go on. At the end rank 0
gathers every rank's records and writes ``OUT/summary.json`` and ``OUT/summary.md``.

Run it as one process, or as ``W`` processes with ``torchrun`` (one per GPU or CPU slot); the command is
``cunerf batch`` (:meth:`cunerf_monai.cli.Commands.batch`, which has every option; ``python -m
cunerf_monai.batch …`` is the same command)::

    cunerf batch --inputs volumes/ --out results/ --scale 2
    torchrun --standalone --nproc_per_node=4 -m cunerf_monai.cli batch --inputs volumes/ --out results/

Each rank appends its records to ``OUT/ranks/rank<r>.json`` as it goes; ``--summarize_only`` rebuilds the
summary from these files (after a crash, or when the ranks ran as separate jobs).

The process group exists only for the final gather: while fitting, ``torch.distributed`` is not initialised,
so each fit runs exactly as a single-process fit (same random streams whatever the rank, its own checkpoints
and metrics). Ranks that finish early wait for the others at the gather (``--timeout_hours``).
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .distributed import launcher_ranks
from .modeldir import MODEL_FILE, save_model_dir
from .utils import atomic_path, resolve_overlays, telling_error, write_json

__all__ = ["VOLUME_SUFFIXES", "list_volumes", "volume_names", "partition", "process_volume", "run_batch",
           "write_summary", "summarize_ranks"]

logger = logging.getLogger("cunerf.batch")

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SUMMARY_FIELDS = ("volume", "rank", "status", "seconds", "output", "error")


def _is_volume_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)


def list_volumes(inputs: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The sorted, de-duplicated list of volumes named by ``inputs``.

    Each input is a folder (its volume files — ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd`` —
    and its sub-folders, each one DICOM series; hidden entries skipped), a ``.txt`` file listing one volume per
    line (``#`` comments allowed; relative paths are relative to the list file), a comma-separated list, or one
    volume (a file or a DICOM folder). Folders in ``exclude`` (the output folder) are never listed.

    Every rank computes this list itself, so it must see the same files (a shared filesystem or identical
    copies); the summary reports a rank whose list differed.
    """
    skip = {Path(e).resolve() for e in exclude}
    found: set[str] = set()
    items: list[str] = []
    for raw in inputs:
        items.extend(s.strip() for s in str(raw).split(",") if s.strip())
    for item in items:
        p = Path(item)
        if p.is_file() and p.suffix.lower() == ".txt":
            for line in p.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    q = Path(line)
                    found.add(str((q if q.is_absolute() else p.parent / q).resolve()))
        elif p.is_dir() and not _looks_like_dicom_folder(p):
            for child in p.iterdir():
                if child.name.startswith(".") or child.resolve() in skip:
                    continue
                if _is_volume_file(child) or child.is_dir():
                    found.add(str(child.resolve()))
        elif p.exists():
            found.add(str(p.resolve()))
        else:
            raise FileNotFoundError(f"Input not found: {item}")
    if not found:
        raise ValueError(f"No volumes found in {list(inputs)} (looked for {', '.join(VOLUME_SUFFIXES)} files and "
                         "DICOM folders).")
    return sorted(found)


def _looks_like_dicom_folder(p: Path) -> bool:
    """A folder given directly that holds DICOM files and no sub-folders or volume files is one series."""
    entries = [c for c in p.iterdir() if not c.name.startswith(".")]
    if not entries or any(c.is_dir() or _is_volume_file(c) for c in entries):
        return False
    return any(c.suffix.lower() == ".dcm" or c.name.upper() == "DICOMDIR" for c in entries)


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def volume_names(volumes: Sequence[str]) -> list[str]:
    """Output folder names: file names without their extension, made unique with ``-2``, ``-3`` … in list order."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for v in volumes:
        base = _stem(v) or "volume"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def partition(n: int, rank: int, world_size: int) -> list[int]:
    """Indices that rank ``rank`` of ``world_size`` processes: ``rank, rank + W, rank + 2W, …``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}.")
    return list(range(rank, n, world_size))


def _error_message(exc: BaseException) -> str:
    """``Type: message`` of the most telling exception of a chain (see :func:`~cunerf_monai.utils.telling_error`)."""
    shown = telling_error(exc)
    return f"{type(shown).__name__}: {shown}".strip()


def process_volume(
    path: str,
    out_dir: Path,
    scale: float | Sequence[float],
    overrides: dict[str, Any],
    config_files: Sequence[str],
    overlays: Sequence[str],
) -> dict[str, Any]:
    """Fit one volume, render it at ``scale`` and write ``sr.nii.gz``, ``model.pt`` and ``fit.json`` into
    ``out_dir``. Returns the output paths and shape; raises on failure."""
    from .fitting import fit
    from .slice_prior import UNCERTAINTY_FILE, fitted_prior, prior_state, write_uncertainty
    from .workflows import render_volume, target_grid

    result = fit(path, out_dir / "run", overrides, config_files)
    try:
        grid = target_grid(result.record, scale=scale)
        sr = render_volume(result.network, result.inferer, result.record, out_dir / "sr.nii.gz", grid)
        uncertainty = write_uncertainty(
            prior_state(fitted_prior(result.workflow)), result.network, result.inferer, result.record, grid,
            out_dir / UNCERTAINTY_FILE,
        )
        save_model_dir(out_dir, result, path, overlays, overrides)
        record = {"output": sr, "model": str(out_dir / MODEL_FILE), "shape": list(grid.shape)}
        if uncertainty is not None:
            record["uncertainty"] = uncertainty
        return record
    finally:
        del result


def run_batch(
    inputs: Sequence[str],
    out: str | os.PathLike,
    scale: float | Sequence[float] = 2.0,
    iterations: int | None = None,
    batch_size: int | None = None,
    config: Sequence[str] | None = None,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    timeout_hours: float = 72.0,
    overrides: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]] | None:
    """Fit and render this rank's share of the volumes; on rank 0 return all records (``None`` elsewhere).

    Args:
        inputs: volumes, folders, list files (see :func:`list_volumes`).
        out: output folder (``OUT/<name>/…``, ``OUT/summary.json``, ``OUT/summary.md``).
        scale: output scale (one number or one per axis).
        iterations: training iterations per volume (default: the config's).
        batch_size: target cubes per iteration (default: the config's).
        config: training config overlays (paths or names in ``bundle/configs``).
        seed: random seed of every fit (the same for every volume and rank).
        rank, world_size: this process's share; default ``RANK``/``WORLD_SIZE`` from ``torchrun`` (0 and 1).
        timeout_hours: how long ranks wait for each other at the final gather.
        overrides: further training-config overrides of every fit (e.g. ``forward_model``).
    """
    from .fitting import fit_overrides, train_config_files

    env_rank, env_world, local_rank = launcher_ranks()
    rank = env_rank if rank is None else int(rank)
    world_size = env_world if world_size is None else int(world_size)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlays = resolve_overlays(config)
    if any(Path(o).name == "multi_gpu_train.json" for o in overlays):
        raise ValueError("The many-volume job runs one single-process fit per volume; do not pass the DDP overlay "
                         "multi_gpu_train.json (use torchrun on this module to share volumes over processes).")
    config_files = train_config_files(overlays)
    fit_settings = fit_overrides(seed, iterations, batch_size, progress=False, **dict(overrides or {}))
    if torch.cuda.is_available():
        fit_settings["device"] = f"$torch.device('cuda:{local_rank % torch.cuda.device_count()}')"

    volumes = list_volumes(inputs, exclude=[out_dir])
    names = volume_names(volumes)
    mine = partition(len(volumes), rank, world_size)
    logger.info(f"rank {rank}/{world_size}: {len(mine)} of {len(volumes)} volumes")
    records: list[dict[str, Any]] = []
    rank_file = out_dir / "ranks" / f"rank{rank}.json"
    plan = {"rank": rank, "world_size": world_size, "volumes": volumes}
    for index in mine:
        path, name = volumes[index], names[index]
        start = time.perf_counter()
        record: dict[str, Any] = {"index": index, "volume": name, "input": path, "rank": rank}
        try:
            record.update(process_volume(path, out_dir / name, scale, fit_settings, config_files, overlays))
            record.update(status="ok", error=None)
        except Exception as exc:  # one bad volume must not stop the others
            logger.error(f"rank {rank}: {name} failed: {_error_message(exc)}")
            logger.debug("traceback", exc_info=True)
            record.update(status="failed", error=_error_message(exc), output=None)
        record["seconds"] = round(time.perf_counter() - start, 2)
        records.append(record)
        write_json(rank_file, {**plan, "records": records})
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info(f"rank {rank}: {name} {record['status']} in {record['seconds']} s")
    if not mine:
        write_json(rank_file, {**plan, "records": records})

    plans = [plan]
    all_records = records
    if world_size > 1 and "MASTER_ADDR" in os.environ:
        import torch.distributed as dist

        # only now: a process group during the fits would make them distributed (rank-dependent streams,
        # rank-0-only checkpoints, metrics all-reduced across unrelated fits)
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=timeout_hours))
        try:
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, {**plan, "records": records})
            plans = [{k: g[k] for k in ("rank", "world_size", "volumes")} for g in gathered]
            all_records = [r for g in gathered for r in g["records"]]
        finally:
            dist.destroy_process_group()
    elif world_size > 1:  # ranks started separately (no torchrun): rank 0 summarises what is on disk now
        if rank != 0:
            return None
        plans, all_records = _read_rank_files(out_dir)
    if rank != 0:
        return None
    write_summary(out_dir, all_records, plans, scale)
    return sorted(all_records, key=lambda r: r["index"])


def _read_rank_files(out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Plans and records of ``OUT/ranks/rank*.json`` of the run rank 0 belongs to (files of an earlier run with
    more ranks are left out)."""
    files = {int(f.stem[4:]): f for f in (out_dir / "ranks").glob("rank*.json") if f.stem[4:].isdigit()}
    data = {r: json.loads(f.read_text()) for r, f in sorted(files.items())}
    if 0 in data:
        world = data[0]["world_size"]
        data = {r: d for r, d in data.items() if r < world and d["world_size"] == world}
    plans = [{k: d[k] for k in ("rank", "world_size", "volumes")} for d in data.values()]
    records = [rec for d in data.values() for rec in d["records"]]
    return plans, records


def write_summary(
    out_dir: Path,
    records: Sequence[dict[str, Any]],
    plans: Sequence[dict[str, Any]],
    scale: float | Sequence[float] | None = None,
) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.md`` (one row per volume: name, rank, status, seconds, output or
    error) and return the summary. Volumes of the plan that no rank reported are listed as ``missing``."""
    rows = sorted(records, key=lambda r: r["index"])
    volumes = plans[0]["volumes"] if plans else [r["input"] for r in rows]
    names = volume_names(volumes)
    world = max([p["world_size"] for p in plans] or [1])
    done = {r["index"] for r in rows}
    for index in range(len(volumes)):
        if index not in done:
            rows.append({"index": index, "volume": names[index], "input": volumes[index], "rank": index % world,
                         "status": "missing", "seconds": None, "output": None,
                         "error": "no record from its rank (crashed or still running)"})
    rows.sort(key=lambda r: r["index"])
    mismatched = sorted(p["rank"] for p in plans if p["volumes"] != volumes)
    summary = {
        "world_size": world,
        "scale": scale,
        "num_volumes": len(volumes),
        "ok": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "missing": sum(r["status"] == "missing" for r in rows),
        "ranks_with_another_volume_list": mismatched,
        "volumes": rows,
    }
    write_json(out_dir / "summary.json", summary)
    lines = [
        f"# Many-volume super-resolution: {summary['ok']} ok, {summary['failed']} failed"
        + (f", {summary['missing']} missing" if summary["missing"] else "")
        + f" ({len(volumes)} volumes, {world} rank(s))",
        "",
    ]
    if mismatched:
        lines += [f"**Warning:** ranks {mismatched} listed other volumes than rank 0 (not the same files?).", ""]
    lines += ["| volume | rank | status | seconds | output or error |", "|---|---|---|---|---|"]
    for r in rows:
        detail = r.get("output") if r["status"] == "ok" else r.get("error")
        detail = str(detail).replace("|", "\\|").replace("\n", " ")
        seconds = "" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['volume']} | {r['rank']} | {r['status']} | {seconds} | {detail} |")
    with atomic_path(out_dir / "summary.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return summary


def summarize_ranks(out: str | os.PathLike, scale: float | Sequence[float] | None = None) -> dict[str, Any]:
    """Rebuild ``OUT/summary.json`` and ``OUT/summary.md`` from ``OUT/ranks/rank*.json`` (``cunerf batch
    --summarize_only``); returns the summary.

    Raises:
        FileNotFoundError: there are no rank files in ``OUT/ranks``.
    """
    out_dir = Path(out)
    plans, records = _read_rank_files(out_dir)
    if not plans:
        raise FileNotFoundError(f"No rank files in {out_dir / 'ranks'} (nothing to summarise).")
    return write_summary(out_dir, records, plans, scale)


if __name__ == "__main__":  # ``python -m cunerf_monai.batch …`` is ``cunerf batch …`` (also under torchrun)
    import runpy

    sys.argv[1:1] = ["batch"]
    runpy.run_module("cunerf_monai.cli", run_name="__main__", alter_sys=True)
