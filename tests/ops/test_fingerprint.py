"""tensor_fingerprint_into: native == reference bit for bit, layout-independent, sensitive to one bit."""

from __future__ import annotations

import pytest
import torch

from accdump import ops, reference
from accdump.errors import OpInputError

DTYPES = [
    torch.float32,
    torch.bfloat16,
    torch.float16,
    torch.float64,
    torch.float8_e4m3fn,
    torch.int64,
    torch.bool,
    torch.uint8,
]


def rand(dtype, shape, gen):
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype in (torch.int64, torch.uint8):
        return torch.randint(0, 200, shape, generator=gen).to(dtype)
    return (torch.randn(shape, generator=gen) * 4).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("numel", [1, 3, 8, 1001, 300_007])
def test_matches_reference(dtype, numel, device, backend, gen):
    x = rand(dtype, (numel,), gen).to(device)
    out = torch.zeros(2, 2, dtype=torch.int64, device=device)
    ops.tensor_fingerprint_into(x, out, 1, backend=backend)
    assert out[0].tolist() == [0, 0]
    assert out[1].tolist() == reference.fingerprint(x.cpu()).tolist()


def test_layout_independent_and_bit_sensitive(device, backend, gen):
    x = torch.randn(64, 33, generator=gen).to(device)
    t = x.t().contiguous().t()  # same values, other strides
    assert ops.fingerprint(x, backend) == ops.fingerprint(t, backend)
    assert ops.fingerprint(x[:, ::2], backend) == ops.fingerprint(x[:, ::2].contiguous(), backend)
    y = x.clone()
    y.view(torch.int32)[5, 7] ^= 1  # one ulp
    assert ops.fingerprint(x, backend) != ops.fingerprint(y, backend)
    assert ops.fingerprint(x, backend) != ops.fingerprint(x.reshape(-1)[1:], backend)


def test_unaligned_view(device, backend, gen):
    raw = torch.randint(0, 255, (1000,), generator=gen, dtype=torch.uint8).to(device)
    x = raw[3:]  # storage offset 3: not 8-byte aligned
    out = torch.zeros(1, 2, dtype=torch.int64, device=device)
    ops.tensor_fingerprint_into(x, out, 0, backend=backend)
    assert out[0].tolist() == reference.fingerprint(x.cpu()).tolist()


def test_errors(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    x = torch.ones(4, device=device)
    with pytest.raises(OpInputError, match="row 3 is outside out's 1 rows"):
        ops.tensor_fingerprint_into(x, torch.zeros(1, 2, dtype=torch.int64, device=device), 3)
    with pytest.raises(OpInputError, match="out must be a contiguous int64 tensor"):
        ops.tensor_fingerprint_into(x, torch.zeros(1, 2, device=device), 0)


def test_opcheck(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    out = torch.zeros(1, 2, dtype=torch.int64, device=device)
    torch.library.opcheck(
        torch.ops.accdump.tensor_fingerprint_into.default, (torch.randn(10, device=device), out, 0)
    )


@pytest.mark.parametrize("n", [1, 63, 64, 65, 150])
def test_multi_into_equals_one_at_a_time(n, device, backend, gen):
    sizes = [1, 3, 1000, 70_001, 1_200_000]  # one and many blocks, odd byte counts
    xs = []
    for i in range(n):
        x = rand(DTYPES[i % len(DTYPES)], (sizes[(i * 7) % len(sizes)],), gen).to(device)
        xs.append(x[1::3] if i % 5 == 2 else x)  # strided ones are read in logical order
    rows = torch.randperm(n + 3, generator=gen)[:n].tolist()
    got = torch.full((n + 3, 2), -5, dtype=torch.int64, device=device)
    ops.tensor_fingerprint_multi_into(xs, got, rows, backend=backend)
    want = torch.full_like(got, -5)
    for x, row in zip(xs, rows, strict=True):
        ops.tensor_fingerprint_into(x, want, row, backend=backend)
    assert torch.equal(got, want)
    assert got[rows[0]].tolist() == reference.fingerprint(xs[0].cpu()).tolist()
    ops.tensor_fingerprint_multi_into(xs, got, rows, backend=backend)  # counters were reset
    assert torch.equal(got, want)


def test_multi_into_errors(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    out = torch.zeros(2, 2, dtype=torch.int64, device=device)
    x = torch.ones(4, device=device)
    with pytest.raises(OpInputError, match="2 tensors but 1 rows"):
        ops.tensor_fingerprint_multi_into([x, x], out, [0])
    with pytest.raises(OpInputError, match=r"xs\[1\]: row 2 is outside out's 2 rows"):
        ops.tensor_fingerprint_multi_into([x, x], out, [0, 2])
    with pytest.raises(OpInputError, match=r"xs\[0\] is on the meta device"):
        ops.tensor_fingerprint_multi_into([torch.ones(2, device="meta")], out, [0])


def test_multi_into_opcheck(device):
    if not ops.native_available(device):
        pytest.skip(ops.backend_reason())
    out = torch.zeros(3, 2, dtype=torch.int64, device=device)
    xs = [torch.randn(10, device=device), torch.randn(4, 6, device=device).t()]
    torch.library.opcheck(torch.ops.accdump.tensor_fingerprint_multi_into.default, (xs, out, [2, 0]))


@pytest.mark.cuda
def test_multi_into_cuda_graph_replay(gen):
    xs = [torch.randn(n, generator=gen).cuda() for n in (5, 1 << 20)]
    out = torch.zeros(2, 2, dtype=torch.int64, device="cuda")
    ops.tensor_fingerprint_multi_into(xs, out, [1, 0])  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.tensor_fingerprint_multi_into(xs, out, [1, 0])
    for x in xs:
        x.add_(1)
    graph.replay()
    torch.cuda.synchronize()
    assert out[1].tolist() == reference.fingerprint(xs[0].cpu()).tolist()
    assert out[0].tolist() == reference.fingerprint(xs[1].cpu()).tolist()
