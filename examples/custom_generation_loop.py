"""A hand-written greedy generation loop, recorded with explicit steps, then compared in-process.

    python examples/custom_generation_loop.py [--bug] [--tokens 6] [--out accdump-custom-loop]

The loop calls a small Llama (built from its config, random weights, nothing downloaded) once for
the prompt and once per new token with its KV cache, and picks each token itself. Recording with
`auto_step=False` makes a step end where the loop says (`rec.step()` after each token), not at the
end of each forward call, so the probe of the processed logits lands in the same step as the
forward that produced them. The golden run is float32; the target is a bfloat16 copy, correct
unless `--bug` scales `model.layers.1.self_attn.v_proj`'s weight by 1.5. The script prints the
tokens and `result.verdict_line()`: "OK: ..." for the correct bfloat16 run, "DIVERGED at rank 0,
step 0: model.layers.1.self_attn.v_proj ..." with `--bug`; its exit status is compare's (0 or 1).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from pathlib import Path

import torch
from torch import nn

import accdump

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # build from a config: nothing to fetch

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

BUGGY_MODULE = "model.layers.1.self_attn.v_proj"


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
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # predict a fixed successor of the current token: random logits are near-tied, and their
        # argmax would flip on bfloat16 rounding, which a trained model's does not
        emb = model.model.embed_tokens.weight
        succ = emb[torch.randperm(vocab)]
        model.lm_head.weight.copy_(succ / succ.norm(dim=-1, keepdim=True) * math.sqrt(hidden))
    return model


@torch.no_grad()
def generate(model: nn.Module, ids: torch.Tensor, new_tokens: int, out: Path) -> list[list[int]]:
    """Greedy decoding of `new_tokens` tokens, recorded into `out`: one step per token."""
    tokens = ids
    cache = None
    with accdump.record(model, out, auto_step=False, overwrite=True) as rec:
        x = ids
        for _ in range(new_tokens):
            result = model(input_ids=x, past_key_values=cache, use_cache=True)
            cache = result.past_key_values
            logits = result.logits[:, -1].float()
            accdump.probe("next_token_logits", logits)  # recorded in this token's step
            x = logits.argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, x], dim=1)
            rec.step()
    return tokens[:, ids.shape[1] :].tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bug", action="store_true", help=f"scale {BUGGY_MODULE}'s weight by 1.5")
    parser.add_argument("--tokens", type=int, default=6, help="new tokens to generate")
    parser.add_argument("--out", type=Path, default=Path("accdump-custom-loop"), help="dump directory")
    args = parser.parse_args()

    golden = build_model()
    target = copy.deepcopy(golden)
    if args.bug:
        with torch.no_grad():
            target.get_parameter(f"{BUGGY_MODULE}.weight").mul_(1.5)
    target.bfloat16()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))

    print("golden tokens:", generate(golden, ids, args.tokens, args.out / "golden"))
    print("target tokens:", generate(target, ids, args.tokens, args.out / "target"))
    result = accdump.compare(args.out / "golden", args.out / "target")
    print(result.verdict_line())
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
