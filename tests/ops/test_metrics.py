"""compare_metrics / rowwise_metrics: native == reference == float64 NumPy oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from accdump import ops
from accdump.errors import OpInputError

FLOAT_DTYPES = sorted(ops.METRICS_DTYPES, key=str)


def pair(dtype_a, dtype_b, shape, gen, noise=0.05):
    g = torch.randn(shape, generator=gen) * 2 + 0.5
    t = g + noise * torch.randn(shape, generator=gen)
    return g.to(dtype_a), t.to(dtype_b)


def oracle(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float, eps: float) -> dict[str, float]:
    x = a.detach().cpu().contiguous().to(torch.float64).numpy().reshape(-1)
    y = b.detach().cpu().contiguous().to(torch.float64).numpy().reshape(-1)
    fin = np.isfinite(x) & np.isfinite(y)
    with np.errstate(invalid="ignore"):
        d = np.abs(x - y)
    with np.errstate(invalid="ignore"):
        close = np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)  # |x-y| <= atol + rtol*|y|
    idx = np.flatnonzero(fin)
    df = d[fin]
    return {
        "count": x.size,
        "dot": float(np.sum(x[fin] * y[fin])),
        "sumsq_a": float(np.sum(x[fin] ** 2)),
        "sumsq_b": float(np.sum(y[fin] ** 2)),
        "max_abs_diff": float(df.max()) if df.size else 0.0,
        "argmax_abs_diff": int(idx[np.argmax(df)]) if df.size else -1,
        "sum_abs_diff": float(df.sum()),
        "sum_sq_diff": float(np.sum(df**2)),
        "max_rel_diff": float(np.max(df / np.maximum(np.abs(x[fin]), eps))) if df.size else 0.0,
        "allclose_fail": int((~close).sum()),
        "nan_mismatch": int((np.isnan(x) != np.isnan(y)).sum()),
        "inf_mismatch": int(((np.isinf(x) != np.isinf(y)) | (np.isinf(x) & np.isinf(y) & (x != y))).sum()),
        "nonfinite": int((~fin).sum()),
        "not_equal": int(((x != y) & ~(np.isnan(x) & np.isnan(y))).sum()),
    }


def assert_metrics(got: ops.PairMetrics, want: dict[str, float]) -> None:
    for name, w in want.items():
        g = getattr(got, name)
        if isinstance(w, int) or name in ("max_abs_diff", "max_rel_diff"):
            assert g == w, f"{name}: {g} != {w}"
        else:
            assert abs(g - w) <= 1e-9 * max(abs(w), 1.0) + 1e-12, f"{name}: {g} vs {w}"


LAYOUTS = {
    "contiguous": lambda a, b: (a, b),
    "both_transposed": lambda a, b: (a.t(), b.t()),
    "one_transposed": lambda a, b: (a.t().contiguous(), b.t()),
    "sliced": lambda a, b: (a[2:, 1::2], b[2:, 1::2]),
    "expanded": lambda a, b: (a[:, :1].expand(-1, 9), b[:, :1].expand(-1, 9)),
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_compare_same_dtype(dtype, layout, device, backend, gen):
    a, b = pair(dtype, dtype, (41, 70), gen)
    a, b = LAYOUTS[layout](a.to(device), b.to(device))
    got = ops.compare_metrics(a, b, atol=1e-3, rtol=1e-2, backend=backend)
    assert_metrics(got, oracle(a, b, 1e-3, 1e-2, ops.DEFAULT_EPS))


@pytest.mark.parametrize(
    "dtype_b", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2], ids=str
)
def test_compare_mixed_dtypes(dtype_b, device, backend, gen):
    a, b = pair(torch.float32, dtype_b, (3, 17, 29), gen)
    a, b = a.to(device), b.to(device)
    got = ops.compare_metrics(a, b, atol=1e-2, rtol=1e-2, backend=backend)
    assert_metrics(got, oracle(a, b, 1e-2, 1e-2, ops.DEFAULT_EPS))
    assert 0.9 < got.cosine <= 1.0


def test_compare_nan_inf_positions(device, backend, gen):
    a, b = pair(torch.float32, torch.float32, (1000,), gen)
    a[1], b[1] = math.nan, math.nan  # same NaN: equal, not a mismatch
    a[2] = math.nan  # NaN only in golden
    b[3] = math.inf  # Inf only in target
    a[4], b[4] = math.inf, -math.inf  # opposite infinities
    a[5], b[5] = math.inf, math.inf  # same infinity: equal
    got = ops.compare_metrics(a.to(device), b.to(device), backend=backend)
    assert (got.nan_mismatch, got.inf_mismatch, got.nonfinite) == (1, 2, 5)
    assert_metrics(got, oracle(a, b, ops.DEFAULT_ATOL, ops.DEFAULT_RTOL, ops.DEFAULT_EPS))
    assert math.isfinite(got.cosine)


def test_compare_identical_and_zero(device, backend, gen):
    a = torch.randn(513, generator=gen).to(device)
    m = ops.compare_metrics(a, a.clone(), backend=backend)
    assert (m.cosine, m.max_abs_diff, m.not_equal, m.allclose_fail, m.rel_l2) == (1.0, 0.0, 0, 0, 0.0)
    assert m.sqnr_db == math.inf and m.norm_ratio == pytest.approx(1.0, abs=1e-15)
    z = torch.zeros(10, device=device)
    m = ops.compare_metrics(z, z, backend=backend)
    assert (m.cosine, m.norm_ratio, m.rel_l2) == (1.0, 1.0, 0.0)
    m = ops.compare_metrics(z, torch.ones(10, device=device), backend=backend)
    assert (m.cosine, m.norm_ratio, m.rel_l2) == (0.0, math.inf, math.inf)


def test_compare_scale_bug_keeps_cosine_changes_norm(device, backend, gen):
    # a missing global scale: cosine stays at 1, only magnitudes move
    a = torch.randn(4096, generator=gen, dtype=torch.float64).to(device)
    m = ops.compare_metrics(a, a * 6.0, backend=backend)
    assert m.cosine == pytest.approx(1.0, abs=1e-12)
    assert m.norm_ratio == pytest.approx(6.0, rel=1e-12)
    assert m.rel_l2 == pytest.approx(5.0, rel=1e-12)


@pytest.mark.parametrize("shape", [(), (0,), (4, 0), (1,)], ids=str)
def test_compare_empty_and_0d(shape, device, backend):
    a = torch.full(shape, 1.5, device=device)
    b = torch.full(shape, 1.25, device=device)
    got = ops.compare_metrics(a, b, backend=backend)
    assert_metrics(got, oracle(a, b, ops.DEFAULT_ATOL, ops.DEFAULT_RTOL, ops.DEFAULT_EPS))


def test_compare_argmax_tie_takes_first(device, backend):
    a = torch.zeros(10_000, device=device)
    b = a.clone()
    b[7777] = 2.0
    b[9000] = 2.0
    b[8000] = -2.0
    got = ops.compare_metrics(a, b, backend=backend)
    assert (got.max_abs_diff, got.argmax_abs_diff) == (2.0, 7777)


def test_compare_deterministic(device, backend, gen):
    a, b = pair(torch.float32, torch.bfloat16, (2_000_003,), gen)
    a, b = a.to(device), b.to(device)
    assert torch.equal(
        ops.compare_metrics_raw(a, b, backend=backend), ops.compare_metrics_raw(a, b, backend=backend)
    )


def test_compare_64bit_index(gen):
    if not ops.native_available("cpu"):
        pytest.skip(ops.backend_reason())
    col_a = torch.randn(3, 1, generator=gen)
    col_b = col_a.clone()
    col_b[2] += 1.0
    a, b = col_a.expand(3, 2**30), col_b.expand(3, 2**30)
    got = ops.compare_metrics(a, b, backend="native")
    assert got.count == 3 * 2**30
    assert got.argmax_abs_diff == 2 * 2**30  # first element of the last row, past 2^31
    assert got.not_equal == 2**30


def rowwise_oracle(a, b):
    x = a.detach().cpu().to(torch.float64).numpy()
    y = b.detach().cpu().to(torch.float64).numpy()
    last = x.shape[-1] if x.ndim else 1
    x, y = x.reshape(-1, last), y.reshape(-1, last)
    na, nb = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
    cos = np.clip(np.sum(x * y, -1) / (na * nb), -1, 1)
    return cos, np.abs(x - y).max(-1), np.linalg.norm(x - y, axis=-1) / na


@pytest.mark.parametrize("dtype_b", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "both_transposed", "one_transposed", "sliced"])
def test_rowwise(dtype_b, layout, device, backend, gen):
    a, b = pair(torch.float32, dtype_b, (23, 130), gen)
    a, b = LAYOUTS[layout](a.to(device), b.to(device))
    got = ops.rowwise_metrics(a, b, backend=backend)
    cos, maxd, rel = rowwise_oracle(a, b)
    np.testing.assert_allclose(got.cosine.cpu().numpy(), cos, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(got.max_abs_diff.cpu().numpy(), maxd)
    np.testing.assert_allclose(got.rel_l2.cpu().numpy(), rel, rtol=1e-12)


def test_rowwise_3d_zero_and_nan_rows(device, backend, gen):
    a = torch.randn(2, 5, 64, generator=gen)
    b = a + 0.01 * torch.randn(2, 5, 64, generator=gen)
    a[0, 1] = 0.0
    b[0, 1] = 0.0  # both zero: cosine 1, rel 0
    b[1, 2] = 0.0  # target zero: cosine 0
    b[1, 3, 7] = math.nan
    got = ops.rowwise_metrics_raw(a.to(device), b.to(device), backend=backend).cpu()
    assert got.shape == (10, 3)
    assert got[1, 0] == 1.0 and got[1, 2] == 0.0
    assert got[7, 0] == 0.0 and got[7, 2] == pytest.approx(1.0)
    assert torch.isnan(got[8]).all()
    assert (got[0, 0] > 0.999) and (got[0, 0] <= 1.0)


def test_rowwise_0d_and_empty(device, backend):
    got = ops.rowwise_metrics_raw(
        torch.tensor(2.0, device=device), torch.tensor(1.0, device=device), backend=backend
    ).cpu()
    assert got.tolist() == [[1.0, 1.0, 0.5]]
    got = ops.rowwise_metrics_raw(
        torch.ones(3, 0, device=device), torch.ones(3, 0, device=device), backend=backend
    ).cpu()
    assert got.tolist() == [[1.0, 0.0, 0.0]] * 3


def test_errors():
    with pytest.raises(
        OpInputError,
        match=r"accdump.compare_metrics: a and b must have the same shape, got \[4, 8\] and \[4, 9\]",
    ):
        ops.compare_metrics(torch.ones(4, 8), torch.ones(4, 9))
    with pytest.raises(OpInputError, match=r"accdump.rowwise_metrics: b has dtype torch.int64"):
        ops.rowwise_metrics(torch.ones(4), torch.ones(4, dtype=torch.int64))
    with pytest.raises(OpInputError, match="meta device"):
        ops.compare_metrics(torch.ones(2, device="meta"), torch.ones(2, device="meta"))


@pytest.mark.cuda
def test_device_mismatch():
    with pytest.raises(OpInputError, match="same device"):
        ops.compare_metrics(torch.ones(2), torch.ones(2, device="cuda"))


def test_native_errors_name_op_and_argument():
    if not ops.native_available("cpu"):
        pytest.skip(ops.backend_reason())
    with pytest.raises(RuntimeError, match=r"accdump.compare_metrics: a and b must have the same shape"):
        torch.ops.accdump.compare_metrics.default(torch.ones(2), torch.ones(3), 0.0, 0.0, 1e-12)
    with pytest.raises(RuntimeError, match=r"accdump.rowwise_metrics: a has dtype Int"):
        torch.ops.accdump.rowwise_metrics.default(torch.ones(2, dtype=torch.int32), torch.ones(2))


def test_opcheck(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    a = torch.randn(8, 33, device=device)
    b = a.to(torch.bfloat16)
    torch.library.opcheck(torch.ops.accdump.compare_metrics.default, (a, b, 1e-3, 1e-3, 1e-12))
    torch.library.opcheck(torch.ops.accdump.rowwise_metrics.default, (a, b))
