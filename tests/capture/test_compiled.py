"""accdump.probe() inside torch.compile: traced as an op (no graph break), records the compiled
computation's tensors like eager does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import accdump
from accdump.store import Role


class Probed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        accdump.probe("hidden", h)
        y = self.b(h) * 2.0
        accdump.probe("pair", (y, h.sum(-1)))
        return y


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Probed().eval()


def probes(path, step=0):
    d = accdump.load(path)
    return {(r.name, r.call, r.arg): r for r in d.records(step=step, role=Role.PROBE)}


def test_probes_trace_without_graph_breaks(model):
    x = torch.randn(4, 16)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    ops = [n.target for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"]
    probe_ops = (torch.ops.accdump.probe_tensor, torch.ops.accdump.probe_tensor.default)
    assert sum(op in probe_ops for op in ops) == 3


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_probes_record_what_eager_records(model, tmp_path, backend):
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with accdump.record(None, tmp_path / "eager"):
            model(x)
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        compiled(x)  # compiled with no recorder active: the op is in the graph regardless
        with accdump.record(None, tmp_path / "compiled"):
            compiled(x)
            compiled(x)  # each call of the root module is one step
    eager = probes(tmp_path / "eager")
    assert set(eager) == {("hidden", 0, "0"), ("pair", 0, "0"), ("pair", 0, "1")}
    for step in (0, 1):
        comp = probes(tmp_path / "compiled", step)
        assert set(comp) == set(eager)
        for key, r in eager.items():
            assert_same_stats(comp[key], r)
    with torch.no_grad(), accdump.record(None, tmp_path / "one-step", auto_step=False):
        compiled(x)
        compiled(x)
    assert set(probes(tmp_path / "one-step")) == set(eager) | {
        ("hidden", 1, "0"),
        ("pair", 1, "0"),
        ("pair", 1, "1"),
    }


def assert_same_stats(c, r):
    if True:
        assert c.shape == r.shape and c.dtype == r.dtype
        for field in ("count", "mean", "std", "l2norm", "absmax", "min", "max"):
            assert getattr(c.stats, field) == pytest.approx(getattr(r.stats, field), rel=1e-5, abs=1e-6), (
                field
            )


def test_compiled_probe_without_recorder_is_harmless(model):
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_recording_a_compiled_model_says_what_is_recorded(model, tmp_path, capsys):
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 16)
    with torch.no_grad(), accdump.record(compiled, tmp_path / "d"):
        compiled(x)
    err = capsys.readouterr().err
    assert "Probed runs under torch.compile" in err and "not recorded" in err
    recs = list(accdump.load(tmp_path / "d").records())
    names = {(r.name, r.role) for r in recs}
    assert ("hidden", Role.PROBE) in names  # probes inside the compiled code are recorded
    assert ("", Role.OUTPUT) in names  # and the compiled module's own output
    assert not any(r.name.startswith("_orig_mod.") for r in recs)  # no inner module was recorded
