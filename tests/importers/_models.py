"""A tiny Llama-shaped model with Hugging Face module paths and TensorRT-LLM's class names, its
golden accdump recording, and a planted bug, shared by the import tests.

Names: model.embed_tokens, model.layers.{i}.{input_layernorm, self_attn.{qkv_proj, o_proj},
post_attention_layernorm, mlp.{gate_up_proj, down_proj}}, model.norm, lm_head.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import accdump
from accdump.diff import CompareResult

VOCAB, DIM, FF, LAYERS, HEADS = 32, 16, 32, 3, 2
BUGGY = "model.layers.1.mlp.down_proj"


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * self.weight


class LlamaAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(DIM, 3 * DIM)
        self.o_proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (y.view(b, t, HEADS, -1).transpose(1, 2) for y in self.qkv_proj(x).chunk(3, -1))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(att.transpose(1, 2).reshape(b, t, DIM))


class GatedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(DIM, 2 * FF)
        self.down_proj = nn.Linear(FF, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, -1)
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(DIM)
        self.self_attn = LlamaAttention()
        self.post_attention_layernorm = RMSNorm(DIM)
        self.mlp = GatedMLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x))
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([LlamaDecoderLayer() for _ in range(LAYERS)])
        self.norm = RMSNorm(DIM)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class LMHead(nn.Linear):
    pass


class LlamaForCausalLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = LlamaModel()
        self.lm_head = LMHead(DIM, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(ids))


def build(dtype: torch.dtype = torch.float32) -> tuple[LlamaForCausalLM, list[torch.Tensor]]:
    """The model (seeded) and the inputs of its two steps."""
    torch.manual_seed(0)
    model = LlamaForCausalLM().to(dtype).eval()
    gen = torch.Generator().manual_seed(1)
    return model, [torch.randint(0, VOCAB, (2, 5), generator=gen) for _ in range(2)]


def record_golden(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, list[torch.Tensor]]:
    """Records the healthy model's two steps (tensor mode); returns the model with the bug planted."""
    model, steps = build(dtype)
    with torch.no_grad(), accdump.record(model, path, mode="tensor"):
        for ids in steps:
            model(ids)
    return plant_bug(model), steps


def plant_bug(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """Scales part of one projection's weight: the target run's bug."""
    with torch.no_grad():
        model.get_submodule(BUGGY).weight[:4] *= 3.0
    return model


def run(model: nn.Module, steps: list[torch.Tensor], between: Callable[[int], None] | None = None) -> None:
    """Runs the steps (the buggy target), calling `between(step)` before each."""
    with torch.no_grad():
        for i, ids in enumerate(steps):
            if between is not None:
                between(i)
            model(ids)


def assert_names_bug(result: CompareResult, step: int = 0) -> None:
    d = result.first_divergence
    assert d is not None, result.verdict_line()
    assert d.pair.golden.name == BUGGY, result.verdict_line()
    assert d.pair.target.step == step, result.verdict_line()


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}
