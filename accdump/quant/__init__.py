"""Quantized formats: exact decoding, the reference linear, checkpoints, and verification of
quantized kernels (shared/quant_formats.md)."""

from accdump.quant.checkpoint import Checkpoint, Unrecognised
from accdump.quant.formats import (
    BlockQuantized,
    dense,
    fp8_block,
    fp8_per_channel,
    fp8_per_tensor,
    mxfp4,
    mxfp8,
    nvfp4,
)
from accdump.quant.hypotheses import HYPOTHESES, Hypothesis
from accdump.quant.layer_check import Agreement, Diagnosis, LayerCheck, verify_linear
from accdump.quant.layouts import swizzle_128x4, unswizzle_128x4
from accdump.quant.linear import ACTIVATIONS, QuantLinear, quantize_activation, reference_linear
from accdump.quant.quantize import (
    quantize_fp8_blocks,
    quantize_fp8_groups,
    quantize_fp8_tensor,
    quantize_mx,
    quantize_nvfp4,
)
from accdump.quant.verify_dump import VerifyRun, verify_dump

verify = verify_dump  # accdump.verify(checkpoint, dump, ...)

__all__ = [
    "ACTIVATIONS",
    "HYPOTHESES",
    "Agreement",
    "BlockQuantized",
    "Checkpoint",
    "Diagnosis",
    "Hypothesis",
    "LayerCheck",
    "QuantLinear",
    "Unrecognised",
    "VerifyRun",
    "dense",
    "fp8_block",
    "fp8_per_channel",
    "fp8_per_tensor",
    "mxfp4",
    "mxfp8",
    "nvfp4",
    "quantize_activation",
    "quantize_fp8_blocks",
    "quantize_fp8_groups",
    "quantize_fp8_tensor",
    "quantize_mx",
    "quantize_nvfp4",
    "reference_linear",
    "swizzle_128x4",
    "unswizzle_128x4",
    "verify",
    "verify_dump",
    "verify_linear",
]
