"""The public numerics API: tensor statistics and pairwise metrics.

Each op runs the native kernel (accdump._C) when it is built for the tensor's device and the
pure-PyTorch reference (accdump.reference) otherwise. `*_raw` functions return the float64
vector on the input's device without synchronising; the others return small dataclasses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch

from accdump import _native, reference
from accdump.errors import NativeUnavailableError, OpInputError
from accdump.store.schema import STATS_FIELDS

Backend = Literal["auto", "native", "reference"]

_FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
_FLOAT8_NAMES = ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"]
METRICS_DTYPES: frozenset[torch.dtype] = frozenset(
    _FLOAT_DTYPES + [getattr(torch, n) for n in _FLOAT8_NAMES if hasattr(torch, n)]
)
_OTHER_STATS_NAMES = ["float8_e8m0fnu", "float4_e2m1fn_x2", "uint16", "uint32", "uint64"]
STATS_DTYPES: frozenset[torch.dtype] = METRICS_DTYPES | frozenset(
    [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
    + [getattr(torch, n) for n in _OTHER_STATS_NAMES if hasattr(torch, n)]
)

DEFAULT_ATOL = 1e-8
DEFAULT_RTOL = 1e-5
DEFAULT_EPS = 1e-12


def native_available(device_type: str = "cpu") -> bool:
    """True when accdump._C is loaded and has kernels for `device_type`."""
    return _native.has_kernel(device_type)


def backend_reason() -> str:
    """One line saying whether the native extension is in use, and if not, why."""
    return _native.reason()


def _use_native(backend: Backend, device: torch.device, op: str) -> bool:
    if backend == "reference":
        return False
    ok = _native.has_kernel(device.type)
    if backend == "native" and not ok:
        raise NativeUnavailableError(
            f"accdump.{op}: no native kernel for {device.type} tensors ({_native.reason()})"
        )
    return ok


def _native_errors_typed(op: str, exc: RuntimeError) -> Exception:
    """A native input check's RuntimeError as OpInputError (its message names the op)."""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return OpInputError(msg) if msg.startswith(f"accdump.{op}:") else exc


def _check_dtype(t: torch.Tensor, allowed: frozenset[torch.dtype], op: str, arg: str) -> None:
    if t.dtype not in allowed:
        kinds = "floating" if allowed is METRICS_DTYPES else "real floating, float8, float4, integer or bool"
        raise OpInputError(f"accdump.{op}: {arg} has dtype {t.dtype}, expected a {kinds} dtype")
    if t.device.type == "meta":
        raise OpInputError(f"accdump.{op}: {arg} is on the meta device and holds no data")


def _check_pair(a: torch.Tensor, b: torch.Tensor, op: str) -> None:
    if a.shape != b.shape:
        raise OpInputError(
            f"accdump.{op}: a and b must have the same shape, got {list(a.shape)} and {list(b.shape)}"
        )
    if a.device != b.device:
        raise OpInputError(f"accdump.{op}: a and b must be on the same device, got {a.device} and {b.device}")
    _check_dtype(a, METRICS_DTYPES, op, "a")
    _check_dtype(b, METRICS_DTYPES, op, "b")


# --- statistics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor. min..l2norm ignore NaN and Inf; std is the population std."""

    count: int
    nan: int
    posinf: int
    neginf: int
    zeros: int
    min: float
    max: float
    sum: float
    mean: float
    std: float
    absmax: float
    l2norm: float
    min_abs_nonzero: float

    @classmethod
    def from_vector(cls, v: Sequence[float]) -> TensorStats:
        vals = [float(x) for x in v]
        return cls(*(int(x) for x in vals[:5]), *vals[5:])  # type: ignore[arg-type]

    @property
    def finite(self) -> int:
        return self.count - self.nan - self.posinf - self.neginf


if STATS_FIELDS != tuple(f.name for f in fields(TensorStats)):
    raise ImportError("accdump.ops.TensorStats and the dump schema's STATS_FIELDS disagree")


def tensor_stats_raw(x: torch.Tensor, backend: Backend = "auto") -> torch.Tensor:
    """float64[13] statistics of `x` on x's device (see TensorStats for the order); no host sync."""
    _check_dtype(x, STATS_DTYPES, "tensor_stats", "x")
    if x.is_complex():
        raise OpInputError("accdump.tensor_stats: x is complex; take .real / .imag first")
    if _use_native(backend, x.device, "tensor_stats"):
        return torch.ops.accdump.tensor_stats.default(x)
    return reference.tensor_stats(x)


def tensor_stats_multi_raw(xs: Sequence[torch.Tensor], backend: Backend = "auto") -> torch.Tensor:
    """float64[N, 13] statistics of each tensor; on CUDA one launch for the whole list."""
    xs = list(xs)
    if not xs:
        return torch.empty((0, len(STATS_FIELDS)), dtype=torch.float64)
    if _use_native(backend, xs[0].device, "tensor_stats_multi"):
        # the native op checks every tensor itself; checking here too would double the host cost
        try:
            return torch.ops.accdump.tensor_stats_multi.default(xs)
        except RuntimeError as exc:
            raise _native_errors_typed("tensor_stats_multi", exc) from None
    for i, x in enumerate(xs):
        _check_dtype(x, STATS_DTYPES, "tensor_stats_multi", f"xs[{i}]")
        if x.device != xs[0].device:
            raise OpInputError(
                f"accdump.tensor_stats_multi: all tensors must be on one device, got {xs[0].device} "
                f"(tensor 0) and {x.device} (tensor {i})"
            )
    return reference.tensor_stats_multi(xs)


# Bytes of the workspace tensor_stats_into needs (csrc/stats.h: 256-byte header + 2048 partials).
STATS_WORKSPACE_BYTES = 256 + 2048 * 96


def stats_workspace(device: torch.device | str) -> torch.Tensor:
    """A zero-filled workspace for tensor_stats_into on `device`; reuse it for every call on one stream."""
    return torch.zeros(STATS_WORKSPACE_BYTES, dtype=torch.uint8, device=device)


def tensor_stats_into(
    x: torch.Tensor,
    out: torch.Tensor,
    row: int,
    workspace: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> None:
    """Writes the statistics of `x` into out[row] (float64 [R, 13] on x's device): one kernel
    launch, no host sync. With a `workspace` (stats_workspace()) nothing is allocated (CUDA graph
    capture); without, the extension keeps one per device and stream."""
    if _use_native(backend, x.device, "tensor_stats_into"):
        try:
            torch.ops.accdump.tensor_stats_into.default(x, out, row, workspace)
        except RuntimeError as exc:
            raise _native_errors_typed("tensor_stats_into", exc) from None
        return
    _check_dtype(x, STATS_DTYPES, "tensor_stats_into", "x")
    reference.tensor_stats_into(x, out, row, workspace)


def tensor_stats_multi_into(
    xs: Sequence[torch.Tensor],
    out: torch.Tensor,
    rows: Sequence[int],
    workspace: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> None:
    """tensor_stats_into of each xs[i] into out[rows[i]], bit-identical to it, in one launch per
    24 tensors on CUDA (no allocation and no upload with a workspace: made for CUDA graphs)."""
    if len(xs) != len(rows):
        raise OpInputError(f"accdump.tensor_stats_multi_into: {len(xs)} tensors but {len(rows)} rows")
    if not xs:
        return
    if _use_native(backend, out.device, "tensor_stats_multi_into"):
        try:
            torch.ops.accdump.tensor_stats_multi_into.default(list(xs), out, list(rows), workspace)
        except RuntimeError as exc:
            raise _native_errors_typed("tensor_stats_multi_into", exc) from None
        return
    for i, x in enumerate(xs):
        _check_dtype(x, STATS_DTYPES, "tensor_stats_multi_into", f"xs[{i}]")
    reference.tensor_stats_multi_into(xs, out, rows, workspace)


def tensor_fingerprint_into(x: torch.Tensor, out: torch.Tensor, row: int, backend: Backend = "auto") -> None:
    """Writes a 128-bit fingerprint of x's bytes in logical order into out[row] (int64 [R, 2]):
    equal bits give equal fingerprints whatever the strides. One launch, no host sync."""
    if x.device.type == "meta":
        raise OpInputError("accdump.tensor_fingerprint_into: x is on the meta device and holds no data")
    if _use_native(backend, x.device, "tensor_fingerprint_into"):
        try:
            torch.ops.accdump.tensor_fingerprint_into.default(x, out, row)
        except RuntimeError as exc:
            raise _native_errors_typed("tensor_fingerprint_into", exc) from None
        return
    reference.tensor_fingerprint_into(x, out, row)


def tensor_fingerprint_multi_into(
    xs: Sequence[torch.Tensor], out: torch.Tensor, rows: Sequence[int], backend: Backend = "auto"
) -> None:
    """tensor_fingerprint_into of each xs[i] into out[rows[i]], the same fingerprints, in one
    launch per 64 tensors on CUDA (nothing uploaded: made for CUDA graphs)."""
    if len(xs) != len(rows):
        raise OpInputError(f"accdump.tensor_fingerprint_multi_into: {len(xs)} tensors but {len(rows)} rows")
    if not xs:
        return
    for i, x in enumerate(xs):
        if x.device.type == "meta":
            raise OpInputError(
                f"accdump.tensor_fingerprint_multi_into: xs[{i}] is on the meta device and holds no data"
            )
    if _use_native(backend, out.device, "tensor_fingerprint_multi_into"):
        try:
            torch.ops.accdump.tensor_fingerprint_multi_into.default(list(xs), out, list(rows))
        except RuntimeError as exc:
            raise _native_errors_typed("tensor_fingerprint_multi_into", exc) from None
        return
    reference.tensor_fingerprint_multi_into(xs, out, rows)


def fingerprint(x: torch.Tensor, backend: Backend = "auto") -> str:
    """The fingerprint of `x` as 32 hex digits (synchronises)."""
    out = torch.zeros(1, 2, dtype=torch.int64, device=x.device)
    tensor_fingerprint_into(x, out, 0, backend)
    return "".join(f"{int(v) & 0xFFFFFFFFFFFFFFFF:016x}" for v in out[0].tolist())


def tensor_stats(x: torch.Tensor, backend: Backend = "auto") -> TensorStats:
    """Statistics of `x` (synchronises to read them)."""
    return TensorStats.from_vector(tensor_stats_raw(x, backend).tolist())


def tensor_stats_multi(xs: Sequence[torch.Tensor], backend: Backend = "auto") -> list[TensorStats]:
    """Statistics of each tensor of `xs` (synchronises once)."""
    return [TensorStats.from_vector(row) for row in tensor_stats_multi_raw(xs, backend).tolist()]


# --- pairwise metrics -------------------------------------------------------------------------


@dataclass(frozen=True)
class PairMetrics:
    """Metrics of a (golden `a`, target `b`) pair. Sums and maxima are over positions where
    both are finite; non-finite positions are counted in nan_mismatch / inf_mismatch / nonfinite."""

    count: int
    dot: float
    sumsq_a: float
    sumsq_b: float
    max_abs_diff: float
    argmax_abs_diff: int  # flat row-major index; -1 when no position is finite in both
    sum_abs_diff: float
    sum_sq_diff: float
    max_rel_diff: float  # max |a-b| / max(|a|, eps)
    allclose_fail: int  # |a-b| > atol + rtol*|b|; NaN==NaN and equal infinities pass
    nan_mismatch: int
    inf_mismatch: int
    nonfinite: int
    not_equal: int

    @classmethod
    def from_vector(cls, v: Sequence[float]) -> PairMetrics:
        x = [float(e) for e in v]
        return cls(
            int(x[0]),
            x[1],
            x[2],
            x[3],
            x[4],
            int(x[5]),
            x[6],
            x[7],
            x[8],
            int(x[9]),
            int(x[10]),
            int(x[11]),
            int(x[12]),
            int(x[13]),
        )

    @property
    def norm_a(self) -> float:
        return math.sqrt(self.sumsq_a)

    @property
    def norm_b(self) -> float:
        return math.sqrt(self.sumsq_b)

    @property
    def cosine(self) -> float:
        """Cosine similarity; 1 when both are all zero, 0 when exactly one is."""
        if self.sumsq_a == 0 and self.sumsq_b == 0:
            return 1.0
        if self.sumsq_a == 0 or self.sumsq_b == 0:
            return 0.0
        return max(-1.0, min(1.0, self.dot / (self.norm_a * self.norm_b)))

    @property
    def norm_ratio(self) -> float:
        """||b|| / ||a||: 1 when both are zero, inf when only a is."""
        if self.sumsq_a == 0:
            return 1.0 if self.sumsq_b == 0 else math.inf
        return self.norm_b / self.norm_a

    @property
    def rel_l2(self) -> float:
        """||a-b|| / ||a||: 0 when both are zero, inf when only a is."""
        if self.sumsq_a == 0:
            return 0.0 if self.sum_sq_diff == 0 else math.inf
        return math.sqrt(self.sum_sq_diff) / self.norm_a

    @property
    def mse(self) -> float:
        n = self.count - self.nonfinite
        return self.sum_sq_diff / n if n else 0.0

    @property
    def rmse(self) -> float:
        return math.sqrt(self.mse)

    @property
    def mean_abs_diff(self) -> float:
        n = self.count - self.nonfinite
        return self.sum_abs_diff / n if n else 0.0

    @property
    def sqnr_db(self) -> float:
        """Signal-to-quantization-noise ratio 10*log10(||a||^2 / ||a-b||^2), inf when equal."""
        if self.sum_sq_diff == 0:
            return math.inf
        if self.sumsq_a == 0:
            return -math.inf
        return 10.0 * math.log10(self.sumsq_a / self.sum_sq_diff)

    @property
    def allclose_fail_fraction(self) -> float:
        return self.allclose_fail / self.count if self.count else 0.0


METRICS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PairMetrics))


def compare_metrics_raw(
    a: torch.Tensor,
    b: torch.Tensor,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    eps: float = DEFAULT_EPS,
    backend: Backend = "auto",
) -> torch.Tensor:
    """float64[14] metrics of golden `a` vs target `b` on their device (see PairMetrics); no sync."""
    _check_pair(a, b, "compare_metrics")
    if _use_native(backend, a.device, "compare_metrics"):
        return torch.ops.accdump.compare_metrics.default(a, b, float(atol), float(rtol), float(eps))
    return reference.compare_metrics(a, b, atol, rtol, eps)


def compare_metrics(
    a: torch.Tensor,
    b: torch.Tensor,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    eps: float = DEFAULT_EPS,
    backend: Backend = "auto",
) -> PairMetrics:
    """Metrics of golden `a` vs target `b` (same shape; dtypes may differ), in float64."""
    return PairMetrics.from_vector(compare_metrics_raw(a, b, atol, rtol, eps, backend).tolist())


@dataclass(frozen=True)
class RowMetrics:
    """Per-row (per-token) metrics over the last dimension, each a float64 tensor [rows]."""

    cosine: torch.Tensor
    max_abs_diff: torch.Tensor
    rel_l2: torch.Tensor


def rowwise_metrics_raw(a: torch.Tensor, b: torch.Tensor, backend: Backend = "auto") -> torch.Tensor:
    """float64[R, 3] per row over the last dimension: cosine, max|a-b|, ||a-b||/||a||; no sync."""
    _check_pair(a, b, "rowwise_metrics")
    if _use_native(backend, a.device, "rowwise_metrics"):
        return torch.ops.accdump.rowwise_metrics.default(a, b)
    return reference.rowwise_metrics(a, b)


def rowwise_metrics(a: torch.Tensor, b: torch.Tensor, backend: Backend = "auto") -> RowMetrics:
    """Per-row cosine, max |a-b| and relative L2 error of golden `a` vs target `b`."""
    r = rowwise_metrics_raw(a, b, backend)
    return RowMetrics(r[:, 0], r[:, 1], r[:, 2])


# --- block-scaled quantized tensors (shared/quant_formats.md) ---------------------------------


def block_dequantize(
    q: torch.Tensor,
    element: str = "auto",
    scale: torch.Tensor | None = None,
    scale_format: str = "auto",
    block: tuple[int, int] = (1, 1),
    global_scale: float = 1.0,
    backend: Backend = "auto",
) -> torch.Tensor:
    """float32 values of a block-scaled 2-D tensor: q(r, c) read as `element`, times
    scale[r // block[0], c // block[1]] read as `scale_format`, times `global_scale`."""
    if _use_native(backend, q.device, "block_dequantize"):
        try:
            return torch.ops.accdump.block_dequantize.default(
                q, element, scale, scale_format, int(block[0]), int(block[1]), float(global_scale)
            )
        except RuntimeError as exc:
            raise _native_errors_typed("block_dequantize", exc) from None
    try:
        return reference.block_dequantize(q, element, scale, scale_format, block[0], block[1], global_scale)
    except RuntimeError as exc:
        raise _native_errors_typed("block_dequantize", exc) from None


def block_scaled_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    x_element: str = "auto",
    x_scale: torch.Tensor | None = None,
    x_scale_format: str = "auto",
    x_block: int = 1,
    w_element: str = "auto",
    w_scale: torch.Tensor | None = None,
    w_scale_format: str = "auto",
    w_block: tuple[int, int] = (1, 1),
    global_scale: float = 1.0,
    bias: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """float32 [M, N] = global_scale * x @ w^T + bias from block-scaled x [M, K] (1 x x_block
    blocks) and w [N, K]; float32 products, float64 sums of 128-wide chunks, no TF32."""
    args = (x, x_element, x_scale, x_scale_format, int(x_block), w, w_element, w_scale, w_scale_format)
    rest = (int(w_block[0]), int(w_block[1]), float(global_scale), bias)
    if _use_native(backend, x.device, "block_scaled_linear"):
        try:
            return torch.ops.accdump.block_scaled_linear.default(*args, *rest)
        except RuntimeError as exc:
            raise _native_errors_typed("block_scaled_linear", exc) from None
    try:
        return reference.block_scaled_linear(*args, *rest)
    except RuntimeError as exc:
        raise _native_errors_typed("block_scaled_linear", exc) from None
