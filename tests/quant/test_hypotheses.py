"""Every known-bug hypothesis, planted in a fake production kernel, is named by verify_linear;
correct kernels (with each format's legitimate activation quantization) pass."""

from __future__ import annotations

import pytest
import torch

from accdump.quant import (
    HYPOTHESES,
    QuantLinear,
    quantize_activation,
    quantize_fp8_blocks,
    quantize_mx,
    quantize_nvfp4,
    reference_linear,
    verify_linear,
)


def structured_weight(n: int, k: int, seed: int) -> torch.Tensor:
    """Weights with log-normal row and column magnitudes, as real layers have (§8.7 "LLM-like")."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.exp(0.5 * torch.randn(n, 1, generator=g))
    cols = torch.exp(0.5 * torch.randn(1, k, generator=g))
    return 0.02 * torch.randn(n, k, generator=g) * rows * cols


def layer_for(fmt: str) -> tuple[QuantLinear, str]:
    """A quantized layer, and how its production kernel quantizes activations."""
    if fmt == "fp8-block":  # a 2 x 8 scale grid: not square
        return QuantLinear("l", quantize_fp8_blocks(structured_weight(256, 1024, 1)), None, "fp8_group128"), (
            "fp8_group128_ue8m0"
        )
    if fmt == "fp8-block-square":
        return QuantLinear("l", quantize_fp8_blocks(structured_weight(512, 512, 2)), None, "fp8_group128"), (
            "fp8_group128"
        )
    w = structured_weight(160, 512, 3)
    if fmt == "nvfp4":
        return QuantLinear("l", quantize_nvfp4(w), None, "nvfp4", 0.004), "nvfp4"
    return QuantLinear("l", quantize_mx(w), None, "none"), "none"


def production(layer: QuantLinear, x: torch.Tensor, act: str, weight=None) -> torch.Tensor:
    w = weight if weight is not None else layer.weight
    xin = quantize_activation(x.float(), act, layer.input_scale) if act != "none" else x
    return reference_linear(xin, w).to(torch.bfloat16)


FORMATS = ["fp8-block", "fp8-block-square", "nvfp4", "mxfp4"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_correct_kernel_passes(fmt):
    layer, act = layer_for(fmt)
    x = torch.randn(24, layer.weight.shape[1], generator=torch.Generator().manual_seed(9)).bfloat16()
    check = verify_linear(x, production(layer, x, act), layer)
    assert check.verdict == "pass" and check.diagnosis is None
    assert check.agreement.cosine > 0.9999


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_planted_hypothesis_is_named(fmt):
    layer, act = layer_for(fmt)
    x = torch.randn(24, layer.weight.shape[1], generator=torch.Generator().manual_seed(9)).bfloat16()
    applied = 0
    for hyp in HYPOTHESES:
        alt = hyp.apply(layer.weight)
        if alt is None:
            continue
        applied += 1
        check = verify_linear(x, production(layer, x, act, alt), layer)
        assert check.verdict == "fail", hyp.name
        assert check.diagnosis is not None, f"{hyp.name}: no hypothesis matched"
        named = {check.diagnosis.hypothesis, *check.diagnosis.also}
        assert hyp.name in named, f"planted {hyp.name}, diagnosed {named}"
    assert applied >= 6


def test_no_hypothesis_for_an_unknown_bug():
    layer, act = layer_for("fp8-block-square")
    x = torch.randn(24, 512, generator=torch.Generator().manual_seed(9)).bfloat16()
    y = production(layer, x, act)
    y[:, ::3] = -y[:, ::3]  # a sign flip on every third output channel: no known decoding does this
    check = verify_linear(x, y, layer)
    assert check.verdict == "fail" and check.diagnosis is None and len(check.tried) >= 6
