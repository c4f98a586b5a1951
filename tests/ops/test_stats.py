"""tensor_stats / tensor_stats_multi: native == reference == float64 NumPy oracle."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from accdump import ops
from accdump.errors import OpInputError

from ._oracle import stats as oracle_stats

FLOAT4 = getattr(torch, "float4_e2m1fn_x2", None)
EXACT = {"count", "nan", "posinf", "neginf", "zeros", "min", "max", "absmax", "min_abs_nonzero"}


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random, never all-zero data of `dtype`, with a few zeros and a non-zero mean."""
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.3
    if dtype == FLOAT4 or dtype == torch.float8_e8m0fnu:
        return torch.randint(0, 255, shape, generator=gen, dtype=torch.uint8).view(dtype)
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        lo, hi = max(info.min, -1000), min(info.max, 1000)
        return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(dtype)
    x = torch.randn(shape, generator=gen) * 3 + 1.5
    x = x.masked_fill(torch.rand(shape, generator=gen) < 0.05, 0.0)
    return x.to(dtype)


def assert_stats(got: ops.TensorStats, x: torch.Tensor, rel: float = 1e-9) -> None:
    want = oracle_stats(x)
    for name, w in want.items():
        g = getattr(got, name)
        if isinstance(w, float) and math.isnan(w):
            assert math.isnan(g), f"{name}: expected NaN, got {g}"
        elif name in EXACT:
            assert g == w, f"{name}: {g} != {w}"
        else:
            scale = max(abs(w), want["absmax"] if not math.isnan(want["absmax"]) else 0.0, 1e-300)
            tol = rel * scale * (math.sqrt(want["count"]) if name == "sum" else 1.0)
            assert abs(g - w) <= tol, f"{name}: {g} vs {w} (tol {tol})"


LAYOUTS = {
    "contiguous": lambda x: x,
    "transposed": lambda x: x.transpose(0, 1),
    "sliced": lambda x: x[1:, ::3],
    "expanded": lambda x: x[:, :1].expand(-1, 7),
    "permuted3d": lambda x: x.reshape(x.shape[0], -1, 1).permute(2, 1, 0),
}


@pytest.mark.parametrize("dtype", sorted(ops.STATS_DTYPES, key=str), ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_stats_match_oracle(dtype, layout, device, backend, gen):
    base = random_tensor(dtype, (37, 66), gen)
    if dtype == FLOAT4 and layout in ("transposed", "sliced", "permuted3d"):
        # a packed float4 element is a byte pair; views keep whole bytes
        layout = "expanded"
    x = LAYOUTS[layout](base.to(device))
    got = ops.tensor_stats(x, backend=backend)
    assert_stats(got, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_nan_inf_are_counted_and_excluded(dtype, device, backend, gen):
    x = torch.randn(1000, generator=gen).to(dtype)
    x[3] = math.nan
    x[10] = math.inf
    x[11] = math.inf
    x[500] = -math.inf
    x[7] = 0.0
    got = ops.tensor_stats(x.to(device), backend=backend)
    assert (got.nan, got.posinf, got.neginf) == (1, 2, 1)
    assert got.finite == 996
    assert math.isfinite(got.mean) and math.isfinite(got.std)
    assert_stats(got, x)


def test_float8_special_values(device, backend):
    # e4m3fn has NaN (0x7f/0xff) and no Inf; e5m2 has Inf (0x7c/0xfc) and NaN (0x7d..)
    e4 = torch.tensor([0x7F, 0xFF, 0x01, 0x7E, 0x00], dtype=torch.uint8).view(torch.float8_e4m3fn)
    s = ops.tensor_stats(e4.to(device), backend=backend)
    assert (s.nan, s.posinf, s.zeros, s.max, s.min_abs_nonzero) == (2, 0, 1, 448.0, 2.0**-9)
    e5 = torch.tensor([0x7C, 0xFC, 0x7D, 0x3C], dtype=torch.uint8).view(torch.float8_e5m2)
    s = ops.tensor_stats(e5.to(device), backend=backend)
    assert (s.nan, s.posinf, s.neginf, s.max) == (1, 1, 1, 1.0)


def test_float4_values_hand_computed(device, backend):
    if FLOAT4 is None:
        pytest.skip("torch has no float4_e2m1fn_x2")
    # byte 0x72: low nibble 0x2 -> 1.0 (element 0), high nibble 0x7 -> 6.0 (element 1)
    # byte 0xA9: low 0x9 -> -0.5, high 0xA -> -1.0
    x = torch.tensor([[0x72, 0xA9]], dtype=torch.uint8).view(FLOAT4)
    s = ops.tensor_stats(x.to(device), backend=backend)
    assert (s.count, s.min, s.max, s.sum) == (4, -1.0, 6.0, 5.5)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,)], ids=str)
def test_empty_and_0d(shape, device, backend):
    x = torch.full(shape, 2.5, dtype=torch.float32, device=device)
    got = ops.tensor_stats(x, backend=backend)
    assert got.count == x.numel()
    if x.numel() == 0:
        assert math.isnan(got.mean) and got.sum == 0.0 and got.l2norm == 0.0
    else:
        assert (got.min, got.max, got.mean, got.std) == (2.5, 2.5, 2.5, 0.0)


def test_accuracy_large_offset_mean(device, backend, gen):
    # |mean| >> std: a naive E[x^2]-E[x]^2 in float64 loses digits here
    base = torch.randn(1_000_000, generator=gen, dtype=torch.float64)
    x = (base * 1e-3 + 1e4).to(device)
    got = ops.tensor_stats(x, backend=backend)
    want = base.std(unbiased=False).item() * 1e-3
    assert abs(got.std - want) / want < 1e-6
    assert_stats(got, x.cpu())


def test_deterministic(device, backend, gen):
    x = torch.randn(3_000_001, generator=gen).to(device)
    a = ops.tensor_stats_raw(x, backend=backend)
    b = ops.tensor_stats_raw(x, backend=backend)
    assert torch.equal(a, b)


def test_multi_matches_single(device, backend, gen):
    xs = [
        random_tensor(dt, shape, gen).to(device)
        for dt, shape in [
            (torch.float32, (5, 7)),
            (torch.bfloat16, (1, 4096)),
            (torch.int32, (100,)),
            (torch.float8_e4m3fn, (33, 2)),
            (torch.float16, (0,)),
            (torch.float64, ()),
        ]
    ]
    xs.append(xs[0].t())
    got = ops.tensor_stats_multi_raw(xs, backend=backend)
    assert got.shape == (len(xs), len(ops.STATS_FIELDS))
    for row, x in zip(ops.tensor_stats_multi(xs, backend=backend), xs, strict=True):
        assert_stats(row, x)
    assert ops.tensor_stats_multi_raw([], backend=backend).shape == (0, len(ops.STATS_FIELDS))


def test_many_small_tensors(device, backend, gen):
    xs = [torch.randn(1, 4096, generator=gen).to(device) for _ in range(512)]
    got = ops.tensor_stats_multi_raw(xs, backend=backend).cpu()
    want = torch.tensor(
        [[x.double().mean().item(), x.double().abs().max().item()] for x in xs], dtype=torch.float64
    )
    torch.testing.assert_close(got[:, [8, 10]], want, rtol=1e-12, atol=1e-12)


def test_64bit_indexing_strided_view(gen):
    # 3 * 2^30 logical elements over 3 real ones: index arithmetic past 2^31 without 12 GB
    if not ops.native_available("cpu"):
        pytest.skip(ops.backend_reason())
    col = torch.randn(3, 1, generator=gen, dtype=torch.float32)
    x = col.expand(3, 2**30)
    got = ops.tensor_stats(x, backend="native")
    v = col.double().reshape(-1)
    assert got.count == 3 * 2**30
    assert got.min == v.min().item() and got.max == v.max().item()
    assert abs(got.mean - v.mean().item()) < 1e-9 * v.abs().max().item()
    assert abs(got.std - v.std(unbiased=False).item()) < 1e-6 * v.std().item()


def test_errors():
    with pytest.raises(OpInputError, match=r"accdump.tensor_stats: x has dtype torch.complex64"):
        ops.tensor_stats(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(OpInputError, match="meta device"):
        ops.tensor_stats(torch.empty(3, device="meta"))
    with pytest.raises(OpInputError, match=r"xs\[1\] has dtype"):
        ops.tensor_stats_multi([torch.ones(2), torch.ones(2, dtype=torch.complex64)])


@pytest.mark.cuda
def test_multi_mixed_devices_rejected():
    with pytest.raises(OpInputError, match="all tensors must be on one device"):
        ops.tensor_stats_multi([torch.ones(2), torch.ones(2, device="cuda")])


def test_native_errors_name_op_and_argument():
    if not ops.native_available("cpu"):
        pytest.skip(ops.backend_reason())
    with pytest.raises(RuntimeError, match=r"accdump.tensor_stats: x has dtype ComplexFloat"):
        torch.ops.accdump.tensor_stats.default(torch.zeros(2, dtype=torch.complex64))


def test_opcheck(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    x = torch.randn(8, 33, device=device)
    torch.library.opcheck(torch.ops.accdump.tensor_stats.default, (x,))
    torch.library.opcheck(torch.ops.accdump.tensor_stats_multi.default, ([x, x[:, 1:].to(torch.bfloat16)],))


def test_compiles_without_graph_break(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    x = torch.randn(64, 64, device=device)

    @torch.compile(fullgraph=True, backend="eager")
    def f(t):
        return torch.ops.accdump.tensor_stats.default(t * 2)

    torch.testing.assert_close(f(x), ops.tensor_stats_raw(x * 2), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn, torch.int32], ids=str)
@pytest.mark.parametrize("numel", [1, 4096, 3_000_017])
def test_stats_into_matches(dtype, numel, device, backend, gen):
    ws = ops.stats_workspace(device)
    out = torch.full((3, len(ops.STATS_FIELDS)), -7.0, dtype=torch.float64, device=device)
    x = random_tensor(dtype, (numel,), gen).to(device)
    ops.tensor_stats_into(x, out, 1, ws, backend=backend)
    ops.tensor_stats_into(x[::2], out, 2, ws, backend=backend)  # the workspace is reused
    assert (out[0] == -7.0).all()
    assert_stats(ops.TensorStats.from_vector(out[1].tolist()), x)
    assert_stats(ops.TensorStats.from_vector(out[2].tolist()), x[::2])
    again = out.clone()
    ops.tensor_stats_into(x, again, 1, ws, backend=backend)
    assert torch.equal(again, out)  # bit-identical on repeat


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn], ids=str
)
@pytest.mark.parametrize("numel", [131_073, 1_048_583, 2_500_011])  # > 32, > 256 blocks, over the 512 cap
def test_every_stats_path_gives_the_same_bits(dtype, numel, device, gen):
    """tensor_stats, tensor_stats_into and tensor_stats_multi_into on many-block tensors: the same
    partition, accumulation and merge order, so bit-identical; and all three near the oracle."""
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    x = random_tensor(dtype, (numel,), gen).to(device)
    x[numel // 3] = math.nan  # one vector off the fast path
    ws = ops.stats_workspace(device)
    into = torch.zeros(3, len(ops.STATS_FIELDS), dtype=torch.float64, device=device)
    ops.tensor_stats_into(x, into, 0, ws)
    ops.tensor_stats_multi_into([x[1:], x], into, [1, 2], ws)  # x second: its blocks start at an offset
    whole = ops.tensor_stats_raw(x)
    assert torch.equal(into[0], whole), (into[0] - whole).tolist()
    assert torch.equal(into[2], whole)
    assert_stats(ops.TensorStats.from_vector(into[1].tolist()), x[1:])
    assert_stats(ops.TensorStats.from_vector(whole.tolist()), x)


@pytest.mark.parametrize(("dtype", "tiny"), [(torch.bfloat16, 1e-39), (torch.float16, 3e-6)], ids=str)
def test_subnormals_are_values_not_zeros(dtype, tiny, device, backend, gen):
    """bf16 / fp16 subnormals (the CUDA kernel takes these types' extrema and zero counts on
    pairs) count as non-zero values, with their exact magnitude."""
    x = random_tensor(dtype, (70_001,), gen)
    x[100], x[5001], x[70_000] = tiny, -tiny * 3, tiny * 2
    assert x[100].item() != 0 and abs(x[100].item()) < torch.finfo(dtype).smallest_normal
    x = x.to(device)
    for got in (ops.tensor_stats(x, backend=backend), ops.tensor_stats(x[100:5002], backend=backend)):
        assert got.min_abs_nonzero == abs(x[100].item())
    assert_stats(ops.tensor_stats(x, backend=backend), x)


_PATHS_SCRIPT = """
import sys, torch
from accdump import _C, ops
gen = torch.Generator().manual_seed(11)
rows = []
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for n in (15, 16, 17, 1000, 65_536 + 37, 200_001):
        x = (torch.randn(n, generator=gen) * 3 + 5).to(dtype)
        if n > 100:  # blocks off the fast path, both zeros, a subnormal
            x[7], x[33], x[20], x[21] = float("nan"), float("inf"), 0.0, -0.0
            x[-5] = torch.finfo(dtype).smallest_normal / 4
            x[52] = -0.0  # after x[20] = 0.0 in the same lane of a later all-finite block
        rows += [ops.tensor_stats_raw(x, backend="native"), ops.tensor_stats_raw(x[1:], backend="native")]
torch.save((torch.stack(rows), _C.cpu_stats_path()), sys.argv[1])
"""


def _cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return {f for line in lines if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def test_cpu_simd_and_portable_paths_give_the_same_bits(tmp_path):
    """The CPU kernel's AVX2 loop (taken where the CPU has it) and its portable loop
    (ACCDUMP_STATS_PORTABLE=1) fill the same lanes with the same operations: a dump's statistics
    do not depend on the CPU that recorded it. Where there is no AVX2 both runs take the portable
    loop, and the comparison still holds."""
    if not ops.native_available("cpu"):
        pytest.skip(ops.backend_reason())
    out = {}
    for name, env in (("simd", {}), ("portable", {"ACCDUMP_STATS_PORTABLE": "1"})):
        path = tmp_path / f"{name}.pt"
        subprocess.run(
            [sys.executable, "-c", _PATHS_SCRIPT, str(path)],
            env={**os.environ, "ACCDUMP_STATS_PORTABLE": "0", **env},
            check=True,
        )
        out[name] = torch.load(path)
    (simd, simd_path), (portable, portable_path) = out["simd"], out["portable"]
    assert portable_path == "portable"
    if {"avx2", "fma", "f16c"} <= _cpu_flags():
        assert simd_path == "avx2"
    assert torch.equal(simd.view(torch.int64), portable.view(torch.int64))
    assert torch.isfinite(simd[:, 8]).all()  # means: every tensor had finite values


def test_stats_into_errors(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    ws = ops.stats_workspace(device)
    x = torch.ones(4, device=device)
    with pytest.raises(OpInputError, match="row 5 is outside out's 2 rows"):
        ops.tensor_stats_into(x, torch.zeros(2, 13, dtype=torch.float64, device=device), 5, ws)
    with pytest.raises(OpInputError, match="out must be a contiguous float64 tensor"):
        ops.tensor_stats_into(x, torch.zeros(2, 13, device=device), 0, ws)
    with pytest.raises(OpInputError, match="workspace must be"):
        ops.tensor_stats_into(x, torch.zeros(2, 13, dtype=torch.float64, device=device), 0, ws[:10])
    # the partials in it are read 16 bytes at a time
    shifted = torch.zeros(ws.numel() + 8, dtype=torch.uint8, device=device)[8:]
    with pytest.raises(OpInputError, match="16-byte boundary"):
        ops.tensor_stats_into(x, torch.zeros(2, 13, dtype=torch.float64, device=device), 0, shifted)
    with pytest.raises(OpInputError, match="16-byte boundary"):
        ops.tensor_stats_multi_into([x], torch.zeros(2, 13, dtype=torch.float64, device=device), [0], shifted)


def test_workspace_size_matches_native():
    if not ops.native_available("cpu"):
        pytest.skip(ops.backend_reason())
    assert torch.ops.accdump.stats_workspace_size() == ops.STATS_WORKSPACE_BYTES


def test_stats_into_opcheck(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    out = torch.zeros(2, 13, dtype=torch.float64, device=device)
    torch.library.opcheck(
        torch.ops.accdump.tensor_stats_into.default,
        (torch.randn(100, device=device), out, 1, ops.stats_workspace(device)),
    )


@pytest.mark.cuda
def test_stats_into_cuda_graph_replay(gen):
    x = torch.randn(1 << 20, generator=gen).cuda()
    ws = ops.stats_workspace("cuda")
    out = torch.zeros(1, 13, dtype=torch.float64, device="cuda")
    ops.tensor_stats_into(x, out, 0, ws)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.tensor_stats_into(x, out, 0, ws)
    x.copy_(torch.randn(1 << 20, generator=gen).cuda() * 3)
    graph.replay()
    torch.cuda.synchronize()
    assert_stats(ops.TensorStats.from_vector(out[0].tolist()), x)


@pytest.mark.parametrize("n", [1, 23, 24, 25, 70])
def test_stats_multi_into_is_bit_identical_to_stats_into(n, device, backend, gen):
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.int32, torch.float64]
    sizes = [1, 7, 4096, 70_001, 600_000]  # one and many blocks; mixed so launches split by blocks too
    xs = []
    for i in range(n):
        x = random_tensor(dtypes[i % len(dtypes)], (sizes[(i * 3) % len(sizes)],), gen).to(device)
        xs.append(x[::2] if i % 4 == 3 else x)  # strided ones too
    ws = ops.stats_workspace(device)
    rows = torch.randperm(n + 2, generator=gen)[:n].tolist()  # any rows, in any order
    got = torch.full((n + 2, len(ops.STATS_FIELDS)), -7.0, dtype=torch.float64, device=device)
    ops.tensor_stats_multi_into(xs, got, rows, ws, backend=backend)
    want = torch.full_like(got, -7.0)
    for x, row in zip(xs, rows, strict=True):
        ops.tensor_stats_into(x, want, row, ws, backend=backend)
    assert torch.equal(got, want)
    for x, row in zip(xs[:6], rows[:6], strict=True):
        assert_stats(ops.TensorStats.from_vector(got[row].tolist()), x)
    ops.tensor_stats_multi_into(xs, got, rows, ws, backend=backend)  # the workspace's counters were reset
    assert torch.equal(got, want)


def test_stats_multi_into_errors(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    out = torch.zeros(2, 13, dtype=torch.float64, device=device)
    x = torch.ones(4, device=device)
    with pytest.raises(OpInputError, match="2 tensors but 1 rows"):
        ops.tensor_stats_multi_into([x, x], out, [0])
    with pytest.raises(OpInputError, match=r"xs\[1\]: row 2 is outside out's 2 rows"):
        ops.tensor_stats_multi_into([x, x], out, [0, 2])
    with pytest.raises(OpInputError, match=r"xs\[0\]: x has dtype ComplexFloat"):
        ops.tensor_stats_multi_into([torch.ones(2, dtype=torch.complex64, device=device)], out, [0])
    ops.tensor_stats_multi_into([], out, [])  # nothing to do


def test_stats_multi_into_opcheck(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    out = torch.zeros(3, 13, dtype=torch.float64, device=device)
    xs = [torch.randn(100, device=device), torch.randn(5, 7, device=device).to(torch.bfloat16)]
    torch.library.opcheck(
        torch.ops.accdump.tensor_stats_multi_into.default, (xs, out, [2, 0], ops.stats_workspace(device))
    )


@pytest.mark.cuda
def test_stats_multi_into_cuda_graph_replay(gen):
    xs = [torch.randn(n, generator=gen).cuda() for n in (3, 4096, 1 << 20)]
    ws = ops.stats_workspace("cuda")
    out = torch.zeros(3, 13, dtype=torch.float64, device="cuda")
    ops.tensor_stats_multi_into(xs, out, [2, 1, 0], ws)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.tensor_stats_multi_into(xs, out, [2, 1, 0], ws)
    for x in xs:
        x.mul_(3).add_(1)
    graph.replay()
    torch.cuda.synchronize()
    for x, row in zip(xs, [2, 1, 0], strict=True):
        assert_stats(ops.TensorStats.from_vector(out[row].tolist()), x)
