"""``cunerf``: command-line entry points over the bundle configs (``fit``, ``render``, ``slices``, ``evaluate``).

Each command is a thin layer over the same calls the MONAI bundle makes, so a model fitted here renders with
``python -m monai.bundle run inference`` too and vice versa. A model directory holds ``model.pt`` (the
checkpoint) and ``fit.json`` (the config overlays it was fitted with, re-applied when rendering).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import fire

from .utils import atomic_path, bundle_root, sample_volume_path

__all__ = ["Commands", "main"]

logger = logging.getLogger("cunerf")


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and "," in value:
        return [v.strip() for v in value.split(",") if v.strip()]
    return [value]


def _overlays(config: Any) -> list[str]:
    """Config overlay files given by the user (paths, or names inside the bundle's ``configs/``)."""
    out = []
    for item in _as_list(config) or []:
        p = Path(str(item))
        if not p.is_file():
            p = Path(bundle_root()) / "configs" / str(item)
        if not p.is_file():
            raise FileNotFoundError(f"Config overlay not found: {item}")
        out.append(str(p.resolve()))
    return out


def _inference_workflow(model_dir: str, **overrides: Any):
    """A MONAI ConfigWorkflow of ``inference.json`` + the model's overlays, initialised."""
    from monai.bundle import ConfigWorkflow

    mdir = Path(model_dir)
    ckpt = mdir / "model.pt" if mdir.is_dir() else mdir
    fit_info = mdir / "fit.json"
    overlays = json.loads(fit_info.read_text(encoding="utf-8")).get("overlays", []) if fit_info.is_file() else []
    files = [str(Path(bundle_root()) / "configs" / "inference.json"), *overlays]
    wf = ConfigWorkflow(config_file=files, workflow_type="inference", checkpoint=str(ckpt), **overrides)
    wf.initialize()
    return wf


class Commands:
    """cunerf: zero-shot arbitrary-scale super-resolution of one CT/MRI volume (CuNeRF on MONAI).

    Fit a coordinate network to one low-resolution volume, then render it at any scale, spacing or onto a
    reference grid, or as oblique slices. Run ``cunerf COMMAND --help`` for each command's arguments.
    """

    def fit(
        self,
        input: str = "",
        out: str = "cunerf_model",
        config: Any = None,
        iterations: int | None = None,
        batch_size: int | None = None,
        channel: int | None = None,
        seed: int = 0,
    ) -> str:
        """Fit a model to one volume and write OUT/model.pt and OUT/fit.json.

        Args:
            input: the low-resolution volume: a NIfTI file (.nii/.nii.gz), a DICOM series folder or an NRRD file;
                the embedded Colin27 sample when omitted.
            out: model directory to create.
            config: optional config overlay(s) (a path or a name in bundle/configs/, e.g. train_paper.json);
                comma-separated for several.
            iterations: training iterations (default: the config's).
            batch_size: target cubes per iteration (default: the config's).
            channel: channel to use from a 4D image.
            seed: random seed.
        Returns:
            the checkpoint path.
        """
        from .fitting import fit, fit_overrides, train_config_files

        source = input or sample_volume_path()
        overlays = _overlays(config)
        overrides = fit_overrides(seed, iterations, batch_size, channel=channel)
        mdir = Path(out)
        result = fit(source, mdir / "run", overrides, train_config_files(overlays))
        with atomic_path(mdir / "model.pt") as tmp:
            shutil.copyfile(result.checkpoint, tmp)
        info = {
            "input": str(source),
            "overlays": overlays,
            "overrides": {k: v for k, v in overrides.items() if v is not None},
            "fit_seconds": round(result.seconds, 1),
            "validation_psnr": result.history,
        }
        with atomic_path(mdir / "fit.json") as tmp:
            Path(tmp).write_text(json.dumps(info, indent=2))
        print(f"fitted in {result.seconds:.0f} s; model: {mdir / 'model.pt'}")
        return str(mdir / "model.pt")

    def render(
        self,
        model_dir: str,
        out: str = "sr.nii.gz",
        scale: Any = None,
        spacing: Any = None,
        reference: str | None = None,
        normalized: bool = False,
    ) -> str:
        """Render the fitted volume on a new grid and write it as NIfTI (affine: where every voxel is, in mm).

        Give one of --scale, --spacing or --reference (default --scale 2).

        Args:
            model_dir: a model directory from `cunerf fit` (or a checkpoint file).
            out: output NIfTI path (.nii or .nii.gz).
            scale: voxels per input voxel: one number, or three (per axis) like 2,2,4. Input voxel i lands on
                output voxel scale*i.
            spacing: output voxel size in mm: one number or three.
            reference: render onto exactly the grid (shape and affine) of this image.
            normalized: keep intensities in [0, 1] instead of the input's range.
        Returns:
            the written path.
        """
        from .workflows import load_checkpoint, render_volume, target_grid

        if scale is None and spacing is None and reference is None:
            scale = 2.0
        wf = _inference_workflow(model_dir)
        network, inferer = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("inferer")
        inferer.progress = sys.stderr.isatty()
        record = load_checkpoint(wf.parser.get_parsed_content("checkpoint"), network)
        scale_v = _floats(scale, "scale")
        spacing_v = _floats(spacing, "spacing")
        grid = target_grid(record, scale_v, spacing_v, reference)
        path = render_volume(network, inferer, record, out, grid, original_range=not normalized)
        print(f"wrote {path}: shape {list(grid.shape)}, spacing {[round(float(s), 4) for s in grid.spacing]} mm")
        return path

    def slices(
        self,
        model_dir: str,
        out: str = "slices",
        axis: Any = (1.0, 1.0, 0.0),
        angles: Any = (0.0, 360.0),
        asteps: float = 45.0,
        zpos: float = 0.0,
        zoom: float = 1.0,
        plane: str = "axial",
        size: Any = None,
    ) -> list[str]:
        """Render oblique slices (PNG per angle and an animated GIF of the sweep).

        Args:
            model_dir: a model directory from `cunerf fit` (or a checkpoint file).
            out: output folder.
            axis: rotation axis in the volume's voxel axes, three numbers (e.g. 1,1,0).
            angles: one angle or start,stop in degrees.
            asteps: angle step in degrees.
            zpos: offset of the plane from the volume centre along its normal, in mm.
            zoom: magnification (>1 zooms in).
            plane: base plane: axial, coronal or sagittal.
            size: output pixels H,W (default: the volume's extent at its finest spacing).
        Returns:
            the written files.
        """
        from .workflows import load_checkpoint, render_slices

        wf = _inference_workflow(model_dir)
        network, inferer = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("inferer")
        record = load_checkpoint(wf.parser.get_parsed_content("checkpoint"), network)
        size_v = _floats(size, "size")
        paths = render_slices(
            network, inferer, record, out, _floats(axis, "axis"), _floats(angles, "angles"), float(asteps),
            float(zpos), float(zoom), plane, None if size_v is None else [int(v) for v in size_v],
        )
        print(f"wrote {len(paths)} files to {out}")
        return paths

    def evaluate(
        self,
        hr: str = "",
        out: str = "cunerf_eval",
        scale: Any = 2,
        slice_axis: int | None = None,
        degradation: str = "nearest",
        config: Any = None,
        iterations: int | None = None,
        channel: int | None = None,
    ) -> dict:
        """Self-evaluation: simulate LR from an HR volume, fit on LR only, render on the HR grid, and score
        PSNR/SSIM against aligned interpolation baselines. Writes metrics.json, table.md and figure.png.

        Args:
            hr: the high-resolution volume (default: the embedded sample).
            out: output folder.
            scale: integer degradation factor, one or three (per axis).
            slice_axis: degrade only this axis (0, 1 or 2) — "volumetric" super-resolution.
            degradation: nearest (the paper's decimation), box (average over each LR voxel's footprint) or
                gaussian (Gaussian slice profile).
            config: optional training config overlay(s).
            iterations: training iterations (default: the config's).
            channel: channel to use from a 4D image.
        Returns:
            the metrics.
        """
        from .evaluation.selfeval import self_evaluate
        from .fitting import train_config_files

        overrides = {} if iterations is None else {"num_iterations": int(iterations)}
        metrics = self_evaluate(
            hr or sample_volume_path(), out, _floats(scale, "scale"), slice_axis, degradation, overrides,
            train_config_files(_overlays(config)), channel,
        )
        print((Path(out) / "table.md").read_text(encoding="utf-8"))
        return {"margin_psnr_db": metrics["margin_psnr_db"], "best_aligned_baseline": metrics["best_aligned_baseline"]}

    def batch(
        self,
        inputs: Any,
        out: str = "cunerf_batch",
        scale: Any = 2,
        iterations: int | None = None,
        batch_size: int | None = None,
        config: Any = None,
        seed: int = 0,
    ) -> dict:
        """Fit and super-resolve many volumes, one fit per volume. Writes OUT/<name>/sr.nii.gz, model.pt and
        fit.json (so `cunerf render OUT/<name>` works), OUT/summary.json and OUT/summary.md. A volume that fails is
        reported and the others go on. To share the volumes over W processes (rank r takes volumes r, r+W, …):
        torchrun --standalone --nproc_per_node=W -m cunerf_monai.batch --inputs DIR --out OUT.

        Args:
            inputs: a folder of volumes (NIfTI/NRRD files, DICOM sub-folders), a .txt list (one path per line), or
                comma-separated volumes.
            out: output folder.
            scale: output scale: one number or three (per axis) like 2,2,4.
            iterations: training iterations per volume (default: the config's).
            batch_size: target cubes per iteration (default: the config's).
            config: optional training config overlay(s), comma-separated.
            seed: random seed of every fit.
        Returns:
            the number of volumes that succeeded and failed.
        """
        from .batch import run_batch

        records = run_batch(
            _as_list(inputs) or [], out, _floats(scale, "scale"), iterations, batch_size, _as_list(config), seed
        )
        if records is None:  # a rank other than 0 (rank 0 writes and prints the summary)
            return {}
        print((Path(out) / "summary.md").read_text())
        return {"ok": sum(r["status"] == "ok" for r in records), "failed": sum(r["status"] != "ok" for r in records)}


def _floats(value: Any, name: str) -> list[float] | float | None:
    """Parse one number or a comma-separated / list of numbers."""
    if value is None:
        return None
    items = _as_list(value)
    try:
        nums = [float(v) for v in items]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number or comma-separated numbers, got {value!r}.") from exc
    return nums[0] if len(nums) == 1 else nums


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``cunerf``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        fire.Fire(Commands(), command=list(argv) if argv is not None else None, name="cunerf")
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as exc:
        # MONAI wraps config errors in RuntimeError("Failed to evaluate ..."): report the outermost project error
        # (ValueError / FileNotFoundError, which names the file and the problem), not the innermost cause
        shown = exc
        while not isinstance(shown, (ValueError, FileNotFoundError, FloatingPointError)) and shown.__cause__:
            shown = shown.__cause__
        print(f"cunerf: error: {shown}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
