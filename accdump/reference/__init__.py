"""Pure-PyTorch twins of every native op: the fallback backend and the tests' oracle.

Each computes in float64 with plain, obviously-correct torch code; speed is secondary.
"""

from accdump.reference.checksum import fletcher32
from accdump.reference.fingerprint import fingerprint, tensor_fingerprint_into, tensor_fingerprint_multi_into
from accdump.reference.metrics import compare_metrics, rowwise_metrics
from accdump.reference.quant import block_dequantize, block_scaled_linear
from accdump.reference.stats import (
    tensor_stats,
    tensor_stats_into,
    tensor_stats_multi,
    tensor_stats_multi_into,
)

__all__ = [
    "block_dequantize",
    "block_scaled_linear",
    "compare_metrics",
    "fingerprint",
    "fletcher32",
    "rowwise_metrics",
    "tensor_fingerprint_into",
    "tensor_fingerprint_multi_into",
    "tensor_stats",
    "tensor_stats_into",
    "tensor_stats_multi_into",
    "tensor_stats_multi",
]
