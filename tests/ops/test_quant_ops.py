"""block_dequantize / block_scaled_linear: native == reference == float64 NumPy oracle, the test
vectors of shared/quant_formats.md §8, every element and scale format, and the failure paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accdump import ops
from accdump.errors import OpInputError
from accdump.quant import swizzle_128x4, unswizzle_128x4

# --- an independent float64 decoder, written from the format definitions (§1) ----------------


def minifloat(b: int, ebits: int, mbits: int, bias: int) -> float:
    sign = -1.0 if (b >> (ebits + mbits)) & 1 else 1.0
    e = (b >> mbits) & ((1 << ebits) - 1)
    m = b & ((1 << mbits) - 1)
    if e == 0:
        return sign * m * 2.0 ** (1 - bias - mbits)
    return sign * (m + (1 << mbits)) * 2.0 ** (e - bias - mbits)


def decode_byte(fmt: str, b: int) -> float:
    if fmt == "e4m3fn":
        return float("nan") if b & 0x7F == 0x7F else minifloat(b, 4, 3, 7)
    if fmt == "e4m3fnuz":
        return float("nan") if b == 0x80 else minifloat(b, 4, 3, 8)
    if fmt == "e5m2":
        if (b >> 2) & 0x1F == 0x1F:
            return float("nan") if b & 3 else (-np.inf if b & 0x80 else np.inf)
        return minifloat(b, 5, 2, 15)
    if fmt == "e5m2fnuz":
        return float("nan") if b == 0x80 else minifloat(b, 5, 2, 16)
    if fmt == "e8m0":
        return float("nan") if b == 0xFF else 2.0 ** (b - 127)
    if fmt == "u8":
        return float(b)
    if fmt == "i8":
        return float(b - 256 if b > 127 else b)
    raise AssertionError(fmt)


E2M1 = [minifloat(c, 2, 1, 1) for c in range(16)]


def decode_np(q: torch.Tensor, fmt: str) -> np.ndarray:
    b = q.cpu().contiguous().view(torch.uint8).numpy()
    if fmt == "e2m1":
        out = np.empty((b.shape[0], b.shape[1] * 2))
        out[:, 0::2] = np.array(E2M1)[b & 0xF]
        out[:, 1::2] = np.array(E2M1)[b >> 4]
        return out
    table = np.array([decode_byte(fmt, i) for i in range(256)])
    return table[b]


def dequant_np(q, fmt, scale, scale_fmt, block, global_scale=1.0) -> np.ndarray:
    v = decode_np(q, fmt) if fmt not in ("f32", "bf16", "f16") else q.cpu().double().numpy()
    if scale is not None:
        s = decode_np(scale, scale_fmt) if scale_fmt not in ("f32", "auto") else scale.cpu().double().numpy()
        s = np.repeat(np.repeat(s, block[0], 0)[: v.shape[0]], block[1], 1)[:, : v.shape[1]]
        v = v * s
    return v * global_scale


def rand_bytes(shape, gen, fmt=None) -> torch.Tensor:
    b = torch.randint(0, 256, shape, generator=gen, dtype=torch.int32).to(torch.uint8)
    if fmt in ("e4m3fn", "e4m3fnuz", "e5m2", "e5m2fnuz"):  # finite codes: NaN/Inf are tested apart
        vals = torch.tensor([decode_byte(fmt, i) for i in range(256)])
        finite = torch.nonzero(torch.isfinite(vals)).flatten().to(torch.uint8)
        b = finite[b.long() % finite.numel()]
    return b


# --- test vectors (§8) ------------------------------------------------------------------------

FP8_W = [[0x38, 0xB8, 0x40, 0x7E, 0x01], [0x3C, 0x00, 0xC0, 0x80, 0x08], [0x44, 0x34, 0x30, 0x2C, 0xFE]]
FP8_S = [[0.5, 2.0, 0.25], [0.015625, 8.0, 3.0]]
FP8_DEQ = [
    [0.5, -0.5, 4, 896, 0.00048828125],
    [0.75, 0, -4, -0.0, 0.00390625],
    [0.046875, 0.01171875, 4, 3, -1344],
]
MX_BLOCKS = [
    [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE, 0x07, 0x70, 0x1F, 0x2E, 0x3D, 0x4C, 0x5B, 0x6A],
    [0x21, 0x43, 0x65, 0x07, 0xA9, 0xCB, 0xED, 0x8F, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x70],
]
MX_ROW0 = [0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6,
           6, 0, 0, 6, -6, .5, -4, 1, -3, 1.5, -2, 2, -1.5, 3, -1, 4]  # fmt: skip
MX_ROW1 = [.0625, .125, .1875, .25, .375, .5, .75, 0, -.0625, -.125, -.1875, -.25, -.375, -.5, -.75,
           -0.0, .0625, .0625, .125, .125, .1875, .1875, .25, .25, .375, .375, .5, .5, .75, .75, 0,
           .75]  # fmt: skip
NV_W = [MX_BLOCKS[0], [0x77] * 8 + [0x21] * 4 + [0x9A] * 4]
NV_S = [[0x38, 0x4C], [0x30, 0x7E]]


def u8(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int32).to(torch.uint8)


def test_fp8_block_vector(device, backend):
    w, s = u8(FP8_W).to(device), torch.tensor(FP8_S, device=device)
    deq = ops.block_dequantize(w, "e4m3fn", s, "auto", (2, 2), backend=backend)
    assert deq.cpu().tolist() == FP8_DEQ
    x = torch.tensor([[1, -2, 0.5, 0.25, 4]], device=device)
    y = ops.block_scaled_linear(x, w, w_element="e4m3fn", w_scale=s, w_block=(2, 2), backend=backend)
    assert y.cpu().tolist() == [[227.501953125, -1.234375, -5373.2265625]]
    # the same bytes held as float8_e4m3fn read with format "auto"
    as_fp8 = ops.block_dequantize(w.view(torch.float8_e4m3fn), scale=s, block=(2, 2), backend=backend)
    assert torch.equal(as_fp8, deq)
    # fingerprints of the known bugs (§8.3): read as e4m3fnuz halves row 0, byte 0x80 becomes NaN
    fnuz = ops.block_dequantize(w, "e4m3fnuz", s, "auto", (2, 2), backend=backend).cpu()
    assert fnuz[0].tolist() == [v / 2 for v in FP8_DEQ[0]] and torch.isnan(fnuz[1, 3])
    numeric = ops.block_dequantize(w, "u8", None, "auto", (1, 1), backend=backend).cpu()
    assert numeric[0].tolist() == [56.0, 184.0, 64.0, 126.0, 1.0]


def test_mxfp4_vector(device, backend):
    q, s = u8(MX_BLOCKS).to(device), u8([[0x7F], [0x7C]]).to(device)
    deq = ops.block_dequantize(q, "e2m1", s, "e8m0", (1, 32), backend=backend).cpu()
    assert deq.tolist() == [MX_ROW0, MX_ROW1]
    kw = dict(w_element="e2m1", w_scale=s, w_scale_format="e8m0", w_block=(1, 32), backend=backend)
    x = torch.arange(1, 33, dtype=torch.float32, device=device)[None]
    assert ops.block_scaled_linear(x, q, **kw).cpu().tolist() == [[4.5, 123.75]]
    swapped = (q << 4) | (q >> 4)
    assert ops.block_scaled_linear(x, swapped, **kw).cpu().tolist() == [[-25.0, 123.0]]
    alt = torch.tensor([[1.0, 0.0] * 16], device=device)
    assert ops.block_scaled_linear(alt, q, **kw).cpu().tolist() == [[-11.5, 2.25]]
    off_by_one = ops.block_scaled_linear(x, q, **{**kw, "global_scale": 0.5}).cpu().tolist()
    assert off_by_one == [[2.25, 61.875]]
    if hasattr(torch, "float8_e8m0fnu"):  # the same scales as a float8_e8m0fnu tensor
        s8 = s.view(torch.float8_e8m0fnu)
        assert torch.equal(ops.block_dequantize(q, "e2m1", s8, "auto", (1, 32), backend=backend).cpu(), deq)


def test_nvfp4_vector(device, backend):
    q, s = u8(NV_W).to(device), u8(NV_S).to(device)
    deq = ops.block_dequantize(q, "e2m1", s, "e4m3fn", (1, 16), 0.0625, backend=backend).cpu()
    assert deq[1].tolist() == [0.1875] * 16 + [14.0, 28.0] * 4 + [-28.0, -14.0] * 4
    assert deq[0, 16:20].tolist() == [2.25, 0.0, 0.0, 2.25]
    kw = dict(w_element="e2m1", w_scale=s, w_scale_format="e4m3fn", w_block=(1, 16), backend=backend)
    x = torch.arange(1, 33, dtype=torch.float32, device=device)[None]
    assert ops.block_scaled_linear(x, q, global_scale=0.0625, **kw).cpu().tolist() == [[46.6875, -1262.5]]
    assert ops.block_scaled_linear(x, q, global_scale=1.0, **kw).cpu().tolist() == [[747.0, -20200.0]]
    assert ops.block_scaled_linear(x, q, global_scale=16.0, **kw).cpu().tolist() == [[11952.0, -323200.0]]
    swapped = (q << 4) | (q >> 4)
    swapped_y = ops.block_scaled_linear(x, swapped, global_scale=0.0625, **kw)
    assert swapped_y.cpu().tolist() == [[35.625, -1374.5]]


def test_swizzle_offsets_and_round_trip():
    """§4.3 worked offsets for R = 130, C = 7, and §8.2's 2 x 2 scale matrix."""
    rows, cols = 130, 7
    ids = torch.arange(rows * cols, dtype=torch.int64).view(rows, cols) + 1
    buf = swizzle_128x4(ids)
    assert buf.numel() == 256 * 8
    expect = {(0, 0): 0, (0, 1): 1, (0, 3): 3, (0, 4): 512, (1, 0): 16, (31, 0): 496, (32, 0): 4,
              (33, 1): 21, (64, 2): 10, (96, 3): 15, (127, 3): 511, (127, 4): 1020, (128, 0): 1024,
              (129, 6): 1554}  # fmt: skip
    for (r, c), off in expect.items():
        assert int(buf[off]) == int(ids[r, c]), (r, c)
    assert torch.equal(unswizzle_128x4(buf, rows, cols), ids)
    small = swizzle_128x4(u8(NV_S))
    nz = {i: int(v) for i, v in enumerate(small.tolist()) if v}
    assert small.numel() == 512 and nz == {0: 0x38, 1: 0x4C, 16: 0x30, 17: 0x7E}
    as_bytes = (ids % 251).to(torch.uint8)  # int32 words holding 4 scale bytes each (vLLM's form)
    words = swizzle_128x4(as_bytes).view(torch.int32).view(256, 2)
    assert torch.equal(unswizzle_128x4(words, rows, cols), as_bytes)
    with pytest.raises(OpInputError, match="cannot hold"):
        unswizzle_128x4(buf[:100], rows, cols)


# --- every code of every format -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz", "e5m2", "e5m2fnuz", "u8", "i8", "e2m1"])
def test_every_element_code(device, backend, fmt):
    q = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(16, 16).to(device)
    got = ops.block_dequantize(q, fmt, backend=backend).cpu().double().numpy()
    want = decode_np(q, fmt)
    np.testing.assert_array_equal(got, want)  # NaN positions included
    num = ~np.isnan(want)
    assert np.array_equal(np.signbit(got[num]), np.signbit(want[num]))  # -0.0 stays -0.0


@pytest.mark.parametrize("fmt", ["e8m0", "e4m3fn", "u8"])
def test_every_scale_code(device, backend, fmt):
    q = torch.full((16, 16), 0x38, dtype=torch.uint8, device=device)  # every element 1.0 (e4m3fn)
    s = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(16, 16).to(device)
    got = ops.block_dequantize(q, "e4m3fn", s, fmt, (1, 1), backend=backend).cpu().double().numpy()
    want = decode_np(s, fmt).astype(np.float32).astype(np.float64)  # e8m0 2^-127 is a float32 subnormal
    np.testing.assert_array_equal(got, want)


# --- random data: native == reference == oracle ---------------------------------------------

CASES = {
    "fp8-block": ("e4m3fn", "f32", (128, 128)),
    "fp8-block-odd": ("e4m3fn", "f32", (3, 7)),
    "fp8-block-e8m0": ("e4m3fn", "e8m0", (128, 128)),
    "fp8-channel-bf16": ("e5m2", "bf16", (1, 10**9)),
    "fp8-fnuz": ("e4m3fnuz", "f16", (32, 32)),
    "nvfp4": ("e2m1", "e4m3fn", (1, 16)),
    "mxfp4": ("e2m1", "e8m0", (1, 32)),
    "mxfp8": ("e4m3fn", "e8m0", (1, 32)),
}


def make_operand(case: str, rows: int, cols: int, gen: torch.Generator, device: str):
    fmt, sfmt, (br, bc) = CASES[case]
    bc = min(bc, cols)
    q = rand_bytes((rows, cols // 2 if fmt == "e2m1" else cols), gen, fmt)
    srows, scols = -(-rows // br), -(-cols // bc)
    if sfmt == "e8m0":
        s = torch.randint(120, 134, (srows, scols), generator=gen, dtype=torch.int32).to(torch.uint8)
    elif sfmt == "e4m3fn":
        s = (torch.rand(srows, scols, generator=gen) * 6 + 0.1).to(torch.float8_e4m3fn).view(torch.uint8)
    else:
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[sfmt]
        s = (torch.rand(srows, scols, generator=gen) + 0.05).to(dtype)
    return q.to(device), fmt, s.to(device), ("auto" if sfmt in ("f32", "bf16", "f16") else sfmt), (br, bc)


def oracle_scale_fmt(s, sfmt):
    return "f32" if sfmt == "auto" else sfmt


@pytest.mark.parametrize("case", list(CASES))
def test_dequantize_random(device, backend, gen, case):
    q, fmt, s, sfmt, block = make_operand(case, 130, 256, gen, device)
    got = ops.block_dequantize(q, fmt, s, sfmt, block, 0.75, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (130, 256) and got.device.type == device
    s_np = s.float() if sfmt == "auto" else s
    want = dequant_np(q, fmt, s_np, oracle_scale_fmt(s, sfmt), block, 0.75).astype(np.float32)
    np.testing.assert_array_equal(got.cpu().numpy(), want)


def test_dequantize_scale_views(device, backend, gen):
    """A transposed (non-contiguous) scale view and a sliced q are read through their strides."""
    q, fmt, s, sfmt, block = make_operand("fp8-block-odd", 21, 21, gen, device)
    st = s.T.contiguous().T  # same values, column-major
    assert not st.is_contiguous()
    a = ops.block_dequantize(q, fmt, s, sfmt, block, backend=backend)
    assert torch.equal(ops.block_dequantize(q, fmt, st, sfmt, block, backend=backend), a)
    big = rand_bytes((21, 40), gen, "e4m3fn").to(device)
    big[:, 5:26] = q
    assert torch.equal(ops.block_dequantize(big[:, 5:26], fmt, s, sfmt, block, backend=backend), a)


def linear_oracle(xv: np.ndarray, wv: np.ndarray, bias, global_scale) -> np.ndarray:
    y = (xv.astype(np.float32).astype(np.float64) @ wv.astype(np.float32).astype(np.float64).T) * global_scale
    return y + (0 if bias is None else bias.cpu().double().numpy())


def rel_err(got: torch.Tensor, want: np.ndarray) -> float:
    g = got.cpu().double().numpy()
    return float(np.linalg.norm(g - want) / np.linalg.norm(want))


@pytest.mark.parametrize("m", [1, 3, 8, 9, 64, 130])
@pytest.mark.parametrize("case", ["fp8-block", "nvfp4", "mxfp4", "fp8-channel-bf16"])
def test_linear_against_float64(device, backend, gen, m, case):
    n, k = 136, 544  # N and K not multiples of the tiles or of 128
    w, fmt, s, sfmt, block = make_operand(case, n, k, gen, device)
    x = torch.randn(m, k, generator=gen).to(device)
    bias = torch.randn(n, generator=gen).to(device)
    y = ops.block_scaled_linear(
        x,
        w,
        w_element=fmt,
        w_scale=s,
        w_scale_format=sfmt,
        w_block=block,
        global_scale=0.5,
        bias=bias,
        backend=backend,
    )
    assert y.shape == (m, n) and y.dtype == torch.float32
    s_np = s.float() if sfmt == "auto" else s
    wv = dequant_np(w, fmt, s_np, oracle_scale_fmt(s, sfmt), block)
    want = linear_oracle(x.cpu().double().numpy(), wv, bias, 0.5)
    assert rel_err(y, want) < 1e-6


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linear_dense_activation_dtypes(device, backend, gen, x_dtype):
    w, fmt, s, sfmt, block = make_operand("fp8-block", 64, 256, gen, device)
    x = torch.randn(17, 256, generator=gen).to(x_dtype).to(device)
    y = ops.block_scaled_linear(x, w, w_element=fmt, w_scale=s, w_block=block, backend=backend)
    want = linear_oracle(x.cpu().double().numpy(), dequant_np(w, fmt, s.float(), "f32", block), None, 1.0)
    assert rel_err(y, want) < 1e-6


@pytest.mark.parametrize("m", [2, 40])
def test_linear_quantized_activations(device, backend, gen, m):
    """x as 1 x 128 FP8 groups (f32 scales) and as NVFP4 (E4M3 scales per 16)."""
    k, n = 384, 72
    w, fmt, s, sfmt, block = make_operand("fp8-block", n, k, gen, device)
    wv = dequant_np(w, fmt, s.float(), "f32", block)
    xq = rand_bytes((m, k), gen, "e4m3fn").to(device)
    xs = (torch.rand(m, 3, generator=gen) + 0.1).to(device)
    y = ops.block_scaled_linear(xq, w, x_element="e4m3fn", x_scale=xs, x_block=128, w_element=fmt, w_scale=s,
                                w_block=block, backend=backend)  # fmt: skip
    want = linear_oracle(dequant_np(xq, "e4m3fn", xs, "f32", (1, 128)), wv, None, 1.0)
    assert rel_err(y, want) < 1e-6
    x4 = rand_bytes((m, k // 2), gen).to(device)
    x4s = (torch.rand(m, k // 16, generator=gen) * 4 + 0.1).to(torch.float8_e4m3fn).to(device)
    y4 = ops.block_scaled_linear(x4, w, x_element="e2m1", x_scale=x4s, x_block=16, w_element=fmt, w_scale=s,
                                 w_block=block, global_scale=0.25, backend=backend)  # fmt: skip
    want4 = linear_oracle(dequant_np(x4, "e2m1", x4s.view(torch.uint8), "e4m3fn", (1, 16)), wv, None, 0.25)
    assert rel_err(y4, want4) < 1e-6


def make_activation(kind: str, m: int, k: int, gen: torch.Generator, device: str):
    """x of one kind, its block_scaled_linear arguments and its float64 values (oracle)."""
    if kind in ("f32", "bf16", "f16"):
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[kind]
        x = torch.randn(m, k, generator=gen).to(dtype)
        return x.to(device), {}, x.double().numpy()
    if kind == "e2m1-e4m3":  # NVFP4 activations: folded exactly on the tensor-core path
        x = rand_bytes((m, k // 2), gen)
        xs = (torch.rand(m, -(-k // 16), generator=gen) * 4 + 0.1).to(torch.float8_e4m3fn)
        kw = dict(x_element="e2m1", x_scale=xs.to(device), x_block=16)
        return x.to(device), kw, dequant_np(x, "e2m1", xs.view(torch.uint8), "e4m3fn", (1, 16))
    fmt, block = {"e4m3-f32": ("e4m3fn", 128), "i8-f32": ("i8", 32)}[kind]  # promoted scales
    x = rand_bytes((m, k), gen, fmt)
    xs = torch.rand(m, -(-k // block), generator=gen) + 0.1
    kw = dict(x_element=fmt, x_scale=xs.to(device), x_block=block)
    return x.to(device), kw, dequant_np(x, fmt, xs, "f32", (1, block))


@pytest.mark.parametrize("m", [40, 300])
@pytest.mark.parametrize("x_kind", ["f32", "bf16", "f16", "e2m1-e4m3", "e4m3-f32", "i8-f32"])
@pytest.mark.parametrize("case", list(CASES))
def test_linear_every_operand_pairing(device, backend, gen, case, x_kind, m):
    """M > 8 on CUDA takes the tensor cores wherever products stay exact (folded or promoted scales,
    split activations; decoded inside the tiles, or into bf16 planes first from 256 rows on) and the
    SIMT kernel elsewhere (3 x 7 blocks): float64-accurate either way, K not a multiple of 32."""
    n, k = 72, 528
    w, fmt, s, sfmt, block = make_operand(case, n, k, gen, device)
    x, xkw, xv = make_activation(x_kind, m, k, gen, device)
    y = ops.block_scaled_linear(x, w, **xkw, w_element=fmt, w_scale=s, w_scale_format=sfmt, w_block=block,
                                global_scale=0.75, backend=backend)  # fmt: skip
    s_np = s.float() if sfmt == "auto" else s
    want = linear_oracle(xv, dequant_np(w, fmt, s_np, oracle_scale_fmt(s, sfmt), block), None, 0.75)
    assert rel_err(y, want) < 1e-6


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [40, 300])
def test_linear_power_of_two_scale_too_large_to_fold(device, backend, gen, m, x_dtype):
    """An E8M0 scale of 2^121 would take E4M3 codes past bf16's range if folded into them: the
    tensor-core path applies it to the products instead, finite and float64-accurate."""
    n, k = 72, 256
    w = torch.full((n, k), 0x38, dtype=torch.uint8)  # 1.0
    w[:, ::3] = 0xB0  # -0.5
    s = torch.full((n, k // 32), 127, dtype=torch.uint8)
    s[5, 2] = 248
    x = (torch.randn(m, k, generator=gen) / 64).to(x_dtype)
    y = ops.block_scaled_linear(x.to(device), w.to(device), w_element="e4m3fn", w_scale=s.to(device),
                                w_scale_format="e8m0", w_block=(1, 32), backend=backend)  # fmt: skip
    want = linear_oracle(x.double().numpy(), dequant_np(w, "e4m3fn", s, "e8m0", (1, 32)), None, 1.0)
    assert np.isfinite(y.cpu().numpy()).all() and abs(want[:, 5]).max() > 2.0**110
    assert rel_err(y, want) < 1e-6


@pytest.mark.parametrize("m", [24, 260])
def test_linear_inf_and_nan_like_float64(device, backend, gen, m):
    """Infinite activations (split on the tensor-core path) and NaN weights give NaN and Inf exactly
    where float64 arithmetic does."""
    n, k = 40, 160
    w = rand_bytes((n, k), gen, "e4m3fn")
    w[3, 17] = 0x7F  # NaN
    x = torch.randn(m, k, generator=gen)
    x[5, 9], x[11, 20] = float("inf"), float("-inf")
    y = ops.block_scaled_linear(x.to(device), w.to(device), w_element="e4m3fn", backend=backend).cpu()
    want = linear_oracle(x.double().numpy(), decode_np(w, "e4m3fn"), None, 1.0)
    np.testing.assert_array_equal(np.isnan(y.numpy()), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(y.numpy()), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(y.numpy()), np.isneginf(want))
    finite = np.isfinite(want)
    assert np.linalg.norm(y.numpy()[finite] - want[finite]) / np.linalg.norm(want[finite]) < 1e-6


def test_linear_nan_propagates_and_empty_shapes(device, backend, gen):
    w = torch.full((4, 32), 0x38, dtype=torch.uint8, device=device)
    w[2, 5] = 0x7F  # NaN code of e4m3fn: output column 2 is NaN
    x = torch.randn(3, 32, generator=gen).to(device)
    y = ops.block_scaled_linear(x, w, w_element="e4m3fn", backend=backend).cpu()
    assert torch.isnan(y[:, 2]).all() and torch.isfinite(y[:, [0, 1, 3]]).all()
    empty = ops.block_scaled_linear(x[:0], w, w_element="e4m3fn", backend=backend)
    assert empty.shape == (0, 4)
    bias = torch.arange(4.0, device=device)
    no_k = ops.block_scaled_linear(x[:, :0], w[:, :0], w_element="e4m3fn", bias=bias, backend=backend)
    assert no_k.cpu().tolist() == [[0.0, 1.0, 2.0, 3.0]] * 3


# --- failure paths ----------------------------------------------------------------------------


def test_dequantize_errors(device, backend):
    q = torch.zeros(4, 8, dtype=torch.uint8, device=device)
    s = torch.ones(4, 1, device=device)
    with pytest.raises(OpInputError, match="must be 2-D"):
        ops.block_dequantize(q[0], "e4m3fn", backend=backend)
    with pytest.raises(OpInputError, match="name its format"):
        ops.block_dequantize(q, "auto", backend=backend)
    with pytest.raises(OpInputError, match="unknown format|name its format"):
        ops.block_dequantize(q, "e3m4", backend=backend)
    with pytest.raises(OpInputError, match=r"need \[4, 2\]|need \[4, 2\]"):
        ops.block_dequantize(q, "e4m3fn", s, "auto", (1, 4), backend=backend)
    with pytest.raises(OpInputError, match="cannot be read as e4m3fn"):
        ops.block_dequantize(q.float(), "e4m3fn", backend=backend)


def test_linear_errors(device, backend):
    w = torch.zeros(4, 32, dtype=torch.uint8, device=device)
    x = torch.ones(2, 16, device=device)
    with pytest.raises(OpInputError, match="16 values per row but w has 32"):
        ops.block_scaled_linear(x, w, w_element="e4m3fn", backend=backend)
    with pytest.raises(OpInputError, match=r"bias must have shape \[4\]"):
        ops.block_scaled_linear(torch.ones(2, 32, device=device), w, w_element="e4m3fn",
                                bias=torch.ones(3, device=device), backend=backend)  # fmt: skip


@pytest.mark.cuda
def test_linear_device_mismatch():
    w = torch.zeros(4, 32, dtype=torch.uint8, device="cuda")
    with pytest.raises(OpInputError, match="is on"):
        ops.block_scaled_linear(torch.ones(2, 32), w, w_element="e4m3fn", backend="native")


# --- CUDA specifics ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(64, 128, 8192), (300, 260, 1000), (5, 700, 4096), (2100, 136, 640)])
def test_cuda_split_k_and_skinny_are_deterministic(gen, m, n, k, x_dtype):
    """Split-K (few tiles, long K), tensor-core (tiles or planes, split or bf16 activations) and
    skinny paths: float64-accurate and bit-identical run to run."""
    w, fmt, s, sfmt, block = make_operand("fp8-block", n, k, gen, "cuda")
    x = torch.randn(m, k, generator=gen).to(x_dtype).cuda()
    run = lambda: ops.block_scaled_linear(x, w, w_element=fmt, w_scale=s, w_block=block, backend="native")  # noqa: E731
    a, b = run(), run()
    assert torch.equal(a, b)
    want = linear_oracle(x.cpu().double().numpy(), dequant_np(w, fmt, s.float(), "f32", block), None, 1.0)
    assert rel_err(a, want) < 1e-6


# --- dispatcher contracts ---------------------------------------------------------------------


def test_opcheck(device, gen):
    if not ops.native_available(device):
        pytest.skip("native extension not built for this device")
    q, fmt, s, sfmt, block = make_operand("nvfp4", 16, 64, gen, device)
    torch.library.opcheck(torch.ops.accdump.block_dequantize.default, (q, fmt, s, sfmt, 1, 16, 2.0))
    x = torch.randn(5, 64, generator=gen).to(device)
    bias = torch.randn(16, generator=gen).to(device)
    args = (x, "auto", None, "auto", 1, q, fmt, s, sfmt, 1, 16, 2.0, bias)
    torch.library.opcheck(torch.ops.accdump.block_scaled_linear.default, args)
