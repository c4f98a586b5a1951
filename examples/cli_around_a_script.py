"""A plain generation script that never mentions accdump: record it unchanged from the command line.

    python -m accdump record -o dumps/golden -- python examples/cli_around_a_script.py
    python -m accdump record -o dumps/target -- python examples/cli_around_a_script.py --bug
    python -m accdump compare dumps/golden dumps/target

The script builds a small Llama from its config (random weights, nothing downloaded) and
generates greedily with `model.generate`: each forward call (the prefill, then one per new token)
is one step of the dump, under HuggingFace's module paths. `--bug` scales one linear's weights
(`model.layers.1.mlp.down_proj`, as a wrong dequantization scale would): compare names that
module at step 0 and exits with status 1. `--dtype bfloat16` without `--bug` is a correct run at
lower precision, which compare does not report (exit status 0).
"""

from __future__ import annotations

import argparse
import math
import os

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # build from a config: nothing to fetch

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

BUGGY_MODULE = "model.layers.1.mlp.down_proj"


def build_model(vocab: int = 128, hidden: int = 64, layers: int = 3) -> LlamaForCausalLM:
    """A small Llama in float32 with the same random weights on every call."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,  # random weights: never stop early
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # A random lm_head gives near-tied logits, whose argmax flips on rounding noise; predicting
        # a fixed successor of the current token keeps greedy decoding stable, as in a trained model.
        emb = model.model.embed_tokens.weight
        succ = emb[torch.randperm(vocab)]
        model.lm_head.weight.copy_(succ / succ.norm(dim=-1, keepdim=True) * math.sqrt(hidden))
    return model


def plant_bug(model: nn.Module) -> None:
    """Scales BUGGY_MODULE's weight by 1.5."""
    with torch.no_grad():
        model.get_parameter(f"{BUGGY_MODULE}.weight").mul_(1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--bug", action="store_true", help=f"scale {BUGGY_MODULE}'s weight by 1.5")
    parser.add_argument("--tokens", type=int, default=8, help="new tokens to generate")
    args = parser.parse_args()

    model = build_model()
    if args.bug:
        plant_bug(model)
    if args.dtype == "bfloat16":
        model.bfloat16()
    ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # transformers 5 types generate()'s `self` as a Protocol its own models do not satisfy for mypy
        out = model.generate(  # type: ignore[misc]
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens, do_sample=False
        )
    for row in out[:, ids.shape[1] :].tolist():
        print("generated:", row)


if __name__ == "__main__":
    main()
