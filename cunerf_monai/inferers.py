"""The CuNeRF inferer: cube sampling → coarse field → isotropic rendering → radius PDF → fine field.

:class:`CuNeRFInferer` is a :class:`monai.inferers.Inferer`. Its ``__call__`` is the training step's forward
pass over a batch of target cubes (used by Ignite's ``SupervisedTrainer``); :meth:`CuNeRFInferer.render_grid`
and :meth:`CuNeRFInferer.render_plane` render whole volumes and oblique slices without gradients, in chunks
of bounded memory and with a deterministic test-time sampling.
"""

from __future__ import annotations

import copy
import math

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from torch import nn

from . import rendering
from .enums import (
    Activation,
    CubeSampling,
    EvalCubeSampling,
    FieldPass,
    Norm,
    RenderKeys,
    SamplingMode,
    Weighting,
    check_option,
)
from .geometry import ObliquePlane, TargetGrid, VolumeGeometry, voxel_footprint_in_index
from .sampling import (
    cube_offsets,
    directions,
    distance,
    grid_cube_offsets,
    max_distance,
    radius_bin_edges,
    ray_offsets,
    sample_pdf,
    shell_bins,
)

__all__ = ["CuNeRFInferer", "CubeSamples", "field_device", "unwrap_network"]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    Activation.SIGMOID: torch.sigmoid,
    Activation.RELU: torch.relu,
    Activation.SOFTPLUS: F.softplus,
    Activation.IDENTITY: lambda x: x,
}


_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_network(network: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel``/``DataParallel`` wrapper (the network itself otherwise)."""
    return network.module if isinstance(network, _WRAPPERS) else network


FieldFn = Callable[[torch.Tensor], torch.Tensor]


def _fields(network: nn.Module) -> tuple[FieldFn, FieldFn]:
    """The coarse and fine fields of ``network`` as functions of points ``(..., 3)``.

    A wrapped model (DDP) is called through the wrapper's ``forward`` with the field and the points layout as
    keywords: DDP synchronises the gradients of parameters used through its ``forward`` only.
    """
    if isinstance(network, _WRAPPERS):
        inner = network.module
        if hasattr(inner, "coarse") and hasattr(inner, "fine_field"):
            return (
                lambda points: network(points, field=FieldPass.COARSE, channel_dim=-1),
                lambda points: network(points, field=FieldPass.FINE, channel_dim=-1),
            )
        return network, network
    return getattr(network, "coarse", network), getattr(network, "fine_field", network)


def field_device(network: nn.Module) -> torch.device:
    """Device of a network's first parameter or buffer (CPU for a parameter-free module)."""
    for t in list(network.parameters()) + list(network.buffers()):
        return t.device
    return torch.device("cpu")


@dataclass
class CubeSamples:
    """Samples of a batch of targets, sorted by distance from their centres.

    Attributes:
        offsets: cube-local offsets ``(B, N, 3)`` (the cube is ``[-1, 1]^3``).
        r: distances ``(B, N)`` sorted ascending (for rays: depth from the ray's start, ``t + 1``).
        direction: for rays only, the ray direction ``(B, 1, 3)``.
    """

    offsets: torch.Tensor
    r: torch.Tensor
    direction: torch.Tensor | None = None

    def sorted(self) -> "CubeSamples":
        """The same samples ordered by ``r``."""
        r, order = self.r.sort(dim=-1)
        offsets = self.offsets.gather(1, order.unsqueeze(-1).expand_as(self.offsets))
        return CubeSamples(offsets, r, self.direction)

    def union(self, other: "CubeSamples") -> "CubeSamples":
        """Both sample sets together, sorted by ``r``."""
        offsets = torch.cat([self.offsets, other.offsets], 1)
        return CubeSamples(offsets, torch.cat([self.r, other.r], 1), self.direction).sorted()


def _counts_for(grid_counts: tuple[int, int, int] | None, n: int) -> tuple[int, int, int] | None:
    """The per-axis grid counts when they describe a pass of ``n`` samples, else ``None`` (a ``k×k×k`` grid)."""
    return grid_counts if grid_counts is not None and math.prod(grid_counts) == n else None


class CuNeRFInferer(Inferer):
    """Renders target voxels as cubes (or rays) through a :class:`~cunerf_monai.networks.CuNeRFModel`.

    Args:
        num_coarse: coarse samples per target in training (paper: 64).
        num_fine: extra hierarchical samples in training (paper: 128); 0 disables the fine pass.
        num_coarse_eval: coarse samples per target when rendering (paper: 8).
        num_fine_eval: fine samples per target when rendering (paper: 8).
        sampling: ``"cube"`` (CuNeRF) or ``"ray"`` (the NeRF-style baseline of Table 3).
        weighting: ``"isotropic"`` (Eq. 11), ``"volume"`` (NeRF alpha compositing, Eq. 4, of the samples in order of
            their distance from the target: cube sampling without isotropic rendering, the "+ cube sampling" row of
            Table 3) or ``"uniform"`` (plain cube mean, a box filter). Ray sampling composites along the ray with
            either density weighting.
        norm: distance for the isotropic renderer, ``"l2"`` (paper default) or ``"linf"``.
        normalize_weights: make the weights sum to one (bounded output, see :mod:`cunerf_monai.rendering`).
        cube_sampling: training cube samples: random ``"stratified"`` or ``"uniform"`` (the paper), or the fixed
            ``"grid"`` (midpoint rule: with ``k³`` points in an LR voxel of a ×k box degradation these are exactly
            the HR voxel centres) or ``"qmc"``.
        eval_cube_sampling: rendering cube samples, ``"qmc"`` (point-symmetric) or ``"grid"`` (both deterministic and
            symmetric about the target; the fine pass uses antipodal directions, a ray render both ray directions).
        grid_counts: ticks per axis of the ``"grid"`` sampling, e.g. ``(2, 2, 1)`` for an LR voxel that averages a ×2
            footprint in-plane and is a point through-plane (``k`` samples instead of ``k³`` for a slice-axis box
            degradation); used whenever a ``"grid"`` pass has ``prod(grid_counts)`` samples. ``None``: ``k×k×k``.
        grid_profiles: per-axis placement of the ``"grid"`` ticks, ``"box"`` (midpoints, default) or ``"gaussian"``
            (quantiles of a Gaussian slice profile whose FWHM is the cube edge), see
            :func:`cunerf_monai.sampling.profile_ticks`.
        render_cube_size: cube edge when rendering, in LR voxels, or ``None`` for the footprint of the
            rendered voxel (an HR voxel at ×2 covers half an LR voxel per axis).
        intensity_activation: ``"sigmoid"`` (paper) or ``"identity"``.
        density_activation: ``"relu"`` (paper) or ``"softplus"``.
        chunk_size: targets per chunk when rendering (bounds memory: about
            ``chunk_size · (num_coarse_eval + num_fine_eval) · hidden width · 4`` bytes of activations).
        progress: show a progress bar when rendering.

    Examples::

        >>> from cunerf_monai.networks import CuNeRFModel, PositionalMLPField
        >>> net = CuNeRFModel(PositionalMLPField(num_layers=2, skips=()), PositionalMLPField(num_layers=2, skips=()))
        >>> inferer = CuNeRFInferer(num_coarse=8, num_fine=8)
        >>> out = inferer(torch.zeros(5, 3), net, half_extent=torch.full((3,), 0.01))
        >>> out["coarse"].shape, out["fine"].shape
        (torch.Size([5]), torch.Size([5]))
    """

    def __init__(
        self,
        num_coarse: int = 64,
        num_fine: int = 128,
        num_coarse_eval: int = 8,
        num_fine_eval: int = 8,
        sampling: str = SamplingMode.CUBE,
        weighting: str = Weighting.ISOTROPIC,
        norm: str = Norm.L2,
        normalize_weights: bool = True,
        cube_sampling: str = CubeSampling.STRATIFIED,
        eval_cube_sampling: str = EvalCubeSampling.QMC,
        grid_counts: Sequence[int] | None = None,
        grid_profiles: Sequence[str] | None = None,
        render_cube_size: float | None = None,
        intensity_activation: str = Activation.SIGMOID,
        density_activation: str = Activation.RELU,
        chunk_size: int = 16384,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if num_coarse < 1 or num_coarse_eval < 1 or num_fine < 0 or num_fine_eval < 0:
            raise ValueError("Sample counts must be positive (fine counts may be 0).")
        sampling = check_option(sampling, SamplingMode, "sampling")
        weighting = check_option(weighting, Weighting, "weighting")
        norm = check_option(norm, Norm, "norm")
        cube_sampling = check_option(cube_sampling, CubeSampling, "cube_sampling")
        eval_cube_sampling = check_option(eval_cube_sampling, EvalCubeSampling, "eval_cube_sampling")
        intensity_activation = check_option(intensity_activation, Activation, "intensity_activation")
        density_activation = check_option(density_activation, Activation, "density_activation")
        if grid_counts is not None:
            grid_counts = tuple(int(c) for c in grid_counts)
            if len(grid_counts) != 3 or min(grid_counts) < 1:
                raise ValueError(f"grid_counts must be three positive integers (ticks per axis), got {grid_counts}.")
        for name, mode, n in (("cube_sampling", cube_sampling, num_coarse), ("eval_cube_sampling", eval_cube_sampling,
                                                                               num_coarse_eval)):
            if mode == CubeSampling.GRID:
                try:
                    counts = _counts_for(grid_counts, n)
                    grid_cube_offsets(n, counts=counts, profiles=grid_profiles if counts is not None else None)
                except ValueError as exc:
                    raise ValueError(f"{name}='grid' with {n} samples (grid_counts={grid_counts}): {exc}") from None
        if render_cube_size is not None and not render_cube_size > 0:
            raise ValueError(f"render_cube_size must be positive or None, got {render_cube_size}.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
        self.num_coarse, self.num_fine = int(num_coarse), int(num_fine)
        self.num_coarse_eval, self.num_fine_eval = int(num_coarse_eval), int(num_fine_eval)
        self.sampling, self.weighting, self.norm = sampling, weighting, norm
        self.normalize_weights = bool(normalize_weights)
        self.cube_sampling, self.eval_cube_sampling = cube_sampling, eval_cube_sampling
        self.grid_counts = grid_counts
        self.grid_profiles = tuple(grid_profiles) if grid_profiles is not None else None
        self.render_cube_size = render_cube_size
        self.intensity_activation, self.density_activation = intensity_activation, density_activation
        self.chunk_size = int(chunk_size)
        self.progress = bool(progress)
        self.autocast_dtype: torch.dtype | None = None

    def coarse_only(self) -> "CuNeRFInferer":
        """A copy that renders with the coarse field alone (no fine pass at test time): the coarse render of a
        model with a fine network, to report beside its fine render."""
        twin = copy.copy(self)
        twin.num_fine_eval = 0
        return twin

    def with_autocast(self, dtype: torch.dtype | None) -> "CuNeRFInferer":
        """A copy whose field evaluations run under :func:`torch.autocast` with ``dtype`` (``None``: float32), on
        the points' device; the rendering stays in float32 (see :mod:`cunerf_monai.precision`)."""
        twin = copy.copy(self)
        twin.autocast_dtype = dtype
        return twin

    def with_training_forward_model(self) -> "CuNeRFInferer":
        """A copy that renders (in eval mode) with the training sample counts and a deterministic version of the
        training cube sampling: validation then measures how well the fit reproduces its input voxels."""
        twin = copy.copy(self)
        twin.num_coarse_eval, twin.num_fine_eval = self.num_coarse, self.num_fine
        grid = self.cube_sampling == CubeSampling.GRID
        twin.eval_cube_sampling = EvalCubeSampling.GRID if grid else EvalCubeSampling.QMC
        twin.progress = False
        return twin

    def points_per_target(self, training: bool = True) -> int:
        """Field evaluations per target: the coarse pass, plus the fine pass on the union of coarse and fine."""
        n_c, n_f = (self.num_coarse, self.num_fine) if training else (self.num_coarse_eval, self.num_fine_eval)
        return n_c + (n_c + n_f if n_f > 0 else 0)

    # ------------------------------------------------------------------------------------------------------
    # the algorithm, for one batch of targets
    # ------------------------------------------------------------------------------------------------------
    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        *args: Any,
        half_extent: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Render a batch of target cubes.

        In training mode (``network.training``) this is the training forward pass: random samples with the
        training counts, gradients kept. In eval mode (as inside a MONAI ``SupervisedEvaluator``) it renders
        deterministically with the test-time counts, in chunks, without gradients.

        Args:
            inputs: target centres in field coordinates ``(B, 3)``.
            network: a :class:`~cunerf_monai.networks.CuNeRFModel` (``.coarse`` and ``.fine_field``), one
                wrapped in ``DistributedDataParallel`` (then both passes go through the wrapper's ``forward``
                so that DDP synchronises the gradients of both fields), or a single field used for both passes.
            half_extent: cube half-size in field units per axis, ``(3,)`` or ``(B, 3)``.
            generator: random stream for the samples (default: torch's global one).

        Returns:
            ``{"coarse": (B,), "fine": (B,), "value": (B,)}``: ``"value"`` is the final render (the fine one,
            or the coarse one when there is no fine pass); eval mode returns ``{"value": (B,)}``.
        """
        if half_extent is None:
            raise ValueError("CuNeRFInferer needs the cube half-extent (half_extent=...) of the targets.")
        if not network.training:
            value = self.render_points(network, inputs, inputs.shape[0], half_extent, "validating")
            return {RenderKeys.VALUE: value.to(inputs.device)}
        out = self.render_targets(
            inputs, network, half_extent, self.num_coarse, self.num_fine, deterministic=False, generator=generator
        )
        out[RenderKeys.VALUE] = out.get(RenderKeys.FINE, out[RenderKeys.COARSE])
        return out

    def _draw_coarse(
        self, batch: int, n: int, deterministic: bool, generator: torch.Generator | None, device: torch.device
    ) -> CubeSamples:
        """Coarse samples for ``batch`` targets: cube points or ray points, sorted by ``r``."""
        if self.sampling == SamplingMode.RAY:
            offsets, t, direction = ray_offsets(batch, n, deterministic, generator, device)
            return CubeSamples(offsets, t + 1.0, direction)
        mode = self.eval_cube_sampling if deterministic else self.cube_sampling
        counts = _counts_for(self.grid_counts, n)
        profiles = self.grid_profiles if counts is not None else None
        offsets = cube_offsets(batch, n, mode, generator, device, counts, profiles)
        return CubeSamples(offsets, distance(offsets, self.norm)).sorted()

    def _draw_fine(
        self,
        coarse: CubeSamples,
        weights: torch.Tensor,
        n: int,
        deterministic: bool,
        generator: torch.Generator | None,
    ) -> CubeSamples:
        """Hierarchical samples (Eq. 12, 15): radii from the coarse weights' PDF, directions on the sphere."""
        batch, device = coarse.r.shape[0], coarse.r.device
        if self.sampling == SamplingMode.RAY:
            edges = radius_bin_edges(coarse.r, 2.0)
            s = sample_pdf(edges, weights, n, deterministic, generator)
            return CubeSamples((s - 1.0).unsqueeze(-1) * coarse.direction, s, coarse.direction)
        r_max = max_distance(self.norm)
        edges, weights = shell_bins(coarse.r, weights, r_max)  # equal radii (mirror pairs) share a bin
        if deterministic:  # centred: ⌊n/2⌋ radii, each at an antipodal pair of directions (+ the centre if n is odd)
            radii = sample_pdf(edges, weights, n // 2, True).repeat_interleave(2, dim=-1)
            radii = torch.cat([torch.zeros_like(radii[:, : n % 2]), radii], dim=-1)
        else:
            radii = sample_pdf(edges, weights, n, False, generator)
        dirs = directions(batch, n, self.norm, deterministic, generator, device)
        return CubeSamples(radii.unsqueeze(-1) * dirs, radii)

    def _shade(
        self,
        field: nn.Module,
        centres: torch.Tensor,
        half: torch.Tensor,
        samples: CubeSamples,
        deterministic: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate a field at the samples and render: returns ``(value (B,), weights (B, N))``.

        A deterministic ray render composites the ray from both ends and averages
        (:func:`~cunerf_monai.rendering.two_way_ray_weights`), so that it is centred on the target.
        """
        points = centres.unsqueeze(1) + samples.offsets * half.unsqueeze(1)
        if self.autocast_dtype is None:
            raw = field(points)
        else:
            with torch.autocast(points.device.type, dtype=self.autocast_dtype):
                raw = field(points)
            raw = raw.float()
        intensity = ACTIVATIONS[self.intensity_activation](raw[..., 0])
        if self.weighting == Weighting.UNIFORM:
            weights = rendering.uniform_weights(samples.r)
        else:
            sigma = ACTIVATIONS[self.density_activation](raw[..., 1])
            if self.sampling == SamplingMode.RAY and deterministic:
                weights = rendering.two_way_ray_weights(sigma, samples.r, self.normalize_weights)
            elif self.sampling == SamplingMode.RAY or self.weighting == Weighting.VOLUME:
                weights = rendering.ray_weights(sigma, samples.r, self.normalize_weights)
            else:
                weights = rendering.isotropic_weights(sigma, samples.r, self.normalize_weights)
        return rendering.composite(weights, intensity), weights

    def render_targets(
        self,
        centres: torch.Tensor,
        network: nn.Module,
        half_extent: torch.Tensor,
        num_coarse: int,
        num_fine: int,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Render targets ``(B, 3)`` with cubes of half-size ``half_extent`` ``(3,)``/``(B, 3)`` (field units).

        Returns ``{"coarse": (B,), "fine": (B,)}`` (``"fine"`` only when ``num_fine > 0``).
        """
        if centres.ndim != 2 or centres.shape[-1] != 3:
            raise ValueError(f"Target centres must have shape (B, 3), got {tuple(centres.shape)}.")
        batch = centres.shape[0]
        half = torch.as_tensor(half_extent, dtype=centres.dtype, device=centres.device).expand(batch, 3)
        coarse_field, fine_field = _fields(network)
        coarse = self._draw_coarse(batch, num_coarse, deterministic, generator, centres.device)
        value_c, weights_c = self._shade(coarse_field, centres, half, coarse, deterministic)
        out = {RenderKeys.COARSE: value_c}
        if num_fine > 0:
            fine = self._draw_fine(coarse, weights_c.detach(), num_fine, deterministic, generator)
            value_f, _ = self._shade(fine_field, centres, half, coarse.union(fine), deterministic)
            out[RenderKeys.FINE] = value_f
        return out

    # ------------------------------------------------------------------------------------------------------
    # rendering of many points, grids and planes (no gradients, chunked)
    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_points(
        self,
        network: nn.Module,
        centres: Callable[[int, int], torch.Tensor] | torch.Tensor,
        num_targets: int,
        half_extent: torch.Tensor,
        description: str = "rendering",
    ) -> torch.Tensor:
        """Render ``num_targets`` targets in chunks of ``chunk_size`` with the test-time sample counts.

        Args:
            network: the fitted model.
            centres: field coordinates ``(M, 3)``, or a function ``(start, stop) → (stop - start, 3)`` that
                makes them chunk by chunk (so a large grid never exists as one float tensor of points).
            num_targets: ``M``.
            half_extent: cube half-size in field units, ``(3,)`` for all targets or ``(M, 3)`` per target.
            description: progress-bar label.

        Returns:
            rendered values ``(M,)`` (the fine pass when there is one), float32 on the CPU.
        """
        network = unwrap_network(network)  # no DDP collectives when only some ranks render
        device = field_device(network)
        out = torch.empty(num_targets, dtype=torch.float32)
        starts = range(0, num_targets, self.chunk_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=description, unit="chunk", leave=False)
        half_all = torch.as_tensor(half_extent, dtype=torch.float32, device=device)
        per_target = half_all.ndim == 2 and half_all.shape[0] == num_targets and num_targets > 1
        was_training = network.training
        network.eval()
        try:
            for start in starts:
                stop = min(start + self.chunk_size, num_targets)
                chunk = centres(start, stop) if callable(centres) else centres[start:stop]
                chunk = chunk.to(device=device, dtype=torch.float32)
                half = half_all[start:stop] if per_target else half_all.reshape(-1, 3)[0]
                res = self.render_targets(
                    chunk, network, half, self.num_coarse_eval, self.num_fine_eval, deterministic=True
                )
                out[start:stop] = res.get(RenderKeys.FINE, res[RenderKeys.COARSE]).float().cpu()
        finally:
            network.train(was_training)
        return out

    def _render_half_extent(self, geometry: VolumeGeometry, affine: np.ndarray) -> torch.Tensor:
        """Half-extent ``(3,)`` in field units of the cube rendered for one voxel of a grid with ``affine``."""
        if self.render_cube_size is None:
            half_index = voxel_footprint_in_index(geometry, affine)
        else:
            half_index = np.full(3, self.render_cube_size / 2.0)
        return torch.as_tensor(half_index * geometry.field_per_voxel, dtype=torch.float32)

    @torch.no_grad()
    def render_grid(self, network: nn.Module, geometry: VolumeGeometry, grid: TargetGrid) -> torch.Tensor:
        """Render every voxel of ``grid`` (any shape / affine) through the field fitted on ``geometry``.

        Returns:
            intensities in the normalised range, ``grid.shape`` float32 on the CPU.
        """
        to_field = torch.as_tensor(geometry.affine_to_field(grid.affine), dtype=torch.float64)
        strides = torch.tensor([grid.shape[1] * grid.shape[2], grid.shape[2], 1])
        dims = torch.tensor(grid.shape)

        def centres(start: int, stop: int) -> torch.Tensor:
            flat = torch.arange(start, stop)
            idx = ((flat.unsqueeze(-1) // strides) % dims).to(torch.float64)
            return (idx @ to_field[:3, :3].T + to_field[:3, 3]).float()

        values = self.render_points(
            network, centres, grid.num_voxels, self._render_half_extent(geometry, grid.affine), "rendering volume"
        )
        return values.reshape(grid.shape)

    @torch.no_grad()
    def render_plane(
        self, network: nn.Module, geometry: VolumeGeometry, plane: ObliquePlane, outside_value: float = 0.0
    ) -> torch.Tensor:
        """Render an oblique plane; pixels outside the volume's footprint get ``outside_value``.

        Returns:
            ``plane.shape`` ``(H, W)`` float32 on the CPU.
        """
        index = geometry.world_to_index(plane.world)
        field = torch.as_tensor(geometry.index_to_field(index).reshape(-1, 3), dtype=torch.float32)
        values = self.render_points(
            network, field, field.shape[0], self._render_half_extent(geometry, plane.affine), "rendering plane"
        )
        shape = np.asarray(geometry.shape, dtype=np.float64)
        inside = np.all((index >= -0.5) & (index <= shape - 0.5), axis=-1).reshape(-1)
        values[~torch.as_tensor(inside)] = float(outside_value)
        return values.reshape(plane.shape)
