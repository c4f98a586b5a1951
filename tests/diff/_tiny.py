"""A tiny decoder built in code for compare's tests, the runs that record it, and planted bugs.

Names (golden layout): embed, layers.{i}.norm1, layers.{i}.attn.{q,k,v,o}_proj, layers.{i}.norm2,
layers.{i}.mlp.{up,down}_proj, norm, lm_head. Attention (rotary embedding, scale, causal mask,
softmax) is computed functionally inside Attention.forward, so at module level only the
projections around it are recorded; the residual adds are code inside Block.forward.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import accdump

SEED = 1234
VOCAB, DIM, HEADS, FF, N_LAYERS = 64, 32, 4, 64, 4
HEAD_DIM = DIM // HEADS
PROMPT_LEN = 8
QK_GAIN = 3.0


def rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of x [B, H, T, hd] at integer positions pos [T] (rotate-half layout)."""
    half = x.shape[-1] // 2
    inv = 1.0 / base ** (torch.arange(half, dtype=torch.float32) / half)
    ang = pos.to(torch.float32)[:, None] * inv[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Per-layer keys and values of the tokens seen so far (a plain object: not recorded)."""

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(DIM, DIM, bias=False)
        self.k_proj = nn.Linear(DIM, DIM, bias=False)
        self.v_proj = nn.Linear(DIM, DIM, bias=False)
        self.o_proj = nn.Linear(DIM, DIM, bias=False)
        self.bug_scale = False  # planted: 1/d instead of 1/sqrt(d)
        self.bug_q_pos_offset = 0  # planted: queries rotated at the wrong positions

    def forward(self, x, pos, cache=None, layer=0):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
        q = rope(q, pos + self.bug_q_pos_offset)
        k = rope(k, pos)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        scale = 1.0 / HEAD_DIM if self.bug_scale else 1.0 / math.sqrt(HEAD_DIM)
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        key_pos = torch.arange(k.shape[2])
        causal = key_pos[None, :] <= pos[:, None]
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, DIM)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up_proj = nn.Linear(DIM, FF)
        self.down_proj = nn.Linear(FF, DIM)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, mlp_attr: str = "mlp", tap: bool = False):
        super().__init__()
        self.norm1 = RMSNorm(DIM)
        self.attn = Attention()
        self.norm2 = RMSNorm(DIM)
        self.mlp_attr = mlp_attr
        setattr(self, mlp_attr, MLP())
        if tap:
            self.tap = nn.Identity()  # an extra recorded module that the other side lacks
        self.bug_double_residual = False  # planted: the attention residual added twice

    def forward(self, x, pos, cache=None, layer=0):
        h = x + self.attn(self.norm1(x), pos, cache, layer)
        if self.bug_double_residual:
            h = h + x
        if hasattr(self, "tap"):
            h = self.tap(h)
        return h + getattr(self, self.mlp_attr)(self.norm2(h))


class TinyDecoder(nn.Module):
    def __init__(self, layers_attr: str = "layers", mlp_attr: str = "mlp", taps: tuple[int, ...] = ()):
        super().__init__()
        self.layers_attr = layers_attr
        self.embed = nn.Embedding(VOCAB, DIM)
        setattr(self, layers_attr, nn.ModuleList(Block(mlp_attr, i in taps) for i in range(N_LAYERS)))
        self.norm = RMSNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    @property
    def layer_list(self) -> nn.ModuleList:
        return getattr(self, self.layers_attr)

    def forward(self, input_ids, cache=None):
        start = cache.length if cache is not None else 0
        pos = torch.arange(start, start + input_ids.shape[1])
        x = self.embed(input_ids)
        for i, blk in enumerate(self.layer_list):
            x = blk(x, pos, cache, i)
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.lm_head(self.norm(x))


def golden_model(**kwargs) -> TinyDecoder:
    torch.manual_seed(SEED)
    model = TinyDecoder(**kwargs).eval()
    with torch.no_grad():  # sharper attention than the default init: scores of a few units
        for blk in model.layer_list:
            blk.attn.q_proj.weight.mul_(QK_GAIN)
            blk.attn.k_proj.weight.mul_(QK_GAIN)
    return model


def renamed_copy(model: TinyDecoder, layers_attr: str = "blocks", mlp_attr: str = "ffn") -> TinyDecoder:
    """The same weights in a model whose modules are named blocks.{i}.ffn instead of layers.{i}.mlp."""
    other = TinyDecoder(layers_attr=layers_attr, mlp_attr=mlp_attr).eval()
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace(f"{model.layers_attr}.", f"{layers_attr}.", 1).replace(".mlp.", f".{mlp_attr}.")
        sd[k] = v
    other.load_state_dict(sd)
    return other


def target_copy(model: TinyDecoder) -> TinyDecoder:
    return copy.deepcopy(model)


def prompt(batch: int = 1, length: int = PROMPT_LEN) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(SEED + 1))


def record_forward(model, path, ids, *, mode="stats", level="module", calls: int = 1):
    """Records `calls` forward passes of `model` on `ids` (one step each)."""
    with torch.no_grad(), accdump.record(model, path, mode=mode, level=level):
        outs = [model(ids) for _ in range(calls)]
    return outs[-1]


def generate(model, ids, new_tokens: int = 4, *, corrupt_before=None, force=None):
    """Greedy generation with a KV cache: step 0 is the prefill, steps 1..new_tokens decode one token
    each (one model call per step). corrupt_before=s adds noise to layer 1's cached keys just before
    step s; force={s: token} feeds `token` at step s instead of the generated one."""
    cache = KVCache(N_LAYERS)
    out = []
    x = ids
    for step in range(new_tokens + 1):
        if force and step in force:
            x = torch.full_like(x, force[step])
        if corrupt_before == step:
            g = torch.Generator().manual_seed(SEED + 7)
            k = cache.k[1]
            cache.k[1] = k + 0.5 * k.std() * torch.randn(k.shape, generator=g).to(k.dtype)
        logits = model(x, cache)
        x = logits[:, -1:].float().argmax(-1)
        out.append(int(x))
    return out


def record_generate(model, path, ids, *, mode="stats", level="module", **kwargs):
    with torch.no_grad(), accdump.record(model, path, mode=mode, level=level):
        return generate(model, ids, **kwargs)
