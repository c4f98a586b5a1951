"""Fake (meta) kernels of the native ops, so they trace under torch.compile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

STATS_WIDTH = 13
METRICS_WIDTH = 14
ROW_WIDTH = 3


@torch.library.register_fake("accdump::tensor_stats")
def _tensor_stats_fake(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((STATS_WIDTH,), dtype=torch.float64)


@torch.library.register_fake("accdump::tensor_stats_multi")
def _tensor_stats_multi_fake(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return xs[0].new_empty((len(xs), STATS_WIDTH), dtype=torch.float64)


@torch.library.register_fake("accdump::tensor_stats_into")
def _tensor_stats_into_fake(
    x: torch.Tensor, out: torch.Tensor, row: int, workspace: torch.Tensor | None = None
) -> None:
    return None


@torch.library.register_fake("accdump::tensor_stats_multi_into")
def _tensor_stats_multi_into_fake(
    xs: Sequence[torch.Tensor], out: torch.Tensor, rows: Sequence[int], workspace: torch.Tensor | None = None
) -> None:
    return None


@torch.library.register_fake("accdump::tensor_fingerprint_multi_into")
def _tensor_fingerprint_multi_into_fake(
    xs: Sequence[torch.Tensor], out: torch.Tensor, rows: Sequence[int]
) -> None:
    return None


@torch.library.register_fake("accdump::tensor_fingerprint_into")
def _tensor_fingerprint_into_fake(x: torch.Tensor, out: torch.Tensor, row: int) -> None:
    return None


@torch.library.register_fake("accdump::compare_metrics")
def _compare_metrics_fake(
    a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float, eps: float
) -> torch.Tensor:
    torch._check(a.shape == b.shape, lambda: "accdump.compare_metrics: a and b must have the same shape")
    return a.new_empty((METRICS_WIDTH,), dtype=torch.float64)


@torch.library.register_fake("accdump::rowwise_metrics")
def _rowwise_metrics_fake(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    torch._check(a.shape == b.shape, lambda: "accdump.rowwise_metrics: a and b must have the same shape")
    rows = 1
    for s in a.shape[:-1]:
        rows *= s
    return a.new_empty((rows, ROW_WIDTH), dtype=torch.float64)


@torch.library.register_fake("accdump::block_dequantize")
def _block_dequantize_fake(
    q: torch.Tensor,
    element: str,
    scale: torch.Tensor | None,
    scale_format: str,
    block_rows: int,
    block_cols: int,
    global_scale: float,
) -> torch.Tensor:
    packed = element == "e2m1" or (element == "auto" and q.dtype == getattr(torch, "float4_e2m1fn_x2", None))
    return q.new_empty((q.shape[0], q.shape[1] * (2 if packed else 1)), dtype=torch.float32)


@torch.library.register_fake("accdump::block_scaled_linear")
def _block_scaled_linear_fake(
    x: torch.Tensor,
    x_element: str,
    x_scale: torch.Tensor | None,
    x_scale_format: str,
    x_block: int,
    w: torch.Tensor,
    w_element: str,
    w_scale: torch.Tensor | None,
    w_scale_format: str,
    w_block_rows: int,
    w_block_cols: int,
    global_scale: float,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.float32)


@torch.library.register_fake("accdump::fletcher32")
def _fletcher32_fake(data: torch.Tensor) -> Any:
    # a Python int computed from the bytes: nothing a traced graph could carry
    raise RuntimeError("accdump.fletcher32 reads the data it checks: it cannot run on fake tensors")
