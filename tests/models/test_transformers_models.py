"""accdump on HuggingFace transformers models built from configs (random weights, nothing
downloaded): Llama, Qwen3 and Mixtral (MoE) run `generate()` under `accdump.record`.

Each step of generate is one step of the dump, under HF module paths, with its token ids; an
identical rerun is not reported; a bug planted in one module is named there at the prefill, in a
float32 and in a bfloat16 target; a correct bfloat16 copy is not reported.

Two choices in how the models are built keep bfloat16 rounding from looking like a bug:
- lm_head predicts a fixed successor of the current token (its rows are the permuted, normalised
  embeddings, as in `accdump demo`), so greedy decoding does not flip on near-tied logits;
- each MoE router is decisive (logits spread over several units, as a trained router's are), and
  the batch holds 4 prompts, so that bfloat16 rounding does not send a token to another expert.
  An untrained router (weights of std 0.02) on one sequence is tested too: its two routing
  weights per token, 0.5 +- 0.01, must pass although bfloat16 moves their spread by up to 3x, and
  an expert choice that rounding flips must be named at that router's index output.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.version import Version
from torch import nn

import accdump
from accdump.diff import Verdict
from accdump.diff.comparison import CompareResult
from accdump.store import Dump, Role

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # set before transformers loads: nothing is fetched
transformers = pytest.importorskip("transformers")

# With seeds 0, 1, 4 and 10 (of 0-11) the bfloat16 Mixtral routes one token to another expert
# (seed 4: compare then names that router, at decode step 3).
SEED = 2
VOCAB, HIDDEN, HEADS, KV_HEADS, LAYERS = 128, 64, 4, 2, 3
HEAD_DIM = HIDDEN // HEADS
BATCH, PROMPT_LEN, NEW_TOKENS = 4, 8, 4  # NEW_TOKENS steps: the prefill and 3 decode steps
ROUTER_GAIN = 10.0  # std of the router logits, in units
EXPERT, ROUTED_EXPERTS = 1, 4


@dataclass(frozen=True)
class Bug:
    """Multiplies `param[index]` by `factor` in the target: `module` (the parameter's owner) is
    where compare must find it."""

    name: str
    param: str
    factor: float
    index: int | slice | None = None  # None: the whole parameter

    @property
    def module(self) -> str:
        """The module path that owns `param`."""
        return self.param.rsplit(".", 1)[0]

    def plant(self, model: nn.Module) -> None:
        """Plants the bug in `model`, in place."""
        with torch.no_grad():
            param = model.get_parameter(self.param)
            (param if self.index is None else param[self.index]).mul_(self.factor)


@dataclass(frozen=True)
class Arch:
    """A transformers architecture: its model and config classes, extra config, planted bugs."""

    model_class: str
    config_class: str
    bugs: tuple[Bug, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    moe: bool = False


DENSE_BUGS = (
    Bug("down_proj-scaled", "model.layers.1.mlp.down_proj.weight", 1.5),
    Bug("q_proj-head-zeroed", "model.layers.1.self_attn.q_proj.weight", 0.0, slice(0, HEAD_DIM)),
)
ARCHS = {
    "llama": Arch("LlamaForCausalLM", "LlamaConfig", DENSE_BUGS),
    "qwen3": Arch("Qwen3ForCausalLM", "Qwen3Config", DENSE_BUGS, {"head_dim": HEAD_DIM}),
    "mixtral": Arch(
        "MixtralForCausalLM",
        "MixtralConfig",
        (
            # transformers 5 fuses the experts into one module with [expert, ...] parameters
            Bug("expert-down_proj-scaled", "model.layers.1.mlp.experts.down_proj", 2.0, EXPERT),
            Bug("router-row-scaled", "model.layers.1.mlp.gate.weight", 2.0, 2),
        ),
        {"num_local_experts": ROUTED_EXPERTS, "num_experts_per_tok": 2},
        moe=True,
    ),
}


def build_model(arch: Arch, seed: int = SEED, router_gain: float = ROUTER_GAIN) -> nn.Module:
    """The golden float32 model of `arch`, the same weights on every call with the same seed."""
    torch.manual_seed(seed)
    config = getattr(transformers, arch.config_class)(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,  # no early stop: generate always makes NEW_TOKENS steps
        pad_token_id=None,
        **arch.extra,
    )
    model: nn.Module = getattr(transformers, arch.model_class)(config).eval()
    with torch.no_grad():
        succ = model.get_parameter("model.embed_tokens.weight")[torch.randperm(VOCAB)]
        model.get_parameter("lm_head.weight").copy_(
            succ / succ.norm(dim=-1, keepdim=True) * math.sqrt(HIDDEN)
        )
        if arch.moe:
            for i in range(LAYERS):
                gate = model.get_parameter(f"model.layers.{i}.mlp.gate.weight")
                gate.copy_(torch.randn_like(gate) * router_gain / math.sqrt(HIDDEN))
    return model


def prompt() -> torch.Tensor:
    """[BATCH, PROMPT_LEN] token ids, the same on every call."""
    return torch.randint(0, VOCAB, (BATCH, PROMPT_LEN), generator=torch.Generator().manual_seed(SEED + 1))


def record_generate(model: Any, ids: torch.Tensor, path: Path) -> torch.Tensor:
    """Greedy `generate` of a transformers model recorded into `path` (mode stats, level module);
    returns all token ids."""
    with torch.no_grad(), accdump.record(model, path):
        return model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False
        )


@dataclass(frozen=True)
class Golden:
    """A golden float32 run: its model, prompt, dump directory and generated token ids."""

    arch: Arch
    model: nn.Module
    ids: torch.Tensor
    path: Path
    tokens: torch.Tensor


@pytest.fixture(scope="module", params=list(ARCHS))
def golden(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Golden:
    """The float32 golden run of one architecture, recorded once per module."""
    arch = ARCHS[request.param]
    if not hasattr(transformers, arch.model_class):
        pytest.skip(f"transformers {transformers.__version__} has no {arch.model_class}")
    if arch.moe and Version(transformers.__version__).major < 5:
        pytest.skip("the MoE bugs use transformers 5's layout (all experts in one mlp.experts module)")
    model, ids = build_model(arch), prompt()
    path = tmp_path_factory.mktemp(f"golden-{request.param}")
    return Golden(arch, model, ids, path, record_generate(model, ids, path))


def target_run(golden: Golden, path: Path, dtype: torch.dtype, bug: Bug | None = None) -> CompareResult:
    """A copy of the golden model, with `bug` planted, cast to `dtype`, recorded and compared."""
    model = copy.deepcopy(golden.model)
    if bug is not None:
        bug.plant(model)
    tokens = record_generate(model.to(dtype), golden.ids, path)
    assert torch.equal(tokens, golden.tokens), "the planted bugs are silent: the tokens stay the same"
    return accdump.compare(golden.path, path, device="cpu")


def names(dump: Dump) -> set[str]:
    """The names of all records in `dump`."""
    return {r.name for r in dump.records()}


def test_each_generate_step_is_one_step_with_hf_names_and_token_ids(golden: Golden) -> None:
    dump = accdump.load(golden.path)
    assert dump.steps() == list(range(NEW_TOKENS))
    recorded = names(dump)
    for i in range(LAYERS):
        layer = f"model.layers.{i}"
        assert {f"{layer}.self_attn.{p}_proj" for p in "qkvo"} <= recorded
        assert f"{layer}.input_layernorm" in recorded
        if golden.arch.moe:
            assert {f"{layer}.mlp.gate", f"{layer}.mlp.experts"} <= recorded
        else:
            assert {f"{layer}.mlp.{p}_proj" for p in ("gate", "up", "down")} <= recorded
    assert {"model.embed_tokens", "model.norm", "lm_head"} <= recorded
    # the prefill sees the prompt, each decode step one new token per sequence
    lm_head_in = [r.shape for r in dump.records(name="lm_head", role=Role.INPUT)]
    assert lm_head_in == [(BATCH, 1, HIDDEN)] * NEW_TOKENS
    q_proj_in = [r.shape for r in dump.records(name="model.layers.0.self_attn.q_proj", role=Role.INPUT)]
    assert q_proj_in == [(BATCH, PROMPT_LEN, HIDDEN)] + [(BATCH, 1, HIDDEN)] * (NEW_TOKENS - 1)
    tokens = list(dump.records(role=Role.TOKENS))
    assert [r.step for r in tokens] == list(range(NEW_TOKENS))
    assert [r.shape for r in tokens] == [(BATCH, PROMPT_LEN)] + [(BATCH, 1)] * (NEW_TOKENS - 1)
    fed = torch.cat([dump.tensor(r) for r in tokens], dim=1)
    assert torch.equal(fed, golden.tokens[:, :-1])  # the prompt, then each token as it was fed back


@pytest.mark.parametrize("golden", ["mixtral"], indirect=True)
def test_moe_experts_are_one_fused_module(golden: Golden) -> None:
    """What the MoE bugs rely on: transformers 5 runs all experts of a layer as one module
    (`mlp.experts`, no module per expert), after the router `mlp.gate`, whose outputs include the
    chosen experts' indices (here spanning all of them)."""
    dump = accdump.load(golden.path)
    experts = [n for n in names(dump) if ".mlp.experts" in n]
    assert sorted({n.split(".mlp.")[1] for n in experts}) == ["experts", "experts.act_fn"]
    gate_outputs = list(dump.records(step=0, name="model.layers.1.mlp.gate", role=Role.OUTPUT))
    index = [r for r in gate_outputs if r.dtype == "int64"]
    assert len(index) == 1 and index[0].stats.min == 0 and index[0].stats.max == ROUTED_EXPERTS - 1


def test_identical_rerun_has_no_divergence(golden: Golden, tmp_path: Path) -> None:
    result = target_run(golden, tmp_path / "rerun", torch.float32)
    assert result.first_divergence is None and result.first_token_diff is None, result.verdict_line()
    assert result.exit_code == 0 and result.verdict_line().startswith("OK")
    assert not result.only_golden and not result.only_target
    n_records = sum(1 for r in accdump.load(golden.path).records() if r.role != Role.TOKENS)
    assert len(result.pairs) == n_records
    assert all(p.golden.stats == p.target.stats for p in result.pairs)  # CPU runs: bit-identical


BUG_CASES = [pytest.param(arch, bug, id=f"{arch}-{bug.name}") for arch, a in ARCHS.items() for bug in a.bugs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("golden", "bug"), BUG_CASES, indirect=["golden"])
def test_planted_bug_is_named_at_its_module_on_the_prefill(
    golden: Golden, bug: Bug, dtype: torch.dtype, tmp_path: Path
) -> None:
    result = target_run(golden, tmp_path / "target", dtype, bug)
    d = result.first_divergence
    assert d is not None, result.verdict_line()
    assert (d.attributed_to, d.pair.target.step) == (bug.module, 0), result.verdict_line()
    assert d.pair.target.name == bug.module and d.pair.target.role == Role.OUTPUT
    assert d.inputs and not any(p.failing for p in d.inputs)
    assert not any(p.failing for p in result.pairs[: result.pairs.index(d.pair)])
    assert result.exit_code == 1 and f"step 0: {bug.module} (" in result.verdict_line()


def test_bfloat16_copy_is_not_reported(golden: Golden, tmp_path: Path) -> None:
    result = target_run(golden, tmp_path / "bf16", torch.bfloat16)
    # an MoE router that picks another expert in bfloat16 changes what runs after it: with these
    # weights no choice flips (the integer records are token ids, positions and expert indices)
    changed = {
        p.target.name for p in result.pairs if p.golden.dtype == "int64" and p.golden.stats != p.target.stats
    }
    assert result.first_divergence is None, f"{result.verdict_line()} (integer records changed: {changed})"
    assert result.first_token_diff is None and result.exit_code == 0
    assert result.verdict_line().startswith("OK") and not changed
    q_proj = [p for p in result.pairs if p.target.name == "model.layers.0.self_attn.q_proj"]
    assert {(p.golden.dtype, p.target.dtype) for p in q_proj} == {("float32", "bfloat16")}


UNTRAINED_ROUTER_GAIN = 0.02 * math.sqrt(HIDDEN)  # nn.Linear weights of std 0.02


@pytest.mark.parametrize("seed", [2, 3])
def test_bfloat16_untrained_router_on_one_sequence(seed: int, tmp_path: Path) -> None:
    """Near-tied routing weights pass their statistics-only compare; a flipped expert choice is
    named at the router whose int64 index output changed (here: seed 2 flips one at decode step
    2 of layer 2, seed 3 none; statistics once called seed 3's weights catastrophic)."""
    arch = ARCHS["mixtral"]
    if Version(transformers.__version__).major < 5:
        pytest.skip("the MoE records use transformers 5's layout (mlp.gate, then mlp.experts)")
    model = build_model(arch, seed, UNTRAINED_ROUTER_GAIN)
    ids = torch.randint(0, VOCAB, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(seed + 1))
    golden_tokens = record_generate(model, ids, tmp_path / "golden")
    tokens = record_generate(copy.deepcopy(model).to(torch.bfloat16), ids, tmp_path / "bf16")
    assert torch.equal(tokens, golden_tokens)
    result = accdump.compare(tmp_path / "golden", tmp_path / "bf16", device="cpu")
    flipped = [p for p in result.pairs if p.golden.dtype == "int64" and p.verdict != Verdict.PASS]
    d = result.first_divergence
    if not flipped:
        assert d is None and result.exit_code == 0, result.verdict_line()
        return
    assert d is not None and d.pair is flipped[0], result.verdict_line()
    assert d.pair.target.name.endswith(".mlp.gate") and d.pair.target.role == Role.OUTPUT
    assert d.pair.note.startswith("integer statistics differ (")
    assert not any(p.failing for p in result.pairs[: result.pairs.index(d.pair)])
