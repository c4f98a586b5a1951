"""The recorder: what it captures (names, call indices, keys, steps, tokens), its filters, the op
level, hash mode, and that recording never changes what the model computes."""

from __future__ import annotations

import dataclasses
import re
import types
from collections import Counter, defaultdict

import pytest
import torch
from torch import nn

import accdump
from accdump import ops
from accdump.store import Role

SEED = 1234


# --- models -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Pair:
    a: torch.Tensor
    b: tuple


class Nested(nn.Module):
    def forward(self, x):
        return {"first": x + 1, "pair": (x * 2, [x - 1])}, Pair(a=x * 3, b=(x, None))


class Scaled(nn.Module):
    def forward(self, x, *, scale, extra=None):
        return x * scale + extra["shift"]


class Net(nn.Module):
    """fc1 -> act -> fc2 -> act (one module twice) -> nest (nested outputs) -> scaled (kwargs) -> head."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 8)
        self.nest = Nested()
        self.scaled = Scaled()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.act(self.fc1(x))
        h = self.act(self.fc2(h))
        d, p = self.nest(h)
        h = self.scaled(d["first"] + p.a, scale=torch.full((8,), 0.5), extra={"shift": torch.ones(8)})
        return self.head(h)


@pytest.fixture
def net() -> Net:
    torch.manual_seed(SEED)
    return Net().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 4, generator=torch.Generator().manual_seed(SEED))


@pytest.fixture(scope="module")
def llama():
    """A tiny random Llama (no download), a prompt, and its greedy generation and logits."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(SEED)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        logits = model(ids).logits
    return model, ids, generated, logits


def _generate(model, ids):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)


def _keys(dump, step=None) -> list[tuple]:
    return [(r.step, r.name, r.call, r.role, r.arg) for r in dump.records(step=step)]


# --- module level -----------------------------------------------------------------------------


def test_module_level_records_every_module_with_its_path(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", mode="tensor") as rec:
        y = net(x)
    assert rec.error is None
    dump = accdump.load(tmp_path / "d")
    recs = list(dump.records())
    assert [r.order for r in recs] == list(range(len(recs)))
    assert {r.name for r in recs} == {"", "fc1", "act", "fc2", "nest", "scaled", "head"}
    kinds = {r.name: r.kind for r in recs}
    assert kinds == {
        "": "Net",
        "fc1": "Linear",
        "act": "ReLU",
        "fc2": "Linear",
        "nest": "Nested",
        "scaled": "Scaled",
        "head": "Linear",
    }
    # execution order: the root's input first, every module's input before its output, the root's output last
    flow = [(r.name, r.call, r.role) for r in recs if r.arg == "0" or r.name == "nest"]
    i, o = Role.INPUT, Role.OUTPUT
    assert flow[:7] == [
        ("", 0, i),
        ("fc1", 0, i),
        ("fc1", 0, o),
        ("act", 0, i),
        ("act", 0, o),
        ("fc2", 0, i),
        ("fc2", 0, o),
    ]
    assert flow[-1] == ("", 0, o)
    by_key = {(r.name, r.call, r.role, r.arg): r for r in recs}
    with torch.no_grad():
        assert torch.equal(dump.tensor(by_key[("", 0, i, "0")]), x)
        assert torch.equal(dump.tensor(by_key[("fc1", 0, o, "0")]), net.fc1(x))
        assert torch.equal(dump.tensor(by_key[("head", 0, o, "0")]), y)
        assert torch.equal(dump.tensor(by_key[("", 0, o, "0")]), y)


def test_call_index_when_a_module_runs_twice_in_one_forward(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", mode="tensor"):
        net(x)
    dump = accdump.load(tmp_path / "d")
    acts = {(r.call, r.role): r for r in dump.records(name="act")}
    assert set(acts) == {(0, Role.INPUT), (0, Role.OUTPUT), (1, Role.INPUT), (1, Role.OUTPUT)}
    fc2_out = next(r for r in dump.records(name="fc2", role=Role.OUTPUT))
    assert torch.equal(dump.tensor(acts[(1, Role.INPUT)]), dump.tensor(fc2_out))
    assert torch.equal(dump.tensor(acts[(1, Role.OUTPUT)]), torch.relu(dump.tensor(fc2_out)))
    assert all(r.call == 0 for r in dump.records() if r.name != "act")
    keys = [r.key for r in dump.records()]
    assert len(keys) == len(set(keys)), "two records share a (rank, step, name, call, role, arg) key"


def test_nested_outputs_and_keyword_inputs_get_keys(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", mode="tensor"):
        net(x)
    dump = accdump.load(tmp_path / "d")
    outs = {r.arg: dump.tensor(r) for r in dump.records(name="nest", role=Role.OUTPUT)}
    assert list(outs) == ["0.first", "0.pair.0", "0.pair.1.0", "1.a", "1.b.0"]
    (nest_in,) = [dump.tensor(r) for r in dump.records(name="nest", role=Role.INPUT)]
    for key, fn in {
        "0.first": lambda h: h + 1,
        "0.pair.0": lambda h: h * 2,
        "0.pair.1.0": lambda h: h - 1,
        "1.a": lambda h: h * 3,
        "1.b.0": lambda h: h,
    }.items():
        assert torch.equal(outs[key], fn(nest_in)), key
    ins = {r.arg: dump.tensor(r) for r in dump.records(name="scaled", role=Role.INPUT)}
    assert list(ins) == ["0", "scale", "extra.shift"]
    assert torch.equal(ins["scale"], torch.full((8,), 0.5)) and torch.equal(ins["extra.shift"], torch.ones(8))


def test_each_top_level_call_is_one_step(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", mode="tensor") as rec:
        for i in range(3):
            net(x + i)
    assert rec.steps_written == [0, 1, 2]
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [0, 1, 2]
    per_step = [_keys(dump, s) for s in range(3)]
    assert [[k[1:] for k in keys] for keys in per_step[1:]] == [[k[1:] for k in per_step[0]]] * 2
    for s in range(3):
        (root_in,) = [r for r in dump.records(step=s, name="", role=Role.INPUT)]
        assert torch.equal(dump.tensor(root_in), x + s)
        assert [r.order for r in dump.records(step=s)] == list(range(len(per_step[0])))


def test_llama_generate_records_one_step_per_forward_with_its_tokens(tmp_path, llama):
    model, ids, generated, _ = llama
    with accdump.record(model, tmp_path / "d", mode="tensor", include=["lm_head"]) as rec:
        out = _generate(model, ids)
    assert torch.equal(out, generated)
    dump = accdump.load(tmp_path / "d")
    # max_new_tokens=3 runs the model 3 times: the prefill (which yields token 1) and 2 decode steps;
    # the third new token comes from the last step's logits and is never fed back.
    assert dump.steps() == [0, 1, 2] and rec.steps_written == [0, 1, 2]
    tokens = [list(dump.records(step=s, role=Role.TOKENS)) for s in range(3)]
    assert [len(t) for t in tokens] == [1, 1, 1]
    stored = [dump.tensor(t[0]) for t in tokens]
    assert all(t.dtype == torch.int64 for t in stored)
    assert torch.equal(stored[0], ids)
    assert torch.equal(torch.cat(stored, dim=1), generated[:, :-1])
    # each step's logits pick the token that follows it
    prompt = ids.shape[1]
    for s in range(3):
        (logits,) = [dump.tensor(r) for r in dump.records(step=s, name="lm_head", role=Role.OUTPUT)]
        assert int(logits[0, -1].argmax()) == int(generated[0, prompt + s])


def test_tokens_are_stored_even_in_stats_mode(tmp_path, llama):
    model, ids, generated, _ = llama
    with accdump.record(model, tmp_path / "d", mode="stats"):
        _generate(model, ids)
    dump = accdump.load(tmp_path / "d")
    toks = list(dump.records(role=Role.TOKENS))
    assert [t.step for t in toks] == [0, 1, 2]
    assert torch.equal(torch.cat([dump.tensor(t) for t in toks], dim=1), generated[:, :-1])
    assert not any(r.has_tensor for r in dump.records() if r.role != Role.TOKENS)


def test_manual_steps(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", auto_step=False, mode="tensor") as rec:
        net(x)
        net(x + 1)
        rec.step()
        net(x + 2)
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [0, 1]
    roots = [(r.step, r.call, dump.tensor(r)) for r in dump.records(name="", role=Role.INPUT)]
    assert [(s, c) for s, c, _ in roots] == [(0, 0), (0, 1), (1, 0)]
    for (_, _, t), want in zip(roots, [x, x + 1, x + 2], strict=True):
        assert torch.equal(t, want)
    assert sorted({r.call for r in dump.records(step=0, name="act")}) == [0, 1, 2, 3]


def test_probe_inside_a_forward_belongs_to_its_step(tmp_path, x):
    class Probing(nn.Module):
        def forward(self, h):
            accdump.probe("inside", h)
            accdump.probe("inside", h * 2)
            return h + 1

    model = Probing()
    with accdump.record(model, tmp_path / "d", mode="tensor"):
        model(x)
        model(x + 10)
    dump = accdump.load(tmp_path / "d")
    probes = [(r.step, r.call, dump.tensor(r)) for r in dump.records(role=Role.PROBE)]
    assert [(s, c) for s, c, _ in probes] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (_, _, t), want in zip(probes, [x, x * 2, x + 10, (x + 10) * 2], strict=True):
        assert torch.equal(t, want)
    assert all(r.name == "inside" and r.kind == "probe" for r in dump.records(role=Role.PROBE))


# --- filters ----------------------------------------------------------------------------------


def _names_roles(dump) -> set[tuple[str, Role]]:
    return {(r.name, r.role) for r in dump.records()}


def test_include_and_exclude_globs(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", include=["fc*", "a?t"], exclude="fc2"):
        net(x)
    dump = accdump.load(tmp_path / "d")
    assert {r.name for r in dump.records()} == {"fc1", "act"}


def test_module_types_filter(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", module_types=["Linear"]):
        net(x)
    dump = accdump.load(tmp_path / "d")
    assert {r.name for r in dump.records()} == {"fc1", "fc2", "head"}
    assert {r.kind for r in dump.records()} == {"Linear"}


def test_steps_filter(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", steps="0,2", mode="tensor") as rec:
        for i in range(4):
            net(x + i)
    assert rec.steps_written == [0, 2]
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [0, 2]
    (root_in,) = list(dump.records(step=2, name="", role=Role.INPUT))
    assert torch.equal(dump.tensor(root_in), x + 2)  # step numbers still count every call


def test_step_ranges(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", steps="1,3-4"):
        for i in range(6):
            net(x + i)
    assert accdump.load(tmp_path / "d").steps() == [1, 3, 4]


def test_roles_filter(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", roles=("output",)):
        net(x)
    dump = accdump.load(tmp_path / "d")
    assert {r.role for r in dump.records()} == {Role.OUTPUT}
    assert {r.name for r in dump.records()} == {"", "fc1", "act", "fc2", "nest", "scaled", "head"}


def test_max_tensor_bytes_keeps_statistics_but_drops_the_tensor(tmp_path, net, x):
    limit = 2 * 4 * 4  # an fp32 [2, 4] tensor fits exactly; [2, 8] does not
    with torch.no_grad(), accdump.record(net, tmp_path / "d", mode="tensor", max_tensor_bytes=limit):
        net(x)
    dump = accdump.load(tmp_path / "d")
    kept, dropped = [], []
    for r in dump.records():
        nbytes = 4 * (r.shape[0] * r.shape[1] if len(r.shape) == 2 else r.shape[0])
        (kept if nbytes <= limit else dropped).append(r)
        assert r.stats.count == nbytes // 4  # statistics always
    assert kept and dropped
    assert all(r.has_tensor for r in kept) and not any(r.has_tensor for r in dropped)
    fc1_out = next(r for r in dropped if r.name == "fc1" and r.role == Role.OUTPUT)
    with torch.no_grad():
        want = ops.tensor_stats(net.fc1(x))
    assert fc1_out.stats.max == want.max and fc1_out.stats.sum == pytest.approx(want.sum, rel=1e-12)
    with pytest.raises(accdump.DumpFormatError):
        dump.tensor(fc1_out)


def test_op_names_filter(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", level="op", op_names=["addmm", "relu"]):
        net(x)
    dump = accdump.load(tmp_path / "d")
    assert {r.kind for r in dump.records()} == {"addmm", "relu"}
    assert {r.name for r in dump.records(role=Role.OUTPUT)} == {
        "fc1/addmm.0",
        "fc2/addmm.0",
        "head/addmm.0",
        "act/relu.0",
    }


def test_op_records_of_a_module_called_twice_have_distinct_keys(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", level="op", mode="tensor"):
        net(x)
    dump = accdump.load(tmp_path / "d")
    relu_out = [r for r in dump.records(role=Role.OUTPUT) if r.kind == "relu"]
    assert len(relu_out) == 2  # act runs twice
    keys = [r.key for r in dump.records()]
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes, f"{len(dupes)} keys recorded more than once, e.g. {dupes[0]}"


def test_bad_options_are_refused(tmp_path):
    for kwargs in (
        {"mode": "bogus"},
        {"level": "bogus"},
        {"steps": "3-1"},
        {"steps": "a"},
        {"roles": ("bogus",)},
    ):
        with pytest.raises(accdump.AccdumpError):
            accdump.record(None, tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


# --- parameters, global hooks -----------------------------------------------------------------


def test_parameters_are_recorded_once_at_step_minus_one(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", mode="tensor", params=True):
        net(x)
        net(x)
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [-1, 0, 1]
    params = list(dump.records(role=Role.PARAMETER))
    assert {r.step for r in params} == {-1}
    assert not [r for r in dump.records(step=-1) if r.role != Role.PARAMETER]
    got = Counter(f"{r.name}.{r.arg}" for r in params)
    assert got == Counter(name for name, _ in net.named_parameters())  # each exactly once
    want = dict(net.named_parameters())
    for r in params:
        assert torch.equal(dump.tensor(r), want[f"{r.name}.{r.arg}"].detach())


def test_order_counts_from_zero_in_every_step_with_parameters_recorded(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", params=True):
        net(x)
        net(x)
    dump = accdump.load(tmp_path / "d")
    for step in dump.steps():
        orders = [r.order for r in dump.records(step=step)]
        assert orders == list(range(len(orders))), step


def test_without_a_model_global_hooks_record_the_same(tmp_path, net, x):
    with torch.no_grad():
        with accdump.record(net, tmp_path / "with_model", mode="tensor"):
            net(x)
            net(x + 1)
        with accdump.record(None, tmp_path / "global", mode="tensor"):
            net(x)
            net(x + 1)
    a, b = accdump.load(tmp_path / "with_model"), accdump.load(tmp_path / "global")
    assert b.steps() == [0, 1]
    assert _keys(b) == _keys(a)
    for ra, rb in zip(a.records(), b.records(), strict=True):
        assert torch.equal(a.tensor(ra), b.tensor(rb)), ra.key


def test_without_a_model_the_first_step_has_the_root_keyword_inputs(tmp_path, llama):
    model, ids, generated, _ = llama
    with accdump.record(model, tmp_path / "with_model"):
        _generate(model, ids)
    with accdump.record(None, tmp_path / "global"):
        _generate(model, ids)
    a, b = accdump.load(tmp_path / "with_model"), accdump.load(tmp_path / "global")
    assert b.steps() == a.steps() == [0, 1, 2]
    for s in a.steps():
        assert sorted(_keys(b, s)) == sorted(_keys(a, s)), f"step {s}"


def test_global_hooks_name_a_second_root(tmp_path, x):
    torch.manual_seed(SEED)
    first, second = nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad(), accdump.record(None, tmp_path / "d"):
        first(x)
        second(x)
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [0, 1]
    names1 = {r.name for r in dump.records(step=1)}
    assert len(names1) == 2 and "" not in names1  # the second root does not pose as the first
    assert {r.name for r in dump.records(step=0)} == {""}


# --- op level ---------------------------------------------------------------------------------


_OP_NAME = re.compile(r"^(?P<module>[\w.]*)/(?P<op>\w+)\.(?P<index>\d+)$")


def test_op_level_names_are_module_path_slash_op_index(tmp_path, llama):
    model, ids, generated, _ = llama
    with accdump.record(model, tmp_path / "d", level="op"):
        out = _generate(model, ids)
    assert torch.equal(out, generated)
    dump = accdump.load(tmp_path / "d")
    recs = [r for r in dump.records(step=0) if r.role != Role.TOKENS]
    names = {r.name for r in recs}
    bad = [n for n in names if not _OP_NAME.match(n)]
    assert not bad, f"not 'module/op.index': {bad[:5]}"
    assert "model.layers.0.self_attn.q_proj/mm.0" in names
    assert "lm_head/mm.0" in names
    assert any(re.fullmatch(r"model\.layers\.0\.self_attn/_?softmax\.0", n) for n in names)
    for r in recs:  # the kind is the ATen op, matching the name
        assert _OP_NAME.match(r.name)["op"] == r.kind
    # op indices count each op per module call from 0, without gaps
    seen = defaultdict(set)
    for n in names:
        m = _OP_NAME.match(n)
        seen[(m["module"], m["op"])].add(int(m["index"]))
    assert all(idx == set(range(len(idx))) for idx in seen.values())
    # inputs and outputs of an op are both there
    assert {r.role for r in dump.records(step=0, name="lm_head/mm.0")} == {Role.INPUT, Role.OUTPUT}


def test_level_all_records_modules_and_ops(tmp_path, net, x):
    with torch.no_grad(), accdump.record(net, tmp_path / "d", level="all", mode="tensor"):
        y = net(x)
    dump = accdump.load(tmp_path / "d")
    names = {r.name for r in dump.records()}
    assert {"", "fc1", "act", "head"} <= names
    assert {"fc1/addmm.0", "act/relu.0", "head/addmm.0"} <= names
    (op_out,) = list(dump.records(name="head/addmm.0", role=Role.OUTPUT))
    (mod_out,) = list(dump.records(name="head", role=Role.OUTPUT))
    assert torch.equal(dump.tensor(op_out), y) and torch.equal(dump.tensor(mod_out), y)
    assert op_out.order < mod_out.order  # the op ran inside the module call


def test_captures_are_taken_before_in_place_ops(tmp_path, x, device):
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True)).to(device)
    with torch.no_grad(), accdump.record(model, tmp_path / "d", level="all", mode="tensor"):
        model(x.to(device))
    dump = accdump.load(tmp_path / "d")
    for name in ("1", "1/relu_.0"):
        (inp,) = [dump.tensor(r) for r in dump.records(name=name, role=Role.INPUT)]
        (out,) = [dump.tensor(r) for r in dump.records(name=name, role=Role.OUTPUT)]
        assert (inp < 0).any(), name
        assert torch.equal(out, inp.clamp_min(0)), name


class _MutatesChildOutput(nn.Module):
    """Changes a child's output in place before passing it on: the child's output and the next
    module's input are one tensor object with two different values."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 8)
        self.after = nn.Identity()

    def forward(self, x):
        h = self.inner(x)
        h.add_(1)
        h = self.after(h)
        h.mul_(-2)
        return h


def _stats_by_key(path) -> dict[tuple[str, Role], ops.TensorStats]:
    return {(r.name, r.role): r.stats for r in accdump.load(path).records() if r.arg == "0"}


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_a_tensor_changed_in_place_after_capture_keeps_its_numbers_at_capture(tmp_path, x, device, grad_mode):
    torch.manual_seed(SEED)
    model = _MutatesChildOutput().to(device)
    x = x.to(device)
    with torch.no_grad():
        inner_out = model.inner(x)
    # inference tensors have no version counter: each capture must measure anew
    with getattr(torch, grad_mode)(), accdump.record(model, tmp_path / "d") as rec:
        y = model(x)
    assert rec.error is None and not rec.skipped
    got = _stats_by_key(tmp_path / "d")
    i, o = Role.INPUT, Role.OUTPUT
    want = {
        ("inner", o): inner_out,
        ("after", i): inner_out + 1,
        ("after", o): inner_out + 1,
        ("", o): y,
    }
    assert torch.equal(y, (inner_out + 1) * -2)
    for key, value in want.items():
        assert got[key] == ops.tensor_stats(value), key


def test_op_level_has_one_step_per_forward(tmp_path, llama):
    model, ids, _, _ = llama
    with accdump.record(model, tmp_path / "module"):
        _generate(model, ids)
    with accdump.record(model, tmp_path / "op", level="op"):
        _generate(model, ids)
    assert accdump.load(tmp_path / "op").steps() == accdump.load(tmp_path / "module").steps() == [0, 1, 2]


# --- hash mode --------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def _hashes(path) -> dict[tuple, str]:
    return {(r.step, r.name, r.call, r.role, r.arg): r.hash for r in accdump.load(path).records()}


def test_hash_mode_is_deterministic_and_sees_one_ulp(tmp_path):
    model = _mlp()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(SEED))
    runs = []
    for i in range(2):
        with torch.no_grad(), accdump.record(model, tmp_path / f"run{i}", mode="hash", params=True):
            model(x)
        runs.append(_hashes(tmp_path / f"run{i}"))
    assert runs[0] == runs[1]
    assert all(re.fullmatch(r"[0-9a-f]{32}", h) for h in runs[0].values())
    assert len(set(runs[0].values())) >= 10  # different tensors, different hashes

    # the first weight of layer 2 whose one-ulp change reaches the output
    with torch.no_grad():
        y0, w = model(x), model[2].weight.view(-1)
        for i in range(w.numel()):
            old = w[i].clone()
            w[i] = torch.nextafter(old, torch.tensor(float("inf")))
            if not torch.equal(model(x), y0):
                break
            w[i] = old
        else:
            pytest.fail("no one-ulp weight change reached the output")
        with accdump.record(model, tmp_path / "changed", mode="hash", params=True):
            model(x)
    changed = _hashes(tmp_path / "changed")
    assert changed.keys() == runs[0].keys()
    differs = {k[1:] for k in changed if changed[k] != runs[0][k]}
    p, o, i_ = Role.PARAMETER, Role.OUTPUT, Role.INPUT
    assert ("2", 0, p, "weight") in differs
    assert ("2", 0, o, "0") in differs and ("", 0, o, "0") in differs
    # everything before layer 2 is untouched
    assert not differs & {
        ("0", 0, p, "weight"),
        ("0", 0, o, "0"),
        ("1", 0, o, "0"),
        ("2", 0, i_, "0"),
        ("", 0, i_, "0"),
        ("2", 0, p, "bias"),
    }


def test_hash_depends_on_values_not_layout(tmp_path):
    t = torch.randn(6, 5, generator=torch.Generator().manual_seed(SEED))
    other_layout = t.t().contiguous().t()
    assert other_layout.stride() != t.stride()
    bumped = t.clone()
    bumped[3, 2] = torch.nextafter(bumped[3, 2], torch.tensor(float("inf")))
    with accdump.record(None, tmp_path / "d", mode="hash"):
        for name, v in {
            "t": t,
            "layout": other_layout,
            "clone": t.clone(),
            "bumped": bumped,
            "zero": torch.zeros(3),
            "negzero": -torch.zeros(3),
        }.items():
            accdump.probe(name, v)
    h = {r.name: r.hash for r in accdump.load(tmp_path / "d").records()}
    assert h["t"] == h["layout"] == h["clone"]
    assert h["bumped"] != h["t"]
    assert h["zero"] != h["negzero"]  # bit-exact: -0.0 is not 0.0


# --- the observer effect ----------------------------------------------------------------------


@pytest.mark.parametrize("level", ["module", "op", "all"])
@pytest.mark.parametrize("mode", ["stats", "tensor", "hash"])
def test_recording_does_not_change_the_model_outputs(tmp_path, llama, mode, level):
    model, ids, generated, logits = llama
    with accdump.record(model, tmp_path / "d", mode=mode, level=level) as rec:
        out = _generate(model, ids)
        with torch.no_grad():
            got_logits = model(ids).logits
    assert rec.error is None
    assert torch.equal(out, generated)
    assert torch.equal(got_logits, logits)
    assert len(accdump.load(tmp_path / "d")) > 0


def test_recording_does_not_change_random_numbers(tmp_path, x):
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 4)).train()

    def run():
        torch.manual_seed(7)
        return [model(x) for _ in range(3)]

    plain = run()
    with accdump.record(model, tmp_path / "d", mode="hash", level="all"):
        recorded = run()
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded, strict=True))
    assert torch.equal(run()[0], plain[0])  # and nothing is left installed afterwards


def test_recording_does_not_change_gradients(tmp_path, x):
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))

    def grads():
        model.zero_grad()
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    for level in ("module", "all"):
        with accdump.record(model, tmp_path / level, mode="tensor", level=level) as rec:
            recorded = grads()
        assert rec.error is None
        assert all(torch.equal(a, b) for a, b in zip(plain, recorded, strict=True)), level


@pytest.mark.cuda
@pytest.mark.parametrize(("mode", "level"), [("stats", "module"), ("tensor", "all"), ("hash", "op")])
def test_cuda_recording_does_not_change_the_model_outputs(tmp_path, llama, mode, level):
    import copy

    model, ids, generated, _ = llama
    model, ids = copy.deepcopy(model).cuda(), ids.cuda()
    with torch.no_grad():
        plain_tokens, plain_logits = _generate(model, ids), model(ids).logits
    with accdump.record(model, tmp_path / "d", mode=mode, level=level) as rec:
        tokens = _generate(model, ids)
        with torch.no_grad():
            logits = model(ids).logits
    assert rec.error is None
    assert torch.equal(tokens, plain_tokens) and torch.equal(logits, plain_logits)
    dump = accdump.load(tmp_path / "d")
    toks = [dump.tensor(r) for r in dump.records(role=Role.TOKENS) if r.step <= 2]
    assert torch.equal(torch.cat(toks[:3], dim=1), plain_tokens[:, :-1].cpu())
    assert {r.device for r in dump.records(name="model.layers.0*")} == {"cuda:0"}


# --- ranks, unsupported tensors ---------------------------------------------------------------


def test_rank_from_the_environment_and_the_ranks_filter(tmp_path, monkeypatch, net, x):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with torch.no_grad(), accdump.record(net, tmp_path / "d"):
        net(x)
    dump = accdump.load(tmp_path / "d")
    assert dump.ranks == [2] and (tmp_path / "d" / "rank00002").is_dir()
    assert {r.rank for r in dump.records()} == {2}
    assert (int(dump.meta()["rank"]), int(dump.meta()["world_size"])) == (2, 4)

    with torch.no_grad(), accdump.record(net, tmp_path / "other_ranks", ranks="0-1,3") as rec:
        y = net(x)
        accdump.probe("p", y)
    assert rec.steps_written == [] and not (tmp_path / "other_ranks").exists()


def test_unsupported_tensors_are_skipped_and_reported(tmp_path, capfd):
    with accdump.record(None, tmp_path / "d", mode="tensor") as rec:
        accdump.probe("complex", torch.ones(3, dtype=torch.complex64))
        accdump.probe("ok", torch.ones(3))
        accdump.probe("sparse", torch.eye(3).to_sparse())
    assert rec.error is None
    assert [r.name for r in accdump.load(tmp_path / "d").records()] == ["ok"]
    err = capfd.readouterr().err
    assert "complex64" in err and "sparse" in err.lower()


# --- the recorder's lifecycle ------------------------------------------------------------------


def test_probe_outside_a_recorder_is_a_no_op(tmp_path):
    t = torch.arange(4.0)
    assert accdump.probe("nobody listens", t) is None
    assert torch.equal(t, torch.arange(4.0))
    with accdump.record(None, tmp_path / "d"):
        accdump.probe("inside", t)
    accdump.probe("after stop", t)
    names = [r.name for r in accdump.load(tmp_path / "d").records()]
    assert names == ["inside"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_record_can_be_called_again_in_one_process(tmp_path):
    for i in range(3):
        assert callable(accdump.record) and not isinstance(accdump.record, types.ModuleType)
        with accdump.record(None, tmp_path / f"d{i}"):
            accdump.probe("p", torch.full((2,), float(i)))
        assert accdump.load(tmp_path / f"d{i}").steps() == [0]


def test_an_exception_in_forward_stops_the_recorder_cleanly(tmp_path, net, x):
    class Boom(RuntimeError):
        pass

    def explode(module, args, output):
        raise Boom("model failed")

    handle = net.fc2.register_forward_hook(explode)
    try:
        with pytest.raises(Boom), torch.no_grad(), accdump.record(net, tmp_path / "d", mode="tensor"):
            net(x)
    finally:
        handle.remove()
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [0]
    assert ("fc1", Role.OUTPUT) in _names_roles(dump)  # what ran before the failure is kept
    n = len(dump)
    with torch.no_grad():
        net(x)  # hooks are gone: nothing more is recorded
    assert len(accdump.load(tmp_path / "d")) == n
    with accdump.record(None, tmp_path / "next"):  # and the recorder slot is free
        accdump.probe("p", torch.ones(1))
