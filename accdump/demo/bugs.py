"""The planted bugs: each turns a copy of the golden model into the target, a bfloat16 run with
one bug, and says where accdump must find it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from accdump.demo.fp8 import Fp8Linear, quantize_mlps, scales_transposed
from accdump.demo.model import BeforeStep, DemoLM, RotaryEmbedding
from accdump.errors import DemoError

BUGS = ("fp8-scales", "rope", "kv-cache", "none")
TARGET_DTYPE = torch.bfloat16
FP8_LAYER = "model.layers.1.mlp.down_proj"
ROPE_LAYER = 1
KV_LAYER = 2
KV_STEP = 3  # the decode step before which the cache is corrupted (or the last one, when earlier)
KV_PAGE = slice(4, 8)  # the cache slots (positions) of the page that is lost


@dataclass(frozen=True)
class Planted:
    """What was planted, and where compare must put the first divergence (None: nowhere)."""

    bug: str
    description: str
    module: str | None
    step: int | None
    fp8_layer: str | None = None  # the FP8 linear verify must fail, with scales-transposed


@dataclass
class Target:
    model: DemoLM
    planted: Planted
    before_step: BeforeStep | None = None
    fp8_layers: dict[str, Fp8Linear] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "bfloat16" + (", FP8 MLP" if self.fp8_layers else "")


class InterleavedRotary(RotaryEmbedding):
    """Rotary embedding with interleaved pairs (2i, 2i + 1), the GPT-J / original Llama layout,
    applied to a checkpoint that expects rotate-half: a classic porting bug."""

    def rotate(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


def _lose_kv_page(step: int) -> BeforeStep:
    """Zeroes one page of layer KV_LAYER's cached keys and values just before `step`, as when a
    page is freed and reused while the sequence still needs it."""

    def before_step(model: DemoLM, s: int) -> None:
        if s != step:
            return
        cache = model.layer(KV_LAYER).self_attn.kv_cache
        assert cache.k is not None and cache.v is not None
        cache.k, cache.v = cache.k.clone(), cache.v.clone()
        cache.k[:, :, KV_PAGE] = 0
        cache.v[:, :, KV_PAGE] = 0

    return before_step


def make_target(bug: str, golden: DemoLM, device: torch.device | str, new_tokens: int) -> Target:
    """The target model for `bug` (one of BUGS): a bfloat16 copy of `golden` with the bug planted."""
    if bug not in BUGS:
        raise DemoError(f"unknown bug {bug!r}: choose from {', '.join(BUGS)}")
    model = copy.deepcopy(golden).to(device=device, dtype=TARGET_DTYPE)
    if bug == "fp8-scales":
        layers = quantize_mlps(model, golden, device)
        bad = layers[FP8_LAYER]
        bad.kernel_weight = scales_transposed(bad.qweight)
        desc = (
            f"MLP linears run as FP8 block-scaled kernels; {FP8_LAYER}'s kernel reads the "
            "128x128 block scales transposed"
        )
        return Target(model, Planted(bug, desc, FP8_LAYER, 0, FP8_LAYER), fp8_layers=layers)
    if bug == "rope":
        attn = model.layer(ROPE_LAYER).self_attn
        attn.rotary_emb = InterleavedRotary(attn.head_dim, model.config.rope_base)
        name = f"model.layers.{ROPE_LAYER}.self_attn.rotary_emb"
        desc = f"{name} pairs dimensions interleaved (2i, 2i+1) where the weights expect rotate-half"
        return Target(model, Planted(bug, desc, name, 0))
    if bug == "kv-cache":
        if new_tokens < 2:
            raise DemoError("--bug kv-cache needs at least 2 tokens (a decode step to corrupt)")
        step = min(KV_STEP, new_tokens - 1)
        name = f"model.layers.{KV_LAYER}.self_attn.kv_cache"
        desc = (
            f"the page of cache slots {KV_PAGE.start}-{KV_PAGE.stop - 1} of {name} is zeroed "
            f"before decode step {step}"
        )
        return Target(model, Planted(bug, desc, name, step), before_step=_lose_kv_page(step))
    desc = "no bug: the same model in bfloat16 (rounding noise only)"
    return Target(model, Planted(bug, desc, None, None))
