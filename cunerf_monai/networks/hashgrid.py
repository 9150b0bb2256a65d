"""Multiresolution hash-grid encoding and field (instant-ngp, Müller et al. 2022) in pure PyTorch.

The field coordinates live in the open box ``(-1, 1)^3`` (see :mod:`cunerf_monai.geometry`). Level ``l`` of the
encoding is a regular grid of ``R_l`` cells per axis whose vertices sit at ``-1 + 2 i / R_l``, ``i = 0 … R_l``;
``R_l`` grows geometrically from ``base_resolution`` to ``finest_resolution`` (per axis). Each vertex owns a
learnable feature vector, stored densely (one entry per vertex, no collisions) when the level has at most
``2 ** log2_hashmap_size`` vertices and through the instant-ngp spatial hash otherwise. A point's feature at a
level is the trilinear interpolation of its cell's 8 corner features.

Tying the grid to the LR voxels: the field maps an axis of ``S`` voxels with padding ``P`` onto ``S + 2P``
voxel widths, so ``finest_resolution = S + 2P`` gives one finest cell per LR voxel (cell centres on the voxel
centres when ``P`` is an integer).

CPU speed notes: the levels are processed one after the other over *all* points (each level's table slice
stays hot in the cache, which is several times faster than interleaving levels); per-corner tensors are
corner-major ``(8, N)`` so that broadcasting runs over long contiguous rows; an ``F = 2`` row is gathered,
weighted and scatter-added as one complex number; and the table gradient is accumulated by a hand-written
backward (``scatter_add_``) instead of autograd's ``index_select`` backward.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .utils import channel_last_call

__all__ = ["HashGridEncoding", "HashGridField", "hashgrid_level_resolutions"]

# instant-ngp spatial hash primes (the first is 1 so that the fastest axis stays coherent in memory).
_PRIMES = (1, 2654435761, 805459861)
# a scalar dtype of the same byte size as one table row, to gather a whole row with one load.
_ROW_DTYPES = {2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}
# the 8 corners of a cell, corner c = 4 dx + 2 dy + dz
_CORNERS = [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]


def _as_resolution3(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """Broadcast an int or a length-3 sequence of ints to a tuple of three positive ints."""
    vals = [value] * 3 if isinstance(value, numbers.Real) else None
    if vals is None and not isinstance(value, (str, bytes)):
        try:
            vals = list(value)  # type: ignore[arg-type]
        except TypeError:
            vals = None
    if vals is None or len(vals) != 3:
        raise ValueError(f"{name} must be an int or a sequence of three ints, got {value!r}.")
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
            raise ValueError(f"{name} must hold integers, got {value!r}.")
        if int(v) < 1:
            raise ValueError(f"{name} must be positive, got {value!r}.")
        out.append(int(v))
    return out[0], out[1], out[2]


def hashgrid_level_resolutions(
    num_levels: int, base_resolution: int | Sequence[int], finest_resolution: int | Sequence[int]
) -> list[tuple[int, int, int]]:
    """Per-level, per-axis grid resolutions (cells per axis), geometric from base to finest.

    ``R_l = round(base · (finest / base) ** (l / (L - 1)))`` per axis, so level 0 is exactly ``base`` and level
    ``L - 1`` exactly ``finest``; with a single level the base resolution is used.

    Examples::

        >>> hashgrid_level_resolutions(3, 16, 64)
        [(16, 16, 16), (32, 32, 32), (64, 64, 64)]
    """
    if int(num_levels) < 1:
        raise ValueError(f"num_levels must be positive, got {num_levels}.")
    base = _as_resolution3(base_resolution, "base_resolution")
    finest = _as_resolution3(finest_resolution, "finest_resolution")
    if any(f < b for b, f in zip(base, finest)):
        raise ValueError(f"finest_resolution {finest} must be >= base_resolution {base} on every axis.")
    levels = []
    for lvl in range(int(num_levels)):
        t = lvl / (num_levels - 1) if num_levels > 1 else 0.0
        res = tuple(int(round(b * math.exp(t * (math.log(f) - math.log(b))))) for b, f in zip(base, finest))
        levels.append((max(res[0], 1), max(res[1], 1), max(res[2], 1)))
    return levels


def _complex_dtype(table: torch.Tensor) -> torch.dtype | None:
    """Complex dtype whose scalar is one ``F = 2`` row of ``table`` (float32/float64), else ``None``."""
    if table.shape[-1] == 2 and table.is_contiguous():
        return {torch.float32: torch.complex64, torch.float64: torch.complex128}.get(table.dtype)
    return None


def _row_gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a contiguous ``(T, F)`` table and an int64 index of any shape → ``(*index.shape, F)``.

    A row whose byte size is that of an integer dtype is gathered as one scalar (several times faster on CPU).
    """
    row_dtype = _ROW_DTYPES.get(table.shape[1] * table.element_size())
    flat = index.reshape(-1)
    if row_dtype is not None and table.is_contiguous() and table.shape[1] > 1:
        rows = table.view(row_dtype).view(-1).index_select(0, flat)
        return rows.view(table.dtype).view(*index.shape, table.shape[1])
    return table.index_select(0, flat).view(*index.shape, table.shape[1])


def _interpolate(
    unit_t: torch.Tensor, table: torch.Tensor, encoding: "HashGridEncoding", save: bool, keep_features: bool
) -> tuple[torch.Tensor, list]:
    """Per-level trilinear lookup of points ``(3, N)`` in ``[0, 1]`` → ``(L, N, F)``.

    With ``save``, keeps per level what the backward needs: corner rows and weights ``(8, N)``, per-axis factors
    ``(3, 2, N)`` and (``keep_features``, for the gradient w.r.t. the points) the corner features ``(8, N, F)``.
    Everything is corner-major (``(8, N)``): broadcasting then runs over long contiguous rows, which is much
    faster on CPU than ``(N, 8)``.
    """
    num_levels, _, num_features = table.shape
    num_points = unit_t.shape[1]
    cdtype = _complex_dtype(table)
    if cdtype is not None:  # F = 2: gather a row as one complex number, weight-sum in complex arithmetic
        out_c = torch.empty(num_levels, num_points, dtype=cdtype, device=table.device)
        out = torch.view_as_real(out_c)
    else:
        out = torch.empty(num_levels, num_points, num_features, dtype=table.dtype, device=table.device)
    saved = []
    for lvl in range(num_levels):
        index, weight, factors = encoding._corners(unit_t, lvl)
        if cdtype is not None:
            feats_c = table[lvl].view(cdtype).view(-1).index_select(0, index.view(-1)).view(8, num_points)
            torch.sum(feats_c * weight, dim=0, out=out_c[lvl])
            feats = torch.view_as_real(feats_c) if keep_features else None
        else:
            feats = _row_gather(table[lvl], index)  # (8, N, F)
            torch.sum(feats * weight.unsqueeze(-1), dim=0, out=out[lvl])
        if save:
            saved.append((index, weight, factors, feats if keep_features else None))
    return out, saved


class _HashGridInterpolation(torch.autograd.Function):
    """Trilinear hash-grid lookup over all levels with a scatter-add backward for the table.

    ``forward(unit_t, table, encoding) → (L, N, F)`` where ``unit_t`` ``(3, N)`` are points in ``[0, 1]^3``.
    """

    @staticmethod
    def forward(ctx: Any, unit_t: torch.Tensor, table: torch.Tensor, encoding: "HashGridEncoding") -> torch.Tensor:
        out, saved = _interpolate(unit_t, table, encoding, save=True, keep_features=ctx.needs_input_grad[0])
        ctx.save_for_backward(*[t for level in saved for t in level])
        ctx.encoding = encoding
        ctx.table_shape = table.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        enc: HashGridEncoding = ctx.encoding
        flat = ctx.saved_tensors
        saved = [flat[i : i + 4] for i in range(0, len(flat), 4)]
        grad_out = grad_out.contiguous()  # (L, N, F)
        grad_unit = grad_table = None
        if ctx.needs_input_grad[1]:
            grad_table = grad_out.new_zeros(ctx.table_shape)
            cdtype = _complex_dtype(grad_table)
            for lvl, (index, weight, _, _) in enumerate(saved):
                flat_index = index.view(-1)
                if cdtype is not None:  # one scatter of complex (= whole-row) values
                    go_c = grad_out[lvl].view(cdtype).view(1, -1)
                    grad_table[lvl].view(cdtype).view(-1).scatter_add_(0, flat_index, (weight * go_c).view(-1))
                else:
                    for f in range(ctx.table_shape[2]):
                        src = (weight * grad_out[lvl, :, f]).view(-1)
                        grad_table[lvl, :, f].scatter_add_(0, flat_index, src)
        if ctx.needs_input_grad[0]:
            grad_unit_t = grad_out.new_zeros(3, grad_out.shape[1])
            sign = grad_out.new_tensor([-1.0, 1.0]).view(2, 1)
            for lvl, (_, _, factors, feats) in enumerate(saved):
                # d w_c / d u_a = R_a · (±1) · prod_{b != a} w_b,c ; factors: (3, 2, N) = (1 - t, t) per axis.
                proj = (feats * grad_out[lvl].unsqueeze(0)).sum(-1).view(2, 2, 2, -1)  # (2, 2, 2, N)
                fx, fy, fz = factors[0], factors[1], factors[2]
                gx = (proj * (sign[:, None, None] * fy[None, :, None] * fz[None, None, :])).sum((0, 1, 2))
                gy = (proj * (fx[:, None, None] * sign[None, :, None] * fz[None, None, :])).sum((0, 1, 2))
                gz = (proj * (fx[:, None, None] * fy[None, :, None] * sign[None, None, :])).sum((0, 1, 2))
                res = enc.resolution_float[lvl].to(grad_unit_t.dtype).view(3, 1)
                grad_unit_t += torch.stack([gx, gy, gz], dim=0) * res
            grad_unit = grad_unit_t
        return grad_unit, grad_table, None


class HashGridEncoding(nn.Module):
    """Multiresolution hash-grid encoding: points ``(..., 3)`` → features ``(..., num_levels · features_per_level)``.

    Level ``l`` has ``R_l`` cells per axis (:func:`hashgrid_level_resolutions`) with vertices at
    ``-1 + 2 i / R_l``. Its vertices are indexed densely (``i + j (R_x + 1) + k (R_x + 1)(R_y + 1)``, no
    collisions) when ``prod(R_l + 1) <= 2 ** log2_hashmap_size``, otherwise by the instant-ngp spatial hash
    ``(i · 1) xor (j · 2654435761) xor (k · 805459861)`` (int64) masked to the table size. The feature of a point
    is the trilinear interpolation of its cell's 8 corner features. Points outside ``[-1, 1]`` are clamped to the
    grid. The output is level-major: ``[level 0 features, level 1 features, …]``.

    All levels share one parameter ``embeddings`` of shape ``(num_levels, 2 ** log2_hashmap_size,
    features_per_level)`` (dense levels use its first ``prod(R_l + 1)`` rows), initialised uniformly in
    ``±init_scale``.

    Args:
        num_levels: number of grid levels ``L``.
        features_per_level: feature width ``F`` of each level.
        log2_hashmap_size: log2 of the per-level table size ``T``.
        base_resolution: coarsest resolution (cells per axis), an int or one per axis.
        finest_resolution: finest resolution (cells per axis), an int or one per axis, e.g. the LR volume's
            shape plus twice the padding for one finest cell per LR voxel.
        init_scale: half-width of the uniform initialisation of the table.

    Shapes:
        input ``(..., 3)`` field coordinates, output ``(..., L · F)`` in the table's dtype.

    Examples::

        >>> enc = HashGridEncoding(num_levels=4, log2_hashmap_size=12, base_resolution=4, finest_resolution=32)
        >>> enc(torch.zeros(10, 3)).shape
        torch.Size([10, 8])
        >>> enc.level_is_dense
        [True, True, False, False]
    """

    def __init__(
        self,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int | Sequence[int] = 16,
        finest_resolution: int | Sequence[int] = 512,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if int(num_levels) < 1 or int(features_per_level) < 1:
            raise ValueError(
                f"num_levels and features_per_level must be positive, got {num_levels}, {features_per_level}."
            )
        if not 1 <= int(log2_hashmap_size) <= 30:
            raise ValueError(f"log2_hashmap_size must lie in 1 … 30, got {log2_hashmap_size}.")
        if not init_scale >= 0:
            raise ValueError(f"init_scale must be non-negative, got {init_scale}.")
        self.num_levels = int(num_levels)
        self.features_per_level = int(features_per_level)
        self.log2_hashmap_size = int(log2_hashmap_size)
        self.table_size = 2**self.log2_hashmap_size
        self.init_scale = float(init_scale)
        self.resolutions = hashgrid_level_resolutions(self.num_levels, base_resolution, finest_resolution)
        self.level_is_dense = [math.prod(r + 1 for r in res) <= self.table_size for res in self.resolutions]

        coef, offsets = [], []
        for res, dense in zip(self.resolutions, self.level_is_dense):
            if dense:
                strides = (1, res[0] + 1, (res[0] + 1) * (res[1] + 1))
                coef.append(strides)
                offsets.append([dx * strides[0] + dy * strides[1] + dz * strides[2] for dx, dy, dz in _CORNERS])
            else:
                coef.append(_PRIMES)
                offsets.append([0] * 8)
        # (L, 3) cells per axis, (L, 3) index multipliers (strides or primes), (L, 8) dense corner offsets.
        self.register_buffer("resolution_float", torch.tensor(self.resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("index_coef", torch.tensor(coef, dtype=torch.int64), persistent=False)
        self.register_buffer("corner_offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.embeddings = nn.Parameter(torch.empty(self.num_levels, self.table_size, self.features_per_level))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the table uniformly in ``±init_scale``."""
        with torch.no_grad():
            self.embeddings.uniform_(-self.init_scale, self.init_scale)

    @property
    def out_features(self) -> int:
        """Encoded width ``num_levels · features_per_level``."""
        return self.num_levels * self.features_per_level

    def extra_repr(self) -> str:
        return (
            f"num_levels={self.num_levels}, features_per_level={self.features_per_level}, "
            f"log2_hashmap_size={self.log2_hashmap_size}, resolutions={self.resolutions[0]}…{self.resolutions[-1]}, "
            f"dense_levels={sum(self.level_is_dense)}"
        )

    def _corners(self, unit_t: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Corner rows ``(8, N)`` (int64), trilinear weights ``(8, N)`` and per-axis factors ``(3, 2, N)``.

        ``unit_t`` ``(3, N)`` are points in ``[0, 1]^3`` (corner-major layout); corner ``c = 4 dx + 2 dy + dz``.
        """
        num_points = unit_t.shape[1]
        res = self.resolution_float[level].to(unit_t.dtype).view(3, 1)
        pos = unit_t * res
        cell = torch.minimum(pos.floor(), res - 1)
        frac = pos - cell
        ijk = cell.long()  # (3, N)
        coef = self.index_coef[level].view(3, 1)
        if self.level_is_dense[level]:
            base = (ijk * coef).sum(0, keepdim=True)  # (1, N)
            index = base + self.corner_offsets[level].view(8, 1)
        else:
            mask = self.table_size - 1  # masking each term first gives the same low bits as masking the xor
            h0 = (ijk * coef) & mask
            h = torch.stack([h0, (h0 + coef) & mask], dim=1)  # (3, 2, N): hash terms of i and i + 1
            index = ((h[0][:, None, None] ^ h[1][None, :, None]) ^ h[2][None, None, :]).view(8, num_points)
        factors = torch.stack([1 - frac, frac], dim=1)  # (3, 2, N)
        weight = factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
        return index, weight.view(8, num_points), factors

    def corner_indices(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Table rows ``(..., 8)`` of the cell corners of points ``x`` ``(..., 3)`` at ``level`` (for inspection)."""
        unit_t = self._to_unit_t(x.reshape(-1, 3))
        index, _, _ = self._corners(unit_t, level)
        return index.t().reshape(*x.shape[:-1], 8)

    def _to_unit_t(self, x: torch.Tensor) -> torch.Tensor:
        """Points ``(N, 3)`` → clamped unit-cube coordinates, corner-major ``(3, N)``."""
        return ((torch.nan_to_num(x.to(self.embeddings.dtype), nan=0.0).clamp(-1.0, 1.0) + 1.0) * 0.5).t().contiguous()

    def _forward_reference(self, unit_t: torch.Tensor) -> torch.Tensor:
        """Plain-autograd path (``(3, N)`` in ``[0, 1]`` → ``(L, N, F)``), used when tracing and as a test oracle."""
        outs = []
        for lvl in range(self.num_levels):
            index, weight, _ = self._corners(unit_t, lvl)
            feats = self.embeddings[lvl].index_select(0, index.view(-1))
            feats = feats.view(8, unit_t.shape[1], self.features_per_level)
            outs.append((feats * weight.unsqueeze(-1)).sum(0))
        return torch.stack(outs, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode field coordinates ``(..., 3)`` → ``(..., num_levels · features_per_level)``."""
        if not torch.jit.is_tracing() and x.shape[-1] != 3:
            raise ValueError(f"HashGridEncoding expects points (..., 3), got shape {tuple(x.shape)}.")
        lead = x.shape[:-1]
        unit_t = self._to_unit_t(x.reshape(-1, 3))
        if torch.jit.is_tracing():
            per_level = self._forward_reference(unit_t)  # plain ops: traceable and saveable
        elif torch.is_grad_enabled() and (unit_t.requires_grad or self.embeddings.requires_grad):
            per_level = _HashGridInterpolation.apply(unit_t, self.embeddings, self)
        else:
            per_level, _ = _interpolate(unit_t, self.embeddings, self, save=False, keep_features=False)
        return per_level.permute(1, 0, 2).reshape(*lead, self.out_features)


class HashGridField(nn.Module):
    """Hash-grid field: :class:`HashGridEncoding` + a small ReLU MLP → raw outputs (no final activation).

    Channel 0 of the output is the intensity logit and channel 1 the density; the renderer applies the
    activations. The MLP input is the encoding ``(L · F)`` followed, with ``include_input``, by the raw
    coordinates (3).

    Training tips (instant-ngp): Adam with ``betas=(0.9, 0.99)``, ``eps=1e-15`` (the table gradients are tiny)
    and a larger learning rate (≈1e-2); no weight decay on ``encoding.embeddings``. ``torch.jit.trace`` works
    (the traced graph uses a plain-op path with a slower backward, fine for inference / export).

    Args:
        encoding: keyword arguments of :class:`HashGridEncoding` (``None``: its defaults).
        hidden_features: width of the hidden layers.
        num_hidden_layers: number of hidden ReLU layers (``0``: a single linear layer on the encoding).
        out_channels: raw outputs (2).
        include_input: concatenate the raw coordinates to the encoding.
        channel_dim: ``-1`` for points ``(..., 3) → (..., C)``; ``1`` for channel-first grids
            ``(B, 3, *S) → (B, C, *S)``.

    Shapes:
        ``(..., 3) → (..., out_channels)`` with ``channel_dim = -1``; ``(B, 3, *S) → (B, out_channels, *S)`` with
        ``channel_dim = 1``.

    Examples::

        >>> field = HashGridField(encoding={"num_levels": 4, "log2_hashmap_size": 12, "finest_resolution": 64})
        >>> field(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
        >>> HashGridField(encoding={"log2_hashmap_size": 12}, channel_dim=1)(torch.zeros(1, 3, 4, 4, 4)).shape
        torch.Size([1, 2, 4, 4, 4])
    """

    def __init__(
        self,
        encoding: dict | None = None,
        hidden_features: int = 64,
        num_hidden_layers: int = 2,
        out_channels: int = 2,
        include_input: bool = True,
        channel_dim: int = -1,
    ) -> None:
        super().__init__()
        if encoding is not None and not isinstance(encoding, dict):
            raise ValueError(f"encoding must be a dict of HashGridEncoding arguments or None, got {type(encoding)}.")
        if hidden_features < 1 or out_channels < 1:
            raise ValueError(
                f"hidden_features and out_channels must be positive, got {hidden_features}, {out_channels}."
            )
        if num_hidden_layers < 0:
            raise ValueError(f"num_hidden_layers must be >= 0, got {num_hidden_layers}.")
        if channel_dim not in (-1, 1):
            raise ValueError(f"channel_dim must be -1 (points) or 1 (channel-first grids), got {channel_dim}.")
        self.encoding = HashGridEncoding(**(encoding or {}))
        self.include_input = bool(include_input)
        self.channel_dim = int(channel_dim)
        self.out_channels = int(out_channels)
        width = self.encoding.out_features + (3 if self.include_input else 0)
        layers: list[nn.Module] = []
        for _ in range(int(num_hidden_layers)):
            layers += [nn.Linear(width, hidden_features), nn.ReLU()]
            width = hidden_features
        layers.append(nn.Linear(width, out_channels))
        self.mlp = nn.Sequential(*layers)

    def _forward_points(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[-1] != 3:
            raise ValueError(f"HashGridField expects 3 coordinates on channel_dim, got shape {tuple(x.shape)}.")
        h = self.encoding(x)
        if self.include_input:
            h = torch.cat([h, x.to(h.dtype)], dim=-1)
        return self.mlp(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs for coordinates; see ``channel_dim`` for the layouts."""
        return channel_last_call(self._forward_points, x, self.channel_dim)
