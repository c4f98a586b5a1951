"""The demo target's FP8 path: MLP linears run as block-scaled FP8 kernels, and the checkpoint of
their quantized weights in DeepSeek layout (`.weight` float8_e4m3fn, `.weight_scale_inv` float32)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from accdump.quant import BlockQuantized, quantize_fp8_blocks, quantize_fp8_groups, reference_linear

BLOCK = (128, 128)
GROUP = 128


class Fp8Linear(nn.Module):
    """y = x @ W^T as a DeepSeek-style FP8 kernel computes it: W in e4m3 with one float32 scale
    per 128x128 block, x quantized per token in groups of 128, exact products accumulated in
    float32 (accdump's reference linear), the output cast back to x's dtype."""

    def __init__(self, weight: BlockQuantized, kernel_weight: BlockQuantized | None = None):
        super().__init__()
        self.qweight = weight  # what the checkpoint holds
        self.kernel_weight = kernel_weight or weight  # how the kernel decodes it (a bug may differ)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.qweight.shape
        xq = quantize_fp8_groups(x.reshape(-1, k).float(), GROUP)
        return reference_linear(xq, self.kernel_weight).reshape(*x.shape[:-1], n).to(x.dtype)


def quantize_mlps(model: nn.Module, golden: nn.Module, device: torch.device | str) -> dict[str, Fp8Linear]:
    """Replaces every MLP linear of `model` with an Fp8Linear of the matching `golden` weight
    (quantized from float32, on `device`); returns them by module path."""
    golden_weights = {name: mod.weight for name, mod in golden.named_modules() if isinstance(mod, nn.Linear)}
    replaced: dict[str, Fp8Linear] = {}
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear) or ".mlp." not in name:
            continue
        w = quantize_fp8_blocks(golden_weights[name].detach().float(), BLOCK).to(device)
        fp8 = Fp8Linear(w)
        parent, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, fp8)
        replaced[name] = fp8
    return replaced


def scales_transposed(w: BlockQuantized) -> BlockQuantized:
    """The weight as a kernel reads it when it is handed the block scales transposed (the
    [K/128, N/128] column-major copy some kernels want) but indexes them as the row-major
    [N/128, K/128] grid: scale (i, j) comes from element i * (K/128) + j of the transposed copy."""
    assert w.scale is not None
    s = w.scale
    return w.replace(scale=s.T.contiguous().view(s.shape))


def save_checkpoint(layers: dict[str, Fp8Linear], directory: Path) -> Path:
    """Writes the layers' quantized weights as DeepSeek-style FP8: `<name>.weight` float8_e4m3fn
    [N, K] and `<name>.weight_scale_inv` float32 [N/128, K/128], plus a config.json."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        w = layer.qweight
        assert w.scale is not None
        tensors[f"{name}.weight"] = w.q.view(torch.float8_e4m3fn).cpu().contiguous()
        tensors[f"{name}.weight_scale_inv"] = w.scale.float().cpu().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.safetensors"
    save_file(tensors, str(path))
    config = {
        "quantization_config": {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": list(BLOCK),
        }
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return path
