"""compare() on a tiny decoder run twice, golden and with ONE planted bug: it must name the right place.

The model (tests/diff/_tiny.py) is embedding -> 4 x [RMSNorm, attention (rotary, scale, causal
softmax computed functionally in Attention.forward), o_proj, residual add, RMSNorm, MLP up/down,
residual add] -> norm -> lm_head, on CPU with fixed seeds.
"""

from __future__ import annotations

import math

import pytest
import torch

import accdump
from accdump.diff import RenameRules, Verdict, compare
from accdump.store import Role

from ._tiny import (
    generate,
    golden_model,
    prompt,
    record_forward,
    record_generate,
    renamed_copy,
    target_copy,
)

MODES = ["stats", "tensor"]


@pytest.fixture(scope="module")
def golden():
    return golden_model()


@pytest.fixture(scope="module")
def ids():
    return prompt()


@pytest.fixture(scope="module")
def golden_dump(tmp_path_factory, golden, ids):
    """The golden forward recorded once per (mode, level)."""
    cache: dict[tuple[str, str], str] = {}

    def get(mode: str, level: str = "module") -> str:
        if (mode, level) not in cache:
            path = tmp_path_factory.mktemp(f"golden_{mode}_{level}")
            record_forward(golden, path, ids, mode=mode, level=level)
            cache[mode, level] = str(path)
        return cache[mode, level]

    return get


@pytest.fixture(scope="module")
def golden_gen(tmp_path_factory, golden, ids):
    """The golden generation (prefill + 4 decode steps with a KV cache), once per mode."""
    cache: dict[str, tuple[str, list[int]]] = {}

    def get(mode: str) -> tuple[str, list[int]]:
        if mode not in cache:
            path = tmp_path_factory.mktemp(f"golden_gen_{mode}")
            tokens = record_generate(golden, path, ids, mode=mode)
            cache[mode] = (str(path), tokens)
        return cache[mode]

    return get


def run_target(tmp_path, model, ids, mode="stats", level="module") -> str:
    path = tmp_path / f"target_{mode}_{level}"
    record_forward(model, path, ids, mode=mode, level=level)
    return str(path)


def failing_before(result, pair) -> list:
    """Pairs that fail and come before `pair` in execution order."""
    i = result.pairs.index(pair)
    return [p for p in result.pairs[:i] if p.failing]


def pair_of(result, name, role=Role.OUTPUT, step=0):
    found = [
        p for p in result.pairs if p.target.name == name and p.target.role == role and p.target.step == step
    ]
    assert found, f"no pair {name} {role.name} at step {step}"
    return found[0]


# --- planted bugs ------------------------------------------------------------------------------


def perturb_weight(model, rel: float = 1.0, layer: int = 2, mlp: str = "mlp"):
    """Noise of `rel` times the weight's own spread on layers.{layer}.mlp.down_proj (a bad load)."""
    w = getattr(model.layer_list[layer], mlp).down_proj.weight
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        w.add_(rel * w.std() * torch.randn(w.shape, generator=g))
    return model


# 1. a perturbed weight in one Linear


@pytest.mark.parametrize("mode", MODES)
def test_perturbed_weight_diverges_at_that_linear(golden, ids, golden_dump, tmp_path, mode):
    tgt = perturb_weight(target_copy(golden))
    res = compare(golden_dump(mode), run_target(tmp_path, tgt, ids, mode))
    d = res.first_divergence
    assert d is not None and res.exit_code == 1
    assert d.pair.target.name == "layers.2.mlp.down_proj"
    assert d.pair.target.role == Role.OUTPUT and d.pair.target.step == 0
    assert d.attributed_to == "layers.2.mlp.down_proj"
    assert d.pair.verdict >= Verdict.BROKEN
    assert d.inputs and not any(p.failing for p in d.inputs)
    assert failing_before(res, d.pair) == []
    if mode == "tensor":  # statistics of the logits are too coarse to see it there
        assert res.propagates is True  # the model's output is wrong too
    assert "layers.2.mlp.down_proj" in res.verdict_line()


# 2. a wrong attention scale (1/d instead of 1/sqrt(d)), computed inside the attention's forward


@pytest.mark.parametrize("mode", MODES)
def test_wrong_attention_scale_module_level(golden, ids, golden_dump, tmp_path, mode):
    tgt = target_copy(golden)
    tgt.layer_list[1].attn.bug_scale = True
    res = compare(golden_dump(mode), run_target(tmp_path, tgt, ids, mode))
    d = res.first_divergence
    assert d is not None
    # o_proj's input fails while the q/k/v projections pass: the error is in the attention code
    assert d.pair.target.name == "layers.1.attn.o_proj" and d.pair.target.role == Role.INPUT
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert not pair_of(res, f"layers.1.attn.{proj}").failing
    assert d.attributed_to == "layers.1.attn"
    assert failing_before(res, d.pair) == []


@pytest.mark.parametrize("mode", MODES)
def test_wrong_attention_scale_op_level(golden, ids, golden_dump, tmp_path, mode):
    tgt = target_copy(golden)
    tgt.layer_list[1].attn.bug_scale = True
    res = compare(golden_dump(mode, "op"), run_target(tmp_path, tgt, ids, mode, "op"))
    d = res.first_divergence
    assert d is not None
    name = d.pair.target.name
    assert name.startswith("layers.1.attn/"), name
    op = name.split("/", 1)[1].rsplit(".", 1)[0]
    assert op in {"mul", "div", "_softmax", "softmax", "bmm", "matmul"}, name
    assert d.pair.target.role == Role.OUTPUT
    assert not any(p.failing for p in d.inputs)
    assert d.attributed_to.startswith("layers.1.attn")


# 3. the residual added twice in layer 3


@pytest.mark.parametrize("mode", MODES)
def test_double_residual_diverges_in_layer_3(golden, ids, golden_dump, tmp_path, mode):
    tgt = target_copy(golden)
    tgt.layer_list[3].bug_double_residual = True
    res = compare(golden_dump(mode), run_target(tmp_path, tgt, ids, mode))
    d = res.first_divergence
    assert d is not None
    assert d.pair.target.name.startswith("layers.3"), d.pair.target.name
    assert d.attributed_to == "layers.3"  # the code between the attention and norm2, inside layers.3
    assert failing_before(res, d.pair) == []
    # the residual stream is right up to layer 2, wrong from layer 3 on
    traj = {t["layer"]: t["verdict"] for t in res.trajectory if t["step"] == 0}
    assert sorted(traj) == [0, 1, 2, 3]
    assert [traj[i] for i in range(3)] == ["pass"] * 3
    assert Verdict[traj[3].upper()] >= Verdict.BROKEN


def test_double_residual_op_level(golden, ids, golden_dump, tmp_path):
    tgt = target_copy(golden)
    tgt.layer_list[3].bug_double_residual = True
    res = compare(golden_dump("tensor", "op"), run_target(tmp_path, tgt, ids, "tensor", "op"))
    d = res.first_divergence
    assert d is not None
    assert d.pair.target.name.startswith("layers.3/"), d.pair.target.name
    assert d.attributed_to == "layers.3"


# 4. a wrong rotary embedding in layer 2 (queries rotated one position ahead)
# (offsetting the positions of both queries and keys would be invisible: RoPE is relative)


def test_wrong_rotary_module_level_tensor(golden, ids, golden_dump, tmp_path):
    tgt = target_copy(golden)
    tgt.layer_list[2].attn.bug_q_pos_offset = 1
    res = compare(golden_dump("tensor"), run_target(tmp_path, tgt, ids, "tensor"))
    d = res.first_divergence
    assert d is not None
    assert d.pair.target.name == "layers.2.attn.o_proj" and d.pair.target.role == Role.INPUT
    assert d.attributed_to == "layers.2.attn"
    assert failing_before(res, d.pair) == []


def test_wrong_rotary_module_level_stats(golden, ids, golden_dump, tmp_path):
    tgt = target_copy(golden)
    tgt.layer_list[2].attn.bug_q_pos_offset = 1
    res = compare(golden_dump("stats"), run_target(tmp_path, tgt, ids, "stats"))
    d = res.first_divergence
    assert d is not None
    assert d.attributed_to.startswith("layers.2.attn"), d.attributed_to
    assert failing_before(res, d.pair) == []


def test_wrong_rotary_op_level(golden, ids, golden_dump, tmp_path):
    tgt = target_copy(golden)
    tgt.layer_list[2].attn.bug_q_pos_offset = 1
    res = compare(golden_dump("tensor", "op"), run_target(tmp_path, tgt, ids, "tensor", "op"))
    d = res.first_divergence
    assert d is not None
    assert d.pair.target.name.startswith("layers.2.attn/"), d.pair.target.name
    assert d.attributed_to.startswith("layers.2.attn")


# 5. KV-cache corruption before decode step 2


@pytest.mark.parametrize("mode", MODES)
def test_kv_cache_corruption_found_at_its_step(golden, ids, golden_gen, tmp_path, mode):
    g_path, g_tokens = golden_gen(mode)
    t_path = tmp_path / "target_gen"
    t_tokens = record_generate(target_copy(golden), t_path, ids, mode=mode, corrupt_before=2)
    assert len(g_tokens) == len(t_tokens) == 5
    res = compare(g_path, t_path)
    assert "5 common steps" in res.steps_note
    d = res.first_divergence
    assert d is not None
    assert d.pair.target.step == 2
    assert d.attributed_to == "layers.1.attn"  # the cached keys are used inside layer 1's attention
    assert not [p for p in res.pairs if p.target.step < 2 and p.failing]
    # the corruption may change later tokens, never those fed at steps 0..2
    assert res.first_token_diff is None or res.first_token_diff["step"] > 2
    assert res.exit_code == 1


# 6. a benign precision change: float32 golden, bfloat16 target, no bug


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_run_is_not_a_divergence(golden, ids, golden_dump, tmp_path, mode):
    tgt = target_copy(golden).to(torch.bfloat16)
    g_path = golden_dump(mode)
    res = compare(g_path, run_target(tmp_path, tgt, ids, mode))
    assert {p.target.dtype for p in res.pairs if p.target.role == Role.OUTPUT} >= {"bfloat16"}
    assert len(res.pairs) == sum(1 for r in accdump.load(g_path).records() if r.role != Role.TOKENS)
    assert res.only_golden == [] and res.only_target == []
    assert res.first_divergence is None, res.verdict_line()
    assert res.first_token_diff is None
    assert res.exit_code == 0
    assert res.verdict_line().startswith("OK")


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_run_is_not_a_divergence_op_level(golden, ids, golden_dump, tmp_path, mode):
    tgt = target_copy(golden).to(torch.bfloat16)
    res = compare(golden_dump(mode, "op"), run_target(tmp_path, tgt, ids, mode, "op"))
    assert res.first_divergence is None, res.verdict_line()
    assert res.exit_code == 0


# 7. a missing global scale: one Linear's output multiplied by 6


@pytest.mark.parametrize("mode", MODES)
def test_global_scale_flagged_by_norm_ratio(golden, ids, golden_dump, tmp_path, mode):
    tgt = target_copy(golden)
    with torch.no_grad():
        tgt.layer_list[1].attn.o_proj.weight.mul_(6.0)  # no bias: the output is exactly 6x
    res = compare(golden_dump(mode), run_target(tmp_path, tgt, ids, mode))
    d = res.first_divergence
    assert d is not None
    assert d.pair.target.name == "layers.1.attn.o_proj" and d.pair.target.role == Role.OUTPUT
    assert d.attributed_to == "layers.1.attn.o_proj"
    m = d.pair.metrics
    assert m.norm_ratio == pytest.approx(6.0, rel=1e-3)
    if mode == "tensor":
        assert m.cosine == pytest.approx(1.0, abs=1e-5)  # the direction is right: only norms see it
    assert d.pair.verdict >= Verdict.BROKEN
    assert failing_before(res, d.pair) == []


# --- alignment: renaming rules, one-sided records, steps, tokens --------------------------------

RULES_YAML = r"""
rename:
  - pattern: '^blocks\.(\d+)\.ffn'
    replacement: 'layers.\1.mlp'
  - pattern: '^blocks\.'
    replacement: 'layers.'
"""


@pytest.mark.parametrize("level", ["module", "op"])
def test_rename_rules_pair_differently_named_modules(golden, ids, golden_dump, tmp_path, level):
    tgt = perturb_weight(renamed_copy(golden, "blocks", "ffn"), mlp="ffn")
    t_path = run_target(tmp_path, tgt, ids, "tensor", level)
    g_path = golden_dump("tensor", level)

    # without rules (and without structural alignment) the layers do not pair
    unpaired = compare(g_path, t_path, structural=False)
    assert unpaired.only_golden and unpaired.only_target

    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES_YAML)
    rules = RenameRules.load(rules_file)
    res = compare(g_path, t_path, rules=rules)
    assert res.only_golden == [] and res.only_target == []
    assert len(res.pairs) == len(unpaired.pairs) + len(unpaired.only_target)
    assert all(rules.apply(p.target.name) == p.golden.name for p in res.pairs)
    assert not any("matched by structure" in p.note for p in res.pairs)
    if level == "module":  # structural alignment (the default) pairs them the same way without rules
        by_structure = compare(g_path, t_path)
        assert by_structure.only_golden == [] and by_structure.only_target == []
        assert all(rules.apply(p.target.name) == p.golden.name for p in by_structure.pairs)
        assert by_structure.first_divergence.pair.golden.name == "layers.2.mlp.down_proj"
    d = res.first_divergence
    assert d is not None
    if level == "module":
        assert d.pair.target.name == "blocks.2.ffn.down_proj"
        assert d.pair.golden.name == "layers.2.mlp.down_proj"
        assert d.pair.target.role == Role.OUTPUT
    else:
        assert d.pair.golden.name.startswith("layers.2.mlp.down_proj/")
        assert d.pair.target.name.startswith("blocks.2.ffn.down_proj/")


def test_a_record_only_in_the_target_is_listed_not_fatal(golden, ids, golden_dump, tmp_path):
    t_path = tmp_path / "t"
    record_forward(golden_model(taps=(0,)), t_path, ids)  # an extra Identity: layers.0.tap
    res = compare(golden_dump("stats"), t_path)
    assert {r.name for r in res.only_target} == {"layers.0.tap"}
    assert {r.role for r in res.only_target} == {Role.INPUT, Role.OUTPUT}
    assert res.only_golden == []
    assert res.first_divergence is None and res.exit_code == 0

    # and a bug is still found next to it
    t2 = tmp_path / "t2"
    record_forward(perturb_weight(golden_model(taps=(0,))), t2, ids)
    res = compare(golden_dump("stats"), t2)
    assert {r.name for r in res.only_target} == {"layers.0.tap"}
    assert res.first_divergence is not None
    assert res.first_divergence.pair.target.name == "layers.2.mlp.down_proj"


def test_records_on_each_side_only_without_structural_alignment(ids, tmp_path):
    g_path, t_path = tmp_path / "g", tmp_path / "t"
    record_forward(golden_model(taps=(1,)), g_path, ids)  # layers.1.tap only in golden
    record_forward(golden_model(taps=(0,)), t_path, ids)  # layers.0.tap only in target
    res = compare(g_path, t_path, structural=False)
    assert {r.name for r in res.only_golden} == {"layers.1.tap"}
    assert {r.name for r in res.only_target} == {"layers.0.tap"}
    assert res.first_divergence is None and res.exit_code == 0


def test_records_on_each_side_only_are_listed_not_fatal(ids, tmp_path):
    g_path, t_path = tmp_path / "g", tmp_path / "t"
    record_forward(golden_model(taps=(1,)), g_path, ids)  # layers.1.tap only in golden
    record_forward(golden_model(taps=(0,)), t_path, ids)  # layers.0.tap only in target
    res = compare(g_path, t_path)
    assert res.first_divergence is None, res.verdict_line()
    assert res.exit_code == 0
    assert {r.name for r in res.only_golden} == {"layers.1.tap"}
    assert {r.name for r in res.only_target} == {"layers.0.tap"}


def test_different_step_counts_compare_the_common_steps(golden, ids, tmp_path):
    g_path, t_path = tmp_path / "g", tmp_path / "t"
    record_forward(golden, g_path, ids, calls=3)
    record_forward(target_copy(golden), t_path, ids, calls=2)
    res = compare(g_path, t_path)
    assert {p.target.step for p in res.pairs} == {0, 1}
    assert "2 common steps" in res.steps_note
    assert "golden has 3, target 2" in res.steps_note
    assert res.only_golden == [] and res.only_target == []  # step 2 is not 'only golden'
    assert res.exit_code == 0

    t2 = tmp_path / "t2"
    record_forward(perturb_weight(target_copy(golden)), t2, ids, calls=2)
    res = compare(g_path, t2)
    assert res.first_divergence is not None and res.first_divergence.pair.target.step == 0
    assert "golden has 3, target 2" in res.steps_note


@pytest.mark.parametrize("mode", MODES)
def test_token_difference_limits_the_divergence_search(golden, ids, golden_gen, tmp_path, mode):
    g_path, g_tokens = golden_gen(mode)
    forced = (g_tokens[1] + 1) % 64
    t_path = tmp_path / "forced"
    record_generate(target_copy(golden), t_path, ids, mode=mode, force={2: forced})
    res = compare(g_path, t_path)
    tok = res.first_token_diff
    assert tok is not None
    assert tok["step"] == 2 and tok["position"] == 0
    assert tok["golden_token"] == g_tokens[1] and tok["target_token"] == forced
    # the records of steps >= 2 do differ, but they see different inputs: not a divergence
    assert any(p.failing for p in res.pairs if p.target.step >= 2)
    fed = pair_of(res, "", Role.INPUT, step=2)  # the ids fed to the model: compared exactly
    assert fed.target.dtype == "int64" and fed.verdict == Verdict.BROKEN
    assert fed.note.startswith("integer values differ" if mode == "tensor" else "integer statistics differ")
    assert not any(p.failing for p in res.pairs if p.target.step < 2)
    assert res.first_divergence is None
    assert res.exit_code == 1
    assert "tokens differ from step 2" in res.steps_note
    assert res.verdict_line().startswith("DIVERGED: generated tokens differ from step 2")


def test_token_difference_keeps_an_earlier_divergence(golden, ids, golden_gen, tmp_path):
    g_path, g_tokens = golden_gen("stats")
    t_path = tmp_path / "both"
    # KV corruption before step 1 and a different token fed at step 3: the divergence is step 1's
    tgt = target_copy(golden)
    with torch.no_grad(), accdump.record(tgt, t_path):
        generate(tgt, ids, corrupt_before=1, force={3: (g_tokens[2] + 1) % 64})
    res = compare(g_path, t_path)
    assert res.first_token_diff is not None and res.first_token_diff["step"] <= 3
    d = res.first_divergence
    assert d is not None and d.pair.target.step == 1
    assert d.attributed_to == "layers.1.attn"


def test_divergence_at_a_steps_input_does_not_cite_an_earlier_step(golden, tmp_path):
    """The root's input differs at step 1 (the caller fed something else): the explanation must not
    name a record of step 0 as the last one that passed before it."""
    x = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(3))
    g_path, t_path = tmp_path / "g", tmp_path / "t"
    for path, second in (
        (g_path, x),
        (t_path, x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))),
    ):
        mlp = target_copy(golden).layer_list[0].mlp
        with torch.no_grad(), accdump.record(mlp, path):
            mlp(x)
            mlp(second)
    res = compare(g_path, t_path)
    d = res.first_divergence
    assert d is not None
    assert d.pair.target.step == 1 and d.pair.target.name == "" and d.pair.target.role == Role.INPUT
    assert d.last_passing is None or d.last_passing.target.step == 1
    assert "between  and" not in d.explanation


def test_identical_runs_pass_everywhere(golden, ids, golden_dump, tmp_path):
    res = compare(golden_dump("tensor"), run_target(tmp_path, target_copy(golden), ids, "tensor"))
    assert res.first_divergence is None and res.first_token_diff is None and res.exit_code == 0
    assert all(p.verdict == Verdict.PASS for p in res.pairs)
    assert all(
        p.metrics.cosine is None or math.isclose(p.metrics.cosine, 1.0, abs_tol=1e-9) for p in res.pairs
    )
