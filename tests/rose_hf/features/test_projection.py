"""Random projections: determinism, the blockwise matrix, JL inner-product preservation, sparse sketch structure."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from rose_hf.features.projection import (
    IdentityProjector,
    RademacherProjector,
    SJLTProjector,
    make_projector,
    resolve_projection,
)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("kind", ["rademacher", "sjlt"])
def test_same_arguments_give_bit_identical_projections(kind):
    x = torch.randn(9, 1000, generator=torch.Generator().manual_seed(1))
    first = make_projector(kind, 1000, 64, seed=3)
    second = make_projector(kind, 1000, 64, seed=3)
    assert first.describe() == second.describe()
    json.dumps(first.describe())  # stored in cache metadata
    assert torch.equal(first(x), second(x))
    assert torch.equal(first(x), first(x))  # and across calls (first call fills the cache)
    assert not torch.allclose(first(x), make_projector(kind, 1000, 64, seed=4)(x))


def test_bit_identical_across_processes():
    code = (
        "import torch, hashlib\n"
        "from rose_hf.features.projection import make_projector\n"
        "x = torch.linspace(-3, 3, 5 * 700).reshape(5, 700)\n"
        "for kind in ('rademacher', 'sjlt'):\n"
        "    y = make_projector(kind, 700, 48, seed=11)(x)\n"
        "    print(hashlib.sha256(y.numpy().tobytes()).hexdigest())\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    x = torch.linspace(-3, 3, 5 * 700).reshape(5, 700)
    here = [_digest(make_projector(kind, 700, 48, seed=11)(x)) for kind in ("rademacher", "sjlt")]
    assert child.stdout.split() == here


@pytest.mark.parametrize("kind", ["rademacher", "sjlt"])
def test_independent_of_batch_split(kind):
    # Bitwise on CPU. Rademacher: fp16-rounded inputs times +-1 summed in float64 over <= 8192 rows are exact, so the
    # BLAS kernel's summation order (which changes with the batch size) cannot matter. SJLT: index_add_ is sequential.
    proj = make_projector(kind, 2000, 96, seed=0)
    x = torch.randn(13, 2000, generator=torch.Generator().manual_seed(2))
    full = proj(x)
    assert torch.equal(full, torch.cat([proj(x[i : i + 1]) for i in range(13)]))
    assert torch.equal(full, torch.cat([proj(x[i : i + 5]) for i in range(0, 13, 5)]))
    assert torch.equal(full[4], proj(x[4])[0])  # a 1-D input is a batch of one


def test_rademacher_block_size_cache_and_in_dim_prefix_do_not_change_the_matrix():
    x = torch.randn(6, 1000, generator=torch.Generator().manual_seed(3))
    reference = make_projector("rademacher", 1000, 40, block_size=128)(x)
    for kwargs in ({"block_size": 384}, {"block_size": 5000}, {"cache_bytes": 0}, {}):
        assert torch.equal(make_projector("rademacher", 1000, 40, **kwargs)(x), reference), kwargs
    # Row i of the matrix depends only on (seed, out_dim, i).
    head = make_projector("rademacher", 1000, 40)(torch.eye(1000))[:300]
    assert torch.equal(make_projector("rademacher", 300, 40, block_size=256)(torch.eye(300)), head)


def test_sjlt_block_size_and_cache_do_not_change_the_sketch():
    x = torch.randn(4, 200_000, generator=torch.Generator().manual_seed(4))
    reference = make_projector("sjlt", 200_000, 128, sjlt_nnz=2, block_size=65536)(x)
    for kwargs in ({"block_size": 200_000}, {"cache_bytes": 0}):
        assert torch.equal(make_projector("sjlt", 200_000, 128, sjlt_nnz=2, **kwargs)(x), reference), kwargs


def test_rademacher_matrix_is_the_concatenated_sign_blocks():
    in_dim, out_dim = 300, 64
    proj = make_projector("rademacher", in_dim, out_dim, seed=0, block_size=128)
    assert isinstance(proj, RademacherProjector) and proj.num_blocks == 3
    matrix = proj(torch.eye(in_dim))
    signs = torch.cat([proj.sign_block(b) for b in range(proj.num_blocks)])
    assert signs.shape == (in_dim, out_dim) and set(signs.unique().tolist()) == {-1, 1}
    entry = torch.tensor(1 / math.sqrt(out_dim), dtype=torch.float32)
    assert torch.equal(matrix, signs.float() * entry)
    assert set(matrix.abs().unique().tolist()) == {entry.item()}
    # Looks random: balanced signs, column sums centred on 0 (each ~ N(0, in_dim)), no repeated rows.
    assert abs((signs == 1).float().mean().item() - 0.5) < 0.02
    column_sums = signs.float().sum(0)
    assert abs(column_sums.mean().item()) < 4 * math.sqrt(in_dim / out_dim)
    assert column_sums.std().item() == pytest.approx(math.sqrt(in_dim), rel=0.3)
    assert torch.unique(signs, dim=0).shape[0] == in_dim


def test_rademacher_rounds_inputs_through_fp16():
    x = torch.randn(5, 700, generator=torch.Generator().manual_seed(5)) * 3
    proj = make_projector("rademacher", 700, 32)
    assert torch.equal(proj(x), proj(x.half().float()))
    assert torch.equal(proj(x), proj(x.half()))  # any input dtype
    exact = make_projector("rademacher", 700, 32, input_dtype=None)(x)
    assert not torch.equal(exact, proj(x))
    # fp16 keeps 11 significant bits: the rounding moves each output by ~2**-12 of the output's norm.
    assert ((exact - proj(x)).norm(dim=1) / exact.norm(dim=1)).max() < 2e-3
    # Against a float64 reference built from the explicit matrix.
    matrix = proj(torch.eye(700)).double()
    torch.testing.assert_close(proj(x).double(), x.half().double() @ matrix, rtol=1e-6, atol=1e-6)


def _projected_cosine_errors(proj, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    px, py = proj(x).double(), proj(y).double()
    x, y = x.half().double(), y.half().double()
    cos = torch.nn.functional.cosine_similarity(x, y)
    cos_projected = torch.nn.functional.cosine_similarity(px, py)
    relative_inner = ((px * py).sum(1) - (x * y).sum(1)) / (x * y).sum(1)
    return (cos_projected - cos).numpy(), relative_inner.numpy()


@pytest.mark.parametrize(("kind", "nnz"), [("rademacher", 1), ("sjlt", 1), ("sjlt", 4)])
def test_inner_products_preserved_as_jl_predicts(kind, nnz):
    # For a JL map to k dims, the projected inner product of unit vectors has standard deviation about
    # sqrt((1 + cos^2) / k): ~1/sqrt(k) for random (near-orthogonal) pairs, ~sqrt(2/k) relative for near-parallel ones.
    # Bounds of 3 standard deviations for 95% of pairs hold with huge margin for a correct k=1024 map and fail for a
    # much smaller or degenerate one (checked with out_dim=8: 95th percentile error ~0.6 vs bound 0.094).
    in_dim, out_dim, pairs = 4096, 1024, 200
    generator = torch.Generator().manual_seed(6)
    proj = make_projector(kind, in_dim, out_dim, seed=0, sjlt_nnz=nnz)
    x = torch.randn(pairs, in_dim, generator=generator)

    random_pairs, _ = _projected_cosine_errors(proj, x, torch.randn(pairs, in_dim, generator=generator))
    assert np.quantile(np.abs(random_pairs), 0.95) < 3 / math.sqrt(out_dim)
    assert abs(random_pairs.mean()) < 3 / math.sqrt(out_dim * pairs)  # unbiased

    near = x + 0.1 * torch.randn(pairs, in_dim, generator=generator)
    cosine_errors, relative_inner = _projected_cosine_errors(proj, x, near)
    assert np.quantile(np.abs(relative_inner), 0.95) < 3 * math.sqrt(2 / out_dim)
    # Near-parallel cosines (~0.995) are preserved far better than random ones: error scales with 1 - cos^2.
    assert np.quantile(np.abs(cosine_errors), 0.95) < 3 * 0.01 * 2 / math.sqrt(out_dim)


@pytest.mark.parametrize("nnz", [1, 3])
def test_sjlt_columns_have_exactly_s_nonzeros(nnz):
    in_dim, out_dim = 5000, 60
    proj = make_projector("sjlt", in_dim, out_dim, seed=0, sjlt_nnz=nnz)
    assert isinstance(proj, SJLTProjector)
    matrix = proj(torch.eye(in_dim))  # row i = where input coordinate i goes
    assert ((matrix != 0).sum(1) == nnz).all()
    torch.testing.assert_close(matrix[matrix != 0].abs(), torch.full(((in_dim * nnz),), 1 / math.sqrt(nnz)))
    signs = matrix[matrix != 0] > 0
    assert abs(signs.float().mean().item() - 0.5) < 0.03
    load = (matrix != 0).sum(0).float()  # buckets are used evenly
    assert load.min() > 0 and load.std() / load.mean() < 0.3


def test_none_returns_the_input_as_float32():
    x = torch.randn(3, 50).half()
    proj = make_projector("none", 50, 50)
    assert isinstance(proj, IdentityProjector)
    out = proj(x)
    assert out.dtype == torch.float32 and torch.equal(out, x.float())
    assert proj.describe()["kind"] == "none"


def test_outputs_are_float32_for_any_input_dtype():
    for kind in ("rademacher", "sjlt"):
        proj = make_projector(kind, 300, 16)
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            assert proj(torch.randn(2, 300).to(dtype)).dtype == torch.float32


def test_resolve_projection():
    assert resolve_projection("rademacher", in_dim=100, out_dim=8192) == ("none", 100)
    assert resolve_projection("sjlt", in_dim=8192, out_dim=8192) == ("none", 8192)
    assert resolve_projection("rademacher", in_dim=10_000, out_dim=8192) == ("rademacher", 8192)
    assert resolve_projection("none", in_dim=10_000, out_dim=8192) == ("none", 10_000)
    with pytest.raises(ValueError, match="kind"):
        resolve_projection("gaussian", 10, 5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"kind": "gaussian"}, "kind"),
        ({"out_dim": 0}, "out_dim"),
        ({"in_dim": -1}, "in_dim"),
        ({"in_dim": 2.5}, "in_dim"),
        ({"block_size": 0}, "block_size"),
        ({"cache_bytes": -1}, "cache_bytes"),
        ({"input_dtype": torch.int8}, "input_dtype"),
        ({"kind": "sjlt", "sjlt_nnz": 0}, "sjlt_nnz"),
        ({"kind": "sjlt", "sjlt_nnz": 17}, "sjlt_nnz"),
        ({"kind": "none"}, "out_dim"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    arguments = {"kind": "rademacher", "in_dim": 100, "out_dim": 16} | kwargs
    with pytest.raises(ValueError, match=name):
        make_projector(**arguments)


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match="rademacher.*sjlt.*none"):
        make_projector("fast_jl", 100, 16)


def test_wrong_input_width_raises():
    with pytest.raises(ValueError, match="in_dim=100"):
        make_projector("rademacher", 100, 16)(torch.randn(2, 99))
