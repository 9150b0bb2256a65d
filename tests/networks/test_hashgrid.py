"""Tests of the multiresolution hash-grid encoding and field (values, not only shapes)."""

from __future__ import annotations

import io
import itertools
import warnings

import pytest
import torch

from cunerf_monai.networks.hashgrid import HashGridEncoding, HashGridField, hashgrid_level_resolutions

PRIMES = (1, 2654435761, 805459861)


def vertex_to_field(ijk, res) -> torch.Tensor:
    """Field coordinates of vertex ``ijk`` of a level with ``res`` cells per axis."""
    return torch.tensor([-1.0 + 2.0 * i / r for i, r in zip(ijk, res)], dtype=torch.float64)


def dense_row(ijk, res) -> int:
    i, j, k = ijk
    return i + j * (res[0] + 1) + k * (res[0] + 1) * (res[1] + 1)


def hash_row(ijk, table_size) -> int:
    h = 0
    for v, p in zip(ijk, PRIMES):
        h ^= (v * p) & 0xFFFFFFFFFFFFFFFF
    return h & (table_size - 1)


def random_encoding(**kwargs) -> HashGridEncoding:
    torch.manual_seed(0)
    kwargs.setdefault("init_scale", 1.0)
    return HashGridEncoding(**kwargs)


def test_geometric():
    res = hashgrid_level_resolutions(5, 16, 256)
    assert [r[0] for r in res] == [16, 32, 64, 128, 256]
    assert all(r[0] == r[1] == r[2] for r in res)


def test_per_axis():
    res = hashgrid_level_resolutions(4, (8, 4, 16), (91, 109, 91))
    assert res[0] == (8, 4, 16)
    assert res[-1] == (91, 109, 91)
    for a in range(3):
        assert [r[a] for r in res] == sorted(r[a] for r in res)


def test_single_level_uses_base():
    assert hashgrid_level_resolutions(1, 7, 50) == [(7, 7, 7)]


def test_dense_flags():
    enc = HashGridEncoding(num_levels=4, log2_hashmap_size=12, base_resolution=4, finest_resolution=32)
    assert enc.resolutions == [(4, 4, 4), (8, 8, 8), (16, 16, 16), (32, 32, 32)]
    # 5^3 = 125 and 9^3 = 729 fit 4096 rows, 17^3 = 4913 does not.
    assert enc.level_is_dense == [True, True, False, False]
    assert enc.out_features == 8
    assert tuple(enc.embeddings.shape) == (4, 4096, 2)


@pytest.mark.parametrize(
    "case, level, ijk",
    [
        ("origin", 0, (0, 0, 0)),
        ("far_corner", 0, (4, 4, 4)),
        ("interior_l0", 0, (1, 3, 2)),
        ("interior_l1", 1, (5, 0, 7)),
        ("boundary_l1", 1, (8, 8, 0)),
    ],
)
def test_dense_level_vertex(case, level, ijk):
    enc = random_encoding(num_levels=3, log2_hashmap_size=12, base_resolution=4, finest_resolution=16)
    res = enc.resolutions[level]
    assert enc.level_is_dense[level]
    out = enc(vertex_to_field(ijk, res).float()[None])
    feat = out[0, level * 2 : level * 2 + 2]
    expected = enc.embeddings[level, dense_row(ijk, res)]
    torch.testing.assert_close(feat, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case, ijk", [("a", (0, 0, 0)), ("b", (3, 17, 9)), ("c", (31, 2, 32)), ("d", (32, 32, 32))])
def test_hashed_level_vertex(case, ijk):
    enc = random_encoding(num_levels=2, log2_hashmap_size=10, base_resolution=8, finest_resolution=32)
    assert enc.level_is_dense == [True, False]
    out = enc(vertex_to_field(ijk, enc.resolutions[1]).float()[None])
    expected = enc.embeddings[1, hash_row(ijk, enc.table_size)]
    torch.testing.assert_close(out[0, 2:4], expected, atol=1e-5, rtol=0)


def test_anisotropic_dense_vertex():
    res = (3, 5, 7)
    enc = random_encoding(num_levels=1, log2_hashmap_size=10, base_resolution=res, finest_resolution=res)
    for ijk in [(0, 0, 0), (3, 5, 7), (2, 1, 6), (1, 4, 3)]:
        out = enc(vertex_to_field(ijk, (3, 5, 7)).float()[None])
        torch.testing.assert_close(out[0], enc.embeddings[0, dense_row(ijk, (3, 5, 7))], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_linear_function_is_reproduced(dtype, tol):
    res = (4, 5, 6)
    enc = HashGridEncoding(num_levels=1, features_per_level=2, log2_hashmap_size=10, base_resolution=res,
                           finest_resolution=res).to(dtype)
    assert enc.level_is_dense == [True]
    a = torch.tensor([[0.3, -0.2, 0.1], [-0.05, 0.15, 0.25]], dtype=torch.float64)  # (F, 3)
    b = torch.tensor([0.5, -0.25], dtype=torch.float64)
    with torch.no_grad():
        enc.embeddings.zero_()
        for ijk in itertools.product(*(range(r + 1) for r in res)):
            enc.embeddings[0, dense_row(ijk, res)] = (a @ torch.tensor(ijk, dtype=torch.float64) + b).to(dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(500, 3, generator=gen, dtype=torch.float64) * 1.98 - 0.99
    grid_pos = (x + 1) / 2 * torch.tensor(res, dtype=torch.float64)  # continuous vertex coordinates
    expected = grid_pos @ a.T + b
    out = enc(x.to(dtype))
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=0)


def test_multilinear_inside_one_cell():
    enc = HashGridEncoding(num_levels=1, features_per_level=1, log2_hashmap_size=6, base_resolution=1,
                           finest_resolution=1).double()
    corner_values = torch.rand(2, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        for ijk in itertools.product((0, 1), repeat=3):
            enc.embeddings[0, dense_row(ijk, (1, 1, 1)), 0] = corner_values[ijk]
    x = torch.rand(100, 3, dtype=torch.float64) * 2 - 1
    t = (x + 1) / 2
    expected = sum(
        corner_values[ijk] * torch.prod(torch.stack([t[:, a] if v else 1 - t[:, a] for a, v in enumerate(ijk)]), 0)
        for ijk in itertools.product((0, 1), repeat=3)
    )
    torch.testing.assert_close(enc(x)[:, 0], expected, atol=1e-12, rtol=0)


def test_grads_reach_table_and_mlp():
    torch.manual_seed(0)
    field = HashGridField(encoding={"num_levels": 4, "log2_hashmap_size": 10, "base_resolution": 4,
                                    "finest_resolution": 32})
    x = torch.rand(256, 3) * 2 - 1
    field(x).square().mean().backward()
    grad = field.encoding.embeddings.grad
    assert grad is not None
    for lvl in range(4):
        assert grad[lvl].abs().sum().item() > 0.0
    for name, p in field.mlp.named_parameters():
        assert p.grad is not None
        assert p.grad.abs().sum().item() > 0.0, name


def test_points_outside_are_clamped():
    enc = random_encoding(num_levels=3, log2_hashmap_size=8, base_resolution=2, finest_resolution=16)
    x = torch.tensor([[1.5, -3.0, 0.2], [1e6, -1e6, 1.0], [-1.0, 1.0, -1.0000001]], requires_grad=True)
    out = enc(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, enc(x.detach().clamp(-1, 1)))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(enc.embeddings.grad).all()


@pytest.mark.parametrize("features", [1, 2, 3, 4])
def test_fast_path_matches_plain_autograd(features):
    enc = random_encoding(num_levels=5, features_per_level=features, log2_hashmap_size=9,
                          base_resolution=(2, 3, 4), finest_resolution=(24, 30, 20))
    x = (torch.rand(300, 3) * 2.2 - 1.1).requires_grad_()
    out = enc(x)
    ref = enc._forward_reference(enc._to_unit_t(x)).permute(1, 0, 2).reshape(300, -1)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    g_tab, g_x = torch.autograd.grad(out, [enc.embeddings, x], g)
    r_tab, r_x = torch.autograd.grad(ref, [enc.embeddings, x], g)
    torch.testing.assert_close(g_tab, r_tab)
    torch.testing.assert_close(g_x, r_x, atol=1e-4, rtol=1e-4)


def test_gradcheck_double():
    from cunerf_monai.networks.hashgrid import _HashGridInterpolation

    enc = random_encoding(num_levels=3, log2_hashmap_size=6, base_resolution=2, finest_resolution=7).double()
    assert enc.level_is_dense == [True, False, False]
    unit_t = (torch.rand(3, 12, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    table = enc.embeddings.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda u, t: _HashGridInterpolation.apply(u, t, enc), (unit_t, table), eps=1e-6)


def test_no_grad_matches():
    field = HashGridField(encoding={"num_levels": 3, "log2_hashmap_size": 8, "finest_resolution": 40})
    x = torch.rand(64, 3) * 2 - 1
    with torch.no_grad():
        a = field(x)
    torch.testing.assert_close(a, field(x).detach())


def test_channel_first_equals_points():
    torch.manual_seed(0)
    enc = {"num_levels": 4, "log2_hashmap_size": 10, "base_resolution": 4, "finest_resolution": 32,
           "init_scale": 0.5}
    last = HashGridField(encoding=enc, channel_dim=-1)
    first = HashGridField(encoding=enc, channel_dim=1)
    first.load_state_dict(last.state_dict())
    x = torch.rand(2, 3, 5, 6, 7) * 2 - 1
    out_first = first(x)
    assert tuple(out_first.shape) == (2, 2, 5, 6, 7)
    out_last = last(x.movedim(1, -1))
    torch.testing.assert_close(out_first, out_last.movedim(-1, 1))


def test_leading_shape():
    field = HashGridField(encoding={"num_levels": 2, "log2_hashmap_size": 8}, out_channels=3)
    assert tuple(field(torch.zeros(4, 5, 3)).shape) == (4, 5, 3)
    assert tuple(field(torch.zeros(3)).shape) == (3,)


def test_empty_batch():
    field = HashGridField(encoding={"num_levels": 3, "log2_hashmap_size": 8})
    x = torch.zeros(0, 3, requires_grad=True)
    out = field(x)
    assert tuple(out.shape) == (0, 2)
    out.sum().backward()
    assert tuple(x.grad.shape) == (0, 3)


def test_include_input_width():
    a = HashGridField(encoding={"num_levels": 3, "log2_hashmap_size": 8}, include_input=True)
    b = HashGridField(encoding={"num_levels": 3, "log2_hashmap_size": 8}, include_input=False,
                      num_hidden_layers=0)
    assert a.mlp[0].in_features == 9
    assert b.mlp[0].in_features == 6
    assert len(b.mlp) == 1


def test_jit_trace():
    torch.manual_seed(0)
    field = HashGridField(encoding={"num_levels": 3, "log2_hashmap_size": 8, "init_scale": 0.5}, channel_dim=1)
    example = torch.rand(1, 3, 4, 4, 4) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(field, example)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    for shape in [(1, 3, 4, 4, 4), (2, 3, 5, 3, 6)]:
        x = torch.rand(*shape) * 2 - 1
        torch.testing.assert_close(traced(x), field(x))
        torch.testing.assert_close(loaded(x), field(x))


def test_hashed_indices_in_table():
    enc = HashGridEncoding(num_levels=4, log2_hashmap_size=10, base_resolution=16, finest_resolution=128)
    assert enc.level_is_dense == [False] * 4
    x = torch.rand(2000, 3) * 2.4 - 1.2
    for lvl in range(4):
        idx = enc.corner_indices(x, lvl)
        assert tuple(idx.shape) == (2000, 8)
        assert idx.min().item() >= 0
        assert idx.max().item() < enc.table_size


def test_hash_formula():
    enc = HashGridEncoding(num_levels=1, log2_hashmap_size=12, base_resolution=100, finest_resolution=100)
    assert enc.level_is_dense == [False]
    # a point inside cell (i, j, k): its corners are (i + dx, j + dy, k + dz), corner c = 4 dx + 2 dy + dz
    cell = (37, 81, 5)
    x = torch.tensor([[-1.0 + 2.0 * (c + 0.3) / 100 for c in cell]])
    idx = enc.corner_indices(x, 0)[0].tolist()
    expected = [hash_row((cell[0] + dx, cell[1] + dy, cell[2] + dz), 4096)
                for dx, dy, dz in itertools.product((0, 1), repeat=3)]
    assert idx == expected


def test_dense_vertices_distinct():
    res = (5, 3, 4)
    enc = HashGridEncoding(num_levels=1, log2_hashmap_size=8, base_resolution=res, finest_resolution=res)
    assert enc.level_is_dense == [True]
    centres = torch.tensor(
        [[-1.0 + 2.0 * (c + 0.5) / r for c, r in zip(ijk, res)] for ijk in itertools.product(*map(range, res))]
    )
    idx = enc.corner_indices(centres, 0)
    # each cell's 8 corners are distinct rows, and the vertices of the whole level fill rows 0 … prod(R+1)-1
    assert all(len(set(row)) == 8 for row in idx.tolist())
    n_vertices = 6 * 4 * 5
    assert sorted(set(idx.flatten().tolist())) == list(range(n_vertices))
    # and the rows are the dense formula of the corner vertices
    for cell_ijk, row in zip(itertools.product(*map(range, res)), idx.tolist()):
        corners = [tuple(c + d for c, d in zip(cell_ijk, off)) for off in itertools.product((0, 1), repeat=3)]
        assert row == [dense_row(c, res) for c in corners]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_levels": 0},
        {"features_per_level": 0},
        {"log2_hashmap_size": 0},
        {"base_resolution": 0},
        {"base_resolution": (4, 4)},
        {"finest_resolution": -3},
        {"base_resolution": 32, "finest_resolution": 16},
        {"base_resolution": (8, 8, 8), "finest_resolution": (16, 4, 16)},
        {"init_scale": -1.0},
    ],
)
def test_bad_encoding_args(kwargs):
    with pytest.raises(ValueError):
        HashGridEncoding(**kwargs)
    with pytest.raises(ValueError):
        HashGridField(encoding=kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_features": 0},
        {"num_hidden_layers": -1},
        {"out_channels": 0},
        {"channel_dim": 2},
        {"encoding": [16]},
    ],
)
def test_bad_field_args(kwargs):
    with pytest.raises(ValueError):
        HashGridField(**kwargs)


def test_bad_input_shape():
    enc = HashGridEncoding(num_levels=2, log2_hashmap_size=8)
    with pytest.raises(ValueError):
        enc(torch.zeros(4, 2))
    field = HashGridField(encoding={"num_levels": 2, "log2_hashmap_size": 8}, channel_dim=1)
    with pytest.raises(ValueError):
        field(torch.zeros(1, 4, 2, 2, 2))
