"""A hand-written runner (plain tensors and functions, no nn.Module) instrumented with probes.

    python examples/probes_in_a_runner.py [--bug] [--tokens 4] [--out accdump-probes]

`accdump.probe(name, tensor)` records a tensor wherever it is called, into the active recorder
(and does nothing when none is active); `accdump.record(None, out)` is a recorder without a
model, so the probes are all it records. The runner is a 2-layer decoder written as functions:
each layer probes its input, its attention output and its MLP output, and the loop ends a step
per generated token with `rec.step()`. The golden run is correct; `--bug` divides layer 1's
attention scores by the head size instead of its square root. compare then names
the first failing probe, `layers.1.attn`, and the region it arises in: between `layers.1.input`,
the last probe that passes, and `layers.1.attn`. The exit status is compare's (0 or 1).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import accdump

VOCAB, DIM, LAYERS = 64, 32, 2
Weights = dict[str, torch.Tensor]


def make_weights() -> tuple[torch.Tensor, list[Weights]]:
    """The embedding [VOCAB, DIM] and each layer's weights, the same on every call."""
    gen = torch.Generator().manual_seed(0)

    def w(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen) / math.sqrt(rows)

    embed = torch.randn(VOCAB, DIM, generator=gen)
    layers = [
        {
            "wq": w(DIM, DIM),
            "wk": w(DIM, DIM),
            "wv": w(DIM, DIM),
            "wo": w(DIM, DIM),
            "w1": w(DIM, 4 * DIM),
            "w2": w(4 * DIM, DIM),
        }
        for _ in range(LAYERS)
    ]
    return embed, layers


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """x scaled to unit root-mean-square over its last dimension."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def attention(x: torch.Tensor, w: Weights, score_scale: float) -> torch.Tensor:
    """Single-head causal self-attention over x [T, DIM]."""
    q, k, v = x @ w["wq"], x @ w["wk"], x @ w["wv"]
    scores = (q @ k.T) * score_scale
    causal = torch.ones(len(x), len(x), dtype=torch.bool).tril()
    return F.softmax(scores.masked_fill(~causal, -math.inf), dim=-1) @ v @ w["wo"]


def forward(tokens: torch.Tensor, embed: torch.Tensor, layers: list[Weights], bug: bool) -> torch.Tensor:
    """Next-token logits [VOCAB] of a token sequence [T], probing each layer along the way."""
    h = embed[tokens]
    for i, w in enumerate(layers):
        accdump.probe(f"layers.{i}.input", h)
        scale = 1 / DIM if bug and i == 1 else 1 / math.sqrt(DIM)
        a = attention(rms_norm(h), w, scale)
        accdump.probe(f"layers.{i}.attn", a)
        h = h + a
        m = F.silu(rms_norm(h) @ w["w1"]) @ w["w2"]
        accdump.probe(f"layers.{i}.mlp", m)
        h = h + m
    logits = rms_norm(h[-1]) @ embed.T
    accdump.probe("logits", logits)
    return logits


def run(out: Path, new_tokens: int, bug: bool) -> list[int]:
    """Greedy generation (the whole sequence recomputed per token), one recorded step per token."""
    embed, layers = make_weights()
    tokens = torch.randint(0, VOCAB, (8,), generator=torch.Generator().manual_seed(1))
    with accdump.record(None, out, overwrite=True) as rec:
        for _ in range(new_tokens):
            accdump.probe("tokens", tokens)
            nxt = forward(tokens, embed, layers, bug).argmax().reshape(1)
            tokens = torch.cat([tokens, nxt])
            rec.step()
    return tokens[-new_tokens:].tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bug", action="store_true", help="mis-scale layer 1's attention scores")
    parser.add_argument("--tokens", type=int, default=4, help="new tokens to generate")
    parser.add_argument("--out", type=Path, default=Path("accdump-probes"), help="dump directory")
    args = parser.parse_args()

    print("golden tokens:", run(args.out / "golden", args.tokens, bug=False))
    print("target tokens:", run(args.out / "target", args.tokens, bug=args.bug))
    result = accdump.compare(args.out / "golden", args.out / "target")
    print(result.verdict_line())
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
