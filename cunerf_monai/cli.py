"""``cunerf``: command-line entry points over the bundle configs (``fit``, ``render``, ``slices``, ``evaluate``).

Each command is a thin layer over the same calls the MONAI bundle makes, so a model fitted here renders with
``python -m monai.bundle run inference`` too and vice versa. A model directory holds ``model.pt`` (the
checkpoint) and ``fit.json`` (the config overlays it was fitted with, re-applied when rendering).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import fire

from .modeldir import MODEL_FILE, checkpoint_of, overlays_of, save_model_dir
from .utils import bundle_root, resolve_overlays, sample_volume_path, telling_error

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


def _inference_workflow(model_dir: str, **overrides: Any):
    """A MONAI ConfigWorkflow of ``inference.json`` + the model's overlays, initialised."""
    from monai.bundle import ConfigWorkflow

    files = [str(Path(bundle_root()) / "configs" / "inference.json"), *overlays_of(model_dir)]
    wf = ConfigWorkflow(
        config_file=files, workflow_type="inference", checkpoint=checkpoint_of(model_dir), **overrides
    )
    wf.initialize()
    return wf


def model_overrides(
    forward_model: Any = None,
    slice_thickness: Any = None,
    prior: Any = None,
    prior_spacing: Any = None,
    prior_data: Any = None,
) -> dict[str, Any]:
    """Training-config overrides ``forward_model`` (one of auto/point/box/gaussian, or three per axis),
    ``slice_thickness`` (mm, one number or three), ``prior`` (auto/none, or a saved prior: a ``prior_model.pt`` or
    the model folder holding it), ``prior_spacing`` (mm, one number or three) and ``prior_data`` (a folder of HR
    volumes), present only when given (the config's own values apply otherwise); checked by
    :mod:`cunerf_monai.forward_model` and :mod:`cunerf_monai.slice_prior` (paths made absolute)."""
    from .forward_model import FORWARD_MODELS, check_thickness, per_axis_setting
    from .enums import PriorMode, check_option
    from .slice_prior import PRIOR_MODES, load_prior_model

    out: dict[str, Any] = {}
    models = per_axis_setting(_as_list(forward_model), "forward_model", FORWARD_MODELS)
    if models is not None:
        out["forward_model"] = models[0] if len(models) == 1 else models
    thickness = check_thickness(_floats(slice_thickness, "slice_thickness"))
    if thickness is not None:
        out["slice_thickness"] = thickness[0] if len(thickness) == 1 else thickness
    if prior is not None and str(prior).lower() in PRIOR_MODES:
        out["prior"] = str(check_option(prior, PriorMode, "prior"))
    elif prior is not None:  # a saved prior: checked now, named by its absolute path
        out["prior"] = str(Path(load_prior_model(prior)["path"]).resolve())
    if prior_data is not None:
        if not Path(str(prior_data)).is_dir():
            raise ValueError(f"prior_data must be a folder of HR volumes, got {str(prior_data)!r} (not a folder).")
        out["prior_data"] = str(Path(str(prior_data)).resolve())
    spacing = check_thickness(_floats(prior_spacing, "prior_spacing"), "prior_spacing")
    if spacing is not None:
        out["prior_spacing"] = spacing[0] if len(spacing) == 1 else spacing
    return out


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
        forward_model: str | None = None,
        slice_thickness: Any = None,
        prior: str | None = None,
        prior_spacing: Any = None,
        prior_data: str | None = None,
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
            forward_model: how each LR voxel samples the field: auto, point, box or gaussian (default: the
                config's).
            slice_thickness: the LR slice thickness in mm, one number or three (default: the config's).
            prior: auto (learn detail from the scan itself: its sharp in-plane slices when it has a thick axis, else
                its own planes one scale up when prior_spacing asks for at least twice its resolution), none (the
                field alone), or a saved prior to apply instead of training one (a prior_model.pt, or the model
                folder of an earlier fit holding one); default: the config's (auto).
            prior_spacing: output spacing in mm that the prior works at, one number or three (default: the in-plane
                spacing along a thick axis, no prior on an isotropic scan; evaluate: the HR grid's).
            prior_data: a folder of HR volumes (NIfTI/NRRD files, DICOM series folders) whose simulated LR versions
                also train the prior; the fit writes OUT/prior_model.pt for --prior on other scans.
        Returns:
            the checkpoint path.
        """
        from .fitting import fit, fit_overrides, train_config_files

        source = input or sample_volume_path()
        overlays = resolve_overlays(config)
        overrides = fit_overrides(
            seed, iterations, batch_size, channel=channel,
            **model_overrides(forward_model, slice_thickness, prior, prior_spacing, prior_data),
        )
        mdir = Path(out)
        result = fit(source, mdir / "run", overrides, train_config_files(overlays))
        save_model_dir(mdir, result, source, overlays, overrides)
        print(f"fitted in {result.seconds:.0f} s; model: {mdir / MODEL_FILE}")
        return str(mdir / MODEL_FILE)

    def render(
        self,
        model_dir: str,
        out: str = "sr.nii.gz",
        scale: Any = None,
        spacing: Any = None,
        reference: str | None = None,
        normalized: bool = False,
        dtype: str | None = None,
    ) -> str:
        """Render the fitted volume on a new grid and write it as NIfTI (affine: where every voxel is, in mm).

        Give one of --scale, --spacing or --reference (default --scale 2). This runs the bundle's inference step
        (``inference.json``'s renderer) with these settings.

        Args:
            model_dir: a model directory from `cunerf fit` (or a checkpoint file).
            out: output NIfTI path (.nii or .nii.gz).
            scale: voxels per input voxel: one number, or three (per axis) like 2,2,4. Input voxel i lands on
                output voxel scale*i.
            spacing: output voxel size in mm: one number or three.
            reference: render onto exactly the grid (shape and affine) of this image.
            normalized: keep intensities in [0, 1] instead of the input's range (written as float32).
            dtype: the written type: the input's stored integer type by default (values rounded and clipped to
                its range; float32 for float inputs and older models), or float32.
        Returns:
            the written path.
        """
        if scale is None and spacing is None and reference is None:
            scale = 2.0
        target = Path(out)
        wf = _inference_workflow(
            model_dir,
            output_dir=str(target.parent),
            output_name=target.name,
            scale=_floats(scale, "scale"),
            spacing=_floats(spacing, "spacing"),
            reference=reference,
            slices=None,
            original_range=not normalized,
            dtype=dtype,
            **{"renderer#summary_name": None},
        )
        summary = wf.parser.get_parsed_content("renderer").run()
        spacing_mm = [round(float(s), 4) for s in summary["spacing_mm"]]
        print(f"wrote {summary['volume']}: shape {summary['shape']}, spacing {spacing_mm} mm")
        return summary["volume"]

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
        pixel_size: float | None = None,
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
            size: output pixels H,W (default: the volume's extent at --pixel_size).
            pixel_size: pixel edge in mm before zooming (default: the fitted volume's finest spacing).
        Returns:
            the written files.
        """
        from .checkpoints import load_checkpoint
        from .workflows import render_slices

        wf = _inference_workflow(model_dir)
        network, inferer = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("inferer")
        record = load_checkpoint(wf.parser.get_parsed_content("checkpoint"), network)
        size_v = _floats(size, "size")
        paths = render_slices(
            network, inferer, record, out, _floats(axis, "axis"), _floats(angles, "angles"), float(asteps),
            float(zpos), float(zoom), plane, None if size_v is None else [int(v) for v in size_v],
            pixel_size=None if pixel_size is None else float(pixel_size),
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
        forward_model: str | None = None,
        slice_thickness: Any = None,
        prior: str | None = None,
        prior_spacing: Any = None,
        prior_data: str | None = None,
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
            forward_model, slice_thickness, prior, prior_spacing, prior_data: as for ``cunerf fit`` (the prior works
                at the HR grid's spacing).
        Returns:
            the metrics.
        """
        from .evaluation.selfeval import self_evaluate
        from .fitting import train_config_files

        overrides = {} if iterations is None else {"num_iterations": int(iterations)}
        overrides.update(model_overrides(forward_model, slice_thickness, prior, prior_spacing, prior_data))
        metrics = self_evaluate(
            hr or sample_volume_path(), out, _floats(scale, "scale"), slice_axis, degradation, overrides,
            train_config_files(config), channel,
        )
        print((Path(out) / "table.md").read_text(encoding="utf-8"))
        return {"margin_psnr_db": metrics["margin_psnr_db"], "best_aligned_baseline": metrics["best_aligned_baseline"]}

    def batch(
        self,
        inputs: Any = None,
        out: str = "cunerf_batch",
        scale: Any = 2,
        iterations: int | None = None,
        batch_size: int | None = None,
        config: Any = None,
        seed: int = 0,
        forward_model: str | None = None,
        slice_thickness: Any = None,
        prior: str | None = None,
        prior_spacing: Any = None,
        prior_data: str | None = None,
        timeout_hours: float = 72.0,
        fail_on_error: bool = True,
        summarize_only: bool = False,
    ) -> dict:
        """Fit and super-resolve many volumes, one fit per volume. Writes OUT/<name>/sr.nii.gz, model.pt and
        fit.json (so `cunerf render OUT/<name>` works), OUT/summary.json and OUT/summary.md. A volume that fails is
        reported and the others go on; the command then exits with status 1 (after writing the summary). To share
        the volumes over W processes (rank r takes volumes r, r+W, ...):
        torchrun --standalone --nproc_per_node=W -m cunerf_monai.cli batch --inputs DIR --out OUT.

        Args:
            inputs: a folder of volumes (NIfTI/NRRD files, DICOM sub-folders), a .txt list (one path per line), or
                comma-separated volumes.
            out: output folder.
            scale: output scale: one number or three (per axis) like 2,2,4.
            iterations: training iterations per volume (default: the config's).
            batch_size: target cubes per iteration (default: the config's).
            config: optional training config overlay(s), comma-separated.
            seed: random seed of every fit.
            forward_model, slice_thickness, prior, prior_spacing, prior_data: as for ``cunerf fit``.
            timeout_hours: how long finished ranks wait for the others before the summary.
            fail_on_error: exit with status 1 when a volume failed or is missing (--nofail_on_error: status 0).
            summarize_only: only rebuild OUT/summary.* from OUT/ranks/rank*.json (after a crash, or when the
                ranks ran as separate jobs).
        Returns:
            the number of volumes that succeeded and failed.
        """
        from .batch import run_batch, summarize_ranks

        scale_v = _floats(scale, "scale")
        if summarize_only:
            summary = summarize_ranks(out, scale_v)
            counts = {k: summary[k] for k in ("ok", "failed", "missing")}
        else:
            if not _as_list(inputs):
                raise ValueError("--inputs is required (folders, .txt lists or volumes).")
            records = run_batch(
                _as_list(inputs) or [], out, scale_v, iterations, batch_size, _as_list(config), seed,
                timeout_hours=float(timeout_hours), overrides=model_overrides(forward_model, slice_thickness, prior, prior_spacing, prior_data),
            )
            if records is None:  # a rank other than 0 (rank 0 writes and prints the summary)
                return {}
            counts = {"ok": sum(r["status"] == "ok" for r in records),
                      "failed": sum(r["status"] != "ok" for r in records)}
        print((Path(out) / "summary.md").read_text())
        if fail_on_error and (counts["failed"] or counts.get("missing")):
            raise SystemExit(1)
        return counts


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
    """Console entry point (``cunerf``). Exits with status 2 and one line naming the problem on a bad input or
    setting; ``cunerf batch`` with status 1 when a volume failed."""
    rank = os.environ.get("RANK")
    where = "" if rank is None else f" [rank {rank}]"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{where} %(levelname)s %(message)s")
    try:
        fire.Fire(Commands(), command=list(argv) if argv is not None else None, name="cunerf")
    except (ValueError, OSError, RuntimeError, FloatingPointError) as exc:
        print(f"cunerf: error: {telling_error(exc)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
