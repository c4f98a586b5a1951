"""Quantizers that produce the formats of accdump.quant.formats, as producers do (quant_formats.md
§2.2, §4.1, §4.4): to emulate a production path's activation quantization in the reference, and to
make quantized copies of a model. Decoding never assumes these rules (§4.1)."""

from __future__ import annotations

import torch

from accdump.errors import OpInputError
from accdump.quant.formats import FP4_MAX, FP8_MAX, BlockQuantized

# Upper edges of the E2M1 magnitude grid {0, .5, 1, 1.5, 2, 3, 4, 6} with ties to even (§1.5):
# a value rounds up past an edge when it is above it ("> ") or at it ("> =").
_E2M1_EDGES = (
    (0.25, False),
    (0.75, True),
    (1.25, False),
    (1.75, True),
    (2.5, False),
    (3.5, True),
    (5.0, False),
)


def _groups(x: torch.Tensor, group: int) -> tuple[torch.Tensor, int]:
    """x [M, K] zero-padded to whole groups, viewed [M, G, group]."""
    m, k = x.shape
    g = -(-k // group)
    padded = torch.nn.functional.pad(x, (0, g * group - k)) if g * group != k else x
    return padded.reshape(m, g, group), k


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8, sign in bit 3) of float values: round to nearest even, saturate at 6."""
    a = v.abs()
    code = torch.zeros_like(a, dtype=torch.uint8)
    for edge, inclusive in _E2M1_EDGES:
        code += (a >= edge if inclusive else a > edge).to(torch.uint8)
    return code | (torch.signbit(v) & (code > 0)).to(torch.uint8) << 3


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """Two codes per byte along the last dimension, element 2i in the low nibble (§1.5)."""
    if codes.shape[-1] % 2:
        raise OpInputError(f"pack_e2m1: the last dimension must be even, got {codes.shape[-1]}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _to_e4m3(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def quantize_fp8_groups(
    x: torch.Tensor, group: int = 128, ue8m0: bool = False, eps: float = 1e-4
) -> BlockQuantized:
    """Dynamic per-token-group FP8 (DeepSeek 1 x 128): scale = max(amax, eps) / 448 per group,
    rounded up to a power of two with `ue8m0`."""
    g, k = _groups(x.float(), group)
    s = g.abs().amax(-1).clamp_min(eps) / FP8_MAX
    if ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    q = _to_e4m3(g / s[..., None]).reshape(x.shape[0], -1)[:, :k]
    return BlockQuantized(q.view(torch.uint8), "e4m3fn", s, "auto", (1, group), 1.0, "fp8_group")


def quantize_fp8_blocks(
    w: torch.Tensor, block: tuple[int, int] = (128, 128), eps: float = 1e-4
) -> BlockQuantized:
    """FP8 with one float32 dequantization scale (amax / 448) per block of w [N, K] (§2.2)."""
    n, k = w.shape
    bn, bk = block
    rn, rk = -(-n // bn), -(-k // bk)
    padded = torch.nn.functional.pad(w.float(), (0, rk * bk - k, 0, rn * bn - n))
    tiles = padded.reshape(rn, bn, rk, bk)
    s = tiles.abs().amax(dim=(1, 3)).clamp_min(eps) / FP8_MAX
    q = _to_e4m3(tiles / s[:, None, :, None]).reshape(rn * bn, rk * bk)[:n, :k]
    return BlockQuantized(q.contiguous().view(torch.uint8), "e4m3fn", s, "auto", block, 1.0, "fp8_block")


def quantize_fp8_tensor(x: torch.Tensor, scale: float | None = None) -> BlockQuantized:
    """Per-tensor FP8 with a static (given) or dynamic (amax / 448) dequantization scale;
    values beyond the range saturate (§3)."""
    s = float(scale) if scale is not None else max(float(x.abs().amax()), 1e-12) / FP8_MAX
    q = _to_e4m3(x.float() / s)
    return BlockQuantized(q.view(torch.uint8), "e4m3fn", None, "auto", (1, 1), s, "fp8_tensor")


def quantize_nvfp4(x: torch.Tensor, global_scale: float | None = None) -> BlockQuantized:
    """NVFP4 (ModelOpt): global dequantization scale amax / (6 * 448) (or a static one, e.g. the
    checkpoint's `input_scale`), E4M3 scales per 16 values, E2M1 elements (§4.4)."""
    m, k = x.shape
    if k % 2:
        raise OpInputError(f"quantize_nvfp4: K must be even, got {k}")
    gs = (
        float(global_scale)
        if global_scale is not None
        else max(float(x.abs().amax()), 1e-12) / (FP4_MAX * FP8_MAX)
    )
    g, _ = _groups(x.float(), 16)
    bs = _to_e4m3(g.abs().amax(-1) / (FP4_MAX * gs))
    bsf = bs.float()
    bsf = torch.where(bsf == 0, torch.ones_like(bsf), bsf)
    codes = e2m1_codes(g / (bsf[..., None] * gs)).reshape(m, -1)[:, :k]
    return BlockQuantized(pack_e2m1(codes), "e2m1", bs.view(torch.uint8), "e4m3fn", (1, 16), gs, "nvfp4")


def quantize_mx(x: torch.Tensor, element: str = "e2m1") -> BlockQuantized:
    """OCP MX with the spec's scale rule: shared exponent floor(log2(amax)) - emax(element),
    elements rounded to nearest even with saturation (§4.1). `element`: e2m1 or e4m3fn."""
    emax = {"e2m1": 2, "e4m3fn": 8}
    if element not in emax:
        raise OpInputError(f"quantize_mx: element must be e2m1 or e4m3fn, got {element!r}")
    m, k = x.shape
    g, _ = _groups(x.float(), 32)
    amax = g.abs().amax(-1)
    e = torch.floor(torch.log2(amax.clamp_min(2.0**-127))) - emax[element]
    e = e.clamp(-127, 127)
    scaled = g / torch.exp2(e)[..., None]
    if element == "e2m1":
        q = pack_e2m1(e2m1_codes(scaled).reshape(m, -1)[:, :k])
        fmt = "mxfp4"
    else:
        q = _to_e4m3(scaled).reshape(m, -1)[:, :k].contiguous().view(torch.uint8)
        fmt = "mxfp8"
    return BlockQuantized(q, element, (e + 127).to(torch.uint8), "e8m0", (1, 32), 1.0, fmt)
