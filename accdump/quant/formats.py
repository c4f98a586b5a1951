"""Block-scaled tensors: one description for FP8 (block, channel, tensor), NVFP4, MXFP4, MXFP8.

Every format is `value(r, c) = element(q[r, c]) * scale[r // br, c // bc] * global_scale`
(shared/quant_formats.md §6); the constructors below map each producer's tensors and scale
conventions (§0.1) onto it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from accdump import ops
from accdump.errors import OpInputError
from accdump.quant.layouts import unswizzle_128x4

FP8_MAX = 448.0
FP4_MAX = 6.0


@dataclass(frozen=True)
class BlockQuantized:
    """A quantized 2-D tensor [rows, cols] and everything needed to decode it exactly."""

    q: torch.Tensor  # [rows, cols] one byte per value, or [rows, cols / 2] packed e2m1
    element: str  # e4m3fn, e4m3fnuz, e5m2, e5m2fnuz, e2m1, u8 (bytes as numbers), or f32/bf16/f16
    scale: torch.Tensor | None  # linear [ceil(rows / br), ceil(cols / bc)]
    scale_format: str  # f32 / bf16 / f16 (numbers), e8m0, e4m3fn, u8, or auto (from the dtype)
    block: tuple[int, int]
    global_scale: float = 1.0  # a dequantization multiplier
    format: str = ""  # fp8_block, fp8_channel, fp8_tensor, nvfp4, mxfp4, mxfp8, dense

    @property
    def shape(self) -> tuple[int, int]:
        packed = 2 if self.element == "e2m1" else 1
        return int(self.q.shape[0]), int(self.q.shape[1]) * packed

    def replace(self, **changes: object) -> BlockQuantized:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to(self, device: torch.device | str) -> BlockQuantized:
        scale = None if self.scale is None else self.scale.to(device)
        return self.replace(q=self.q.to(device), scale=scale)

    def dequantize(self, dtype: torch.dtype = torch.float32, backend: ops.Backend = "auto") -> torch.Tensor:
        """The exact values (float32, or rounded from float32 to `dtype`)."""
        out = ops.block_dequantize(
            self.q, self.element, self.scale, self.scale_format, self.block, self.global_scale, backend
        )
        return out if dtype == torch.float32 else out.to(dtype)


def dense(w: torch.Tensor) -> BlockQuantized:
    """An unquantized float tensor in the same form (for hypotheses that rewrite values)."""
    names = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.float64: "f64"}
    if w.dtype not in names:
        raise OpInputError(f"dense: expected a float tensor, got {w.dtype}")
    return BlockQuantized(w, names[w.dtype], None, "auto", (1, 1), 1.0, "dense")


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a one-byte tensor (never a numeric conversion: §0 rule 1)."""
    if t.element_size() != 1:
        raise OpInputError(f"expected one-byte quantized data, got {t.dtype}")
    return t.contiguous().view(torch.uint8)


def _fp8_element(t: torch.Tensor) -> str:
    names = {
        "float8_e4m3fn": "e4m3fn",
        "float8_e4m3fnuz": "e4m3fnuz",
        "float8_e5m2": "e5m2",
        "float8_e5m2fnuz": "e5m2fnuz",
    }
    for dtype_name, fmt in names.items():
        if t.dtype == getattr(torch, dtype_name, None):
            return fmt
    return "e4m3fn"  # uint8 storage of FP8 weights: the OCP variant unless told otherwise


def _scale_format(s: torch.Tensor, byte_default: str) -> str:
    if s.dtype == getattr(torch, "float8_e8m0fnu", None):
        return "e8m0"
    if s.dtype == torch.float8_e4m3fn:
        return "e4m3fn"
    if s.element_size() == 1:
        return byte_default
    return "auto"


def fp8_block(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    element: str | None = None,
) -> BlockQuantized:
    """DeepSeek-style FP8: `weight` [N, K] e4m3, `weight_scale_inv` [ceil(N/bn), ceil(K/bk)]
    float32 (or E8M0) dequantization multipliers (§2.1)."""
    return BlockQuantized(
        _bytes(weight),
        element or _fp8_element(weight),
        scale_inv,
        _scale_format(scale_inv, "e8m0"),
        block,
        1.0,
        "fp8_block",
    )


def fp8_per_channel(weight: torch.Tensor, scale: torch.Tensor, element: str | None = None) -> BlockQuantized:
    """FP8 with one dequantization scale per output row (`weight_scale` [N] or [N, 1]) (§3)."""
    n, k = weight.shape
    s = scale.reshape(n, 1).to(torch.float32)
    return BlockQuantized(
        _bytes(weight), element or _fp8_element(weight), s, "auto", (1, max(k, 1)), 1.0, "fp8_channel"
    )


def fp8_per_tensor(
    weight: torch.Tensor, scale: float | torch.Tensor, element: str | None = None
) -> BlockQuantized:
    """FP8 with one dequantization scale for the tensor (`weight_scale` scalar) (§3)."""
    return BlockQuantized(
        _bytes(weight), element or _fp8_element(weight), None, "auto", (1, 1), float(scale), "fp8_tensor"
    )


def mxfp8(weight: torch.Tensor, scale: torch.Tensor, element: str | None = None) -> BlockQuantized:
    """OCP MXFP8: e4m3 (or e5m2) values, one E8M0 scale per 32 values along K (§4.1)."""
    return BlockQuantized(
        _bytes(weight), element or _fp8_element(weight), _bytes(scale), "e8m0", (1, 32), 1.0, "mxfp8"
    )


def mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> BlockQuantized:
    """OCP MXFP4: packed E2M1 (low nibble first) with one E8M0 scale per 32 values (§4.1-4.2).
    Takes [N, K/2] bytes with [N, K/32] scales, or gpt-oss `[N, K/32, 16]` blocks."""
    b = _bytes(blocks)
    if b.dim() == 3:
        b = b.reshape(b.shape[0], -1)
    return BlockQuantized(b, "e2m1", _bytes(scales), "e8m0", (1, 32), 1.0, "mxfp4")


def nvfp4(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: float | torch.Tensor,
    scale_layout: str = "linear",
) -> BlockQuantized:
    """NVFP4 (ModelOpt convention): packed E2M1 [N, K/2], E4M3 block scales per 16 values
    ([N, K/16] linear, or a 128x4-swizzled buffer), `weight_scale_2` a dequantization
    multiplier (§4.4). For compressed-tensors pass 1 / weight_global_scale."""
    q = _bytes(weight)
    n, k = q.shape[0], q.shape[1] * 2
    s = weight_scale if weight_scale.element_size() != 1 else _bytes(weight_scale)
    if scale_layout == "swizzled":
        s = unswizzle_128x4(s, n, -(-k // 16))
    elif scale_layout != "linear":
        raise OpInputError(f"nvfp4: scale_layout must be 'linear' or 'swizzled', got {scale_layout!r}")
    fmt = "e4m3fn" if s.element_size() == 1 else "auto"
    return BlockQuantized(q, "e2m1", s, fmt, (1, 16), float(weight_scale_2), "nvfp4")
