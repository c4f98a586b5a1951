"""Decoding through a CUDA graph, as serving engines do, with a bug that lives only in the graph.

The demo decoder gets static KV caches (preallocated [B, H, max_len, head_dim], written at slot
indices held in a tensor), so that one decode step can be captured and replayed. `GraphDecoder`
runs the prefill eagerly and every decode step either eagerly or by replaying the captured step.

The planted bug (`stale_slots=True`) is the classic one: the runner gives the caches a new slot
tensor each step (`cache.slots = torch.tensor(...)`), which eager code sees and the graph never
does: it keeps writing keys and values at the slot it captured, so from the second replay on the
attention reads a stale cache. Eager decoding with the same runner is right.
"""

from __future__ import annotations

import torch
from torch import nn

import accdump
from accdump.demo.model import DemoLM


class StaticKVCache(nn.Module):
    """One layer's keys and values in preallocated [B, H, max_len, head_dim] buffers: writes the
    new ones at `slots`, returns the whole buffers (the attention masks what is not yet written)."""

    def __init__(
        self, batch: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype, device: torch.device
    ):
        super().__init__()
        shape = (batch, heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slots = torch.zeros(1, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, self.slots, k)
        self.v.index_copy_(2, self.slots, v)
        return self.k, self.v


def use_static_caches(model: DemoLM, max_len: int, batch: int = 1) -> list[StaticKVCache]:
    """Replaces every layer's growing KV cache with a static one on the model's device and dtype."""
    p = next(model.parameters())
    cfg = model.config
    caches = []
    for i in range(cfg.layers):
        cache = StaticKVCache(batch, cfg.heads, max_len, cfg.head_dim, dtype=p.dtype, device=p.device)
        model.layer(i).self_attn.add_module("kv_cache", cache)  # replaces the growing cache
        caches.append(cache)
    return caches


class GraphDecoder:
    """Greedy generation: eager prefill, then decode steps run eagerly or replayed from one
    captured CUDA graph (`use_graph`), with the graph-only bug when `stale_slots`."""

    def __init__(self, model: DemoLM, max_len: int, *, use_graph: bool = True, stale_slots: bool = False):
        self.model, self.max_len = model, max_len
        self.use_graph, self.stale_slots = use_graph, stale_slots
        self.caches = use_static_caches(model, max_len)
        self.device = next(model.parameters()).device
        self.graph: torch.cuda.CUDAGraph | None = None
        self._ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._positions = torch.zeros(1, dtype=torch.long, device=self.device)
        self._slots = torch.zeros(1, dtype=torch.long, device=self.device)
        self._logits: torch.Tensor | None = None

    def _set_slots(self, start: int, n: int) -> None:
        if self.stale_slots or self.graph is None or n != 1:
            slots = torch.arange(start, start + n, device=self.device)
            for c in self.caches:
                c.slots = slots  # a new tensor: what a captured graph read stays where it was
        else:
            self._slots.fill_(start)
            for c in self.caches:
                c.slots = self._slots

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, new_tokens: int) -> list[int]:
        """`new_tokens` greedy tokens after `ids` [1, T]: step 0 prefills, each later step decodes."""
        for c in self.caches:
            c.reset()
        t = ids.shape[1]
        if t + new_tokens > self.max_len:
            raise ValueError(f"{t} + {new_tokens} tokens do not fit the caches' {self.max_len} slots")
        ids = ids.to(self.device)
        self._set_slots(0, t)
        logits = self.model(ids, torch.arange(t, device=self.device))
        token = logits[:, -1:].float().argmax(-1)
        out = [int(token[0, 0])]
        for pos in range(t, t + new_tokens - 1):
            logits = self._decode(token, pos)
            token = logits[:, -1:].float().argmax(-1)
            out.append(int(token[0, 0]))
        return out

    def _decode(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        if not self.use_graph:
            self._set_slots(pos, 1)
            return self.model(token, torch.tensor([pos], device=self.device))
        self._ids.copy_(token)
        self._positions.fill_(pos)
        if self.graph is None:
            self._capture(pos)
        self._set_slots(pos, 1)
        assert self.graph is not None and self._logits is not None
        self.graph.replay()
        return self._logits

    def _capture(self, pos: int) -> None:
        """Warms up on a side stream (unrecorded), then captures one decode step at `pos`; the
        warm-up writes the same keys and values the replay at `pos` writes."""
        self._slots.fill_(pos)
        for c in self.caches:
            c.slots = self._slots
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with accdump.paused(), torch.cuda.stream(side):
            for _ in range(2):
                self.model(self._ids, self._positions)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._logits = self.model(self._ids, self._positions)
