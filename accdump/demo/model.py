"""The demo's model: a small Llama-layout decoder in plain PyTorch, built in code from a fixed seed.

Module names follow HuggingFace Llama (model.embed_tokens, model.layers.{i}.self_attn.{q,k,v,o}_proj,
model.layers.{i}.mlp.{gate,up,down}_proj, model.norm, lm_head); each attention also holds its
rotary embedding and its KV cache as modules (rotary_emb, kv_cache), so a recording sees what
goes in and out of them. Generation is greedy with a KV cache, one model call per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Config:
    vocab: int = 256
    hidden: int = 256
    heads: int = 4
    intermediate: int = 1024
    layers: int = 4
    rope_base: float = 10000.0
    prompt_len: int = 16
    seed: int = 1234
    qk_gain: float = 1.5  # sharpens attention: scores of a few units
    spread: float = 0.6  # log-normal spread of the MLP weights' row and column magnitudes
    mlp_gain: float = 0.5  # scales down_proj: the MLP share of the residual stream

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()  # in float32 whatever the model's dtype, as production norms do
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return h.to(x.dtype) * self.weight


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """Rotation angles [T, head_dim / 2] (radians) of integer positions [T], in float32."""
    half = head_dim // 2
    inv_freq = base ** -(torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    return positions.float()[:, None] * inv_freq[None, :]


class RotaryEmbedding(nn.Module):
    """Rotates queries and keys [B, H, T, head_dim] by their positions; rotate-half layout
    (dimension i pairs with i + head_dim / 2), as HuggingFace Llama checkpoints expect."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def rotate(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        angles = rope_angles(positions, self.head_dim, self.base)
        return self.rotate(q, angles), self.rotate(k, angles)


class KVCache(nn.Module):
    """One layer's keys and values [B, H, T, head_dim] so far: takes the new ones, returns all."""

    def __init__(self) -> None:
        super().__init__()
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def reset(self) -> None:
        self.k = self.v = None

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None and self.v is not None:
            k = torch.cat([self.k, k], dim=2)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.hidden
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_base)
        self.kv_cache = KVCache()

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q, k = self.rotary_emb(q, k, positions)
        k, v = self.kv_cache(k, v)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        key_pos = torch.arange(k.shape[2], device=x.device)
        scores = scores.masked_fill(key_pos[None, :] > positions[:, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, d)
        return self.o_proj(out)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), positions)
        return h + self.mlp(self.post_attention_layernorm(h))


class Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, positions)
        return self.norm(x)


class DemoLM(nn.Module):
    """The decoder with its LM head; remembers how many tokens its KV caches hold."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.config = cfg
        self.model = Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        self.seen = 0

    def layer(self, i: int) -> DecoderLayer:
        return cast(DecoderLayer, self.model.layers[i])

    def reset(self) -> None:
        """Empties the KV caches: the next call is a prefill."""
        self.seen = 0
        for i in range(len(self.model.layers)):
            self.layer(i).self_attn.kv_cache.reset()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] of input_ids [B, T], which follow the tokens already cached (at
        `positions` [T] when given: a CUDA graph must read them from a tensor it captured)."""
        t = input_ids.shape[1]
        if positions is None:
            positions = torch.arange(self.seen, self.seen + t, device=input_ids.device)
        logits = self.lm_head(self.model(input_ids, positions))
        self.seen += t
        return logits


def _structured(gen: torch.Generator, n: int, k: int, spread: float) -> torch.Tensor:
    """A weight [n, k] of std ~1/sqrt(k) whose row and column magnitudes vary log-normally, as
    trained weights' do (a few channels much larger than the rest)."""
    rows = torch.exp(spread * torch.randn(n, 1, generator=gen))
    cols = torch.exp(spread * torch.randn(1, k, generator=gen))
    w = torch.randn(n, k, generator=gen) * rows * cols
    return w / w.std() / math.sqrt(k)


def build_model(cfg: Config | None = None) -> DemoLM:
    """The golden model (float32, CPU, eval mode): the same weights on every call."""
    cfg = cfg or Config()
    gen = torch.Generator().manual_seed(cfg.seed)
    model = DemoLM(cfg).eval()
    d = cfg.hidden
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.randn(cfg.vocab, d, generator=gen))
        for i in range(cfg.layers):
            layer = model.layer(i)
            attn = layer.self_attn
            for proj, gain in (
                (attn.q_proj, cfg.qk_gain),
                (attn.k_proj, cfg.qk_gain),
                (attn.v_proj, 1.0),
                (attn.o_proj, 1.0),
            ):
                proj.weight.copy_(gain * _structured(gen, d, d, 0.3))
            layer.mlp.gate_proj.weight.copy_(_structured(gen, cfg.intermediate, d, cfg.spread))
            layer.mlp.up_proj.weight.copy_(_structured(gen, cfg.intermediate, d, cfg.spread))
            layer.mlp.down_proj.weight.copy_(cfg.mlp_gain * _structured(gen, d, cfg.intermediate, cfg.spread))
        # the head maps each token's embedding to a fixed successor: the model predicts
        # confidently, so its greedy output does not flip on rounding noise
        succ = torch.randperm(cfg.vocab, generator=gen)
        model.lm_head.weight.copy_(model.model.embed_tokens.weight[succ] / math.sqrt(d))
    return model


def prompt(cfg: Config | None = None) -> torch.Tensor:
    """The demo's prompt: [1, prompt_len] token ids from the config's seed."""
    cfg = cfg or Config()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    return torch.randint(0, cfg.vocab, (1, cfg.prompt_len), generator=gen)


BeforeStep = Callable[[DemoLM, int], None]


@torch.no_grad()
def generate(
    model: DemoLM, ids: torch.Tensor, new_tokens: int, before_step: BeforeStep | None = None
) -> list[int]:
    """Greedy generation of `new_tokens` tokens: step 0 is the prefill of `ids`, each later step
    decodes the previous token (one model call per step). `before_step(model, step)` runs before
    each call."""
    model.reset()
    x = ids
    out: list[int] = []
    for step in range(new_tokens):
        if before_step is not None:
            before_step(model, step)
        logits = model(x)
        x = logits[:, -1:].float().argmax(-1)
        out.append(int(x[0, 0]))
    return out
