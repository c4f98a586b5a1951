"""The reference linear y = x @ dequant(W)^T (+ bias) with exact operands and float32/float64
accumulation, and the activation quantizations a production path may apply first (§6)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from accdump import ops
from accdump.errors import OpInputError
from accdump.quant.formats import BlockQuantized
from accdump.quant.quantize import quantize_fp8_groups, quantize_fp8_tensor, quantize_mx, quantize_nvfp4

_DENSE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclass(frozen=True)
class QuantLinear:
    """A quantized linear layer as a checkpoint describes it."""

    name: str
    weight: BlockQuantized
    bias: torch.Tensor | None = None
    activation: str = "none"  # how production quantizes the input: a key of ACTIVATIONS
    input_scale: float | None = None  # static activation dequantization scale, where one exists

    def to(self, device: torch.device | str) -> QuantLinear:
        bias = None if self.bias is None else self.bias.to(device)
        return QuantLinear(self.name, self.weight.to(device), bias, self.activation, self.input_scale)


def _needs_scale(
    fn: Callable[[torch.Tensor, float], BlockQuantized],
) -> Callable[[torch.Tensor, float | None], BlockQuantized]:
    def run(x: torch.Tensor, s: float | None) -> BlockQuantized:
        if s is None:
            raise OpInputError("this activation quantization needs the checkpoint's input_scale")
        return fn(x, s)

    return run


# Activation quantizations (x [M, K], static input scale or None) -> quantized x.
ACTIVATIONS: dict[str, Callable[[torch.Tensor, float | None], BlockQuantized]] = {
    "fp8_group128": lambda x, s: quantize_fp8_groups(x, 128),
    "fp8_group128_ue8m0": lambda x, s: quantize_fp8_groups(x, 128, ue8m0=True),
    "fp8_token": lambda x, s: quantize_fp8_groups(x, x.shape[1], eps=1e-12),
    "fp8_tensor": lambda x, s: quantize_fp8_tensor(x, s),  # static with a scale, else dynamic
    "nvfp4": _needs_scale(lambda x, s: quantize_nvfp4(x, s)),
    "mxfp8": lambda x, s: quantize_mx(x, "e4m3fn"),
}


def quantize_activation(x: torch.Tensor, mode: str, input_scale: float | None = None) -> BlockQuantized:
    """x [M, K] quantized the way `mode` (a key of ACTIVATIONS) says."""
    if mode not in ACTIVATIONS:
        raise OpInputError(f"unknown activation quantization {mode!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[mode](x, input_scale)


def reference_linear(
    x: torch.Tensor | BlockQuantized,
    weight: BlockQuantized,
    bias: torch.Tensor | None = None,
    backend: ops.Backend = "auto",
) -> torch.Tensor:
    """float32 [..., N] = x @ dequant(weight)^T + bias, from exact operand values with float32
    products and float64 accumulation (accdump.ops.block_scaled_linear). `x` is a float tensor
    [..., K] or a quantized [M, K] one."""
    n, k = weight.shape
    lead: tuple[int, ...]
    if isinstance(x, BlockQuantized):
        xq, lead = x, tuple(x.q.shape[:1])
    else:
        if x.dtype not in _DENSE_DTYPES:
            raise OpInputError(f"reference_linear: x must be a float tensor, got {x.dtype}")
        if x.shape[-1] != k:
            raise OpInputError(f"reference_linear: x has {x.shape[-1]} features but the weight takes {k}")
        lead = tuple(x.shape[:-1])
        xq = BlockQuantized(x.reshape(-1, k), "auto", None, "auto", (1, 1), 1.0, "dense")
    w = weight.to(xq.q.device) if weight.q.device != xq.q.device else weight
    y = ops.block_scaled_linear(
        xq.q,
        w.q,
        x_element=xq.element,
        x_scale=xq.scale,
        x_scale_format=xq.scale_format,
        x_block=xq.block[1],
        w_element=w.element,
        w_scale=w.scale,
        w_scale_format=w.scale_format,
        w_block=w.block,
        global_scale=xq.global_scale * w.global_scale,
        bias=None if bias is None else bias.to(xq.q.device),
        backend=backend,
    )
    return y.reshape(*lead, n)
