"""module_calls.wrap_forward: every call of a module seen on entry and exit, the module computing
exactly what it computed, and everything put back on remove()."""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

import pytest
import torch
from torch import nn

import accdump
from accdump.capture.module_calls import can_wrap, wrap_forward


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, scale: float = 1.0, *, bias: torch.Tensor | None = None) -> Any:
        """Scaled linear."""
        y = self.lin(x) * scale
        return y if bias is None else y + bias


class Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("broken layer")


def tracing(log: list) -> tuple:
    def enter(module, args, kwargs):
        log.append(("enter", module, args, dict(kwargs)))

    def leave(module, args, kwargs, output):
        log.append(("leave", module, args, dict(kwargs), output))

    return enter, leave


def test_calls_are_seen_with_their_arguments_and_output():
    torch.manual_seed(0)
    m = Scaled()
    x, b = torch.randn(3, 8), torch.randn(4)
    want = m(x, 2.0, bias=b)
    log: list = []
    handle = wrap_forward(m, *tracing(log))
    got = m(x, 2.0, bias=b)
    assert torch.equal(got, want)
    assert [e[0] for e in log] == ["enter", "leave"]
    assert log[0][1] is m and log[0][2][0] is x and log[0][2][1] == 2.0 and log[0][3] == {"bias": b}
    assert log[1][4] is got
    assert not m._forward_hooks and not m._forward_pre_hooks  # nn.Module keeps its fast path
    handle.remove()
    assert "forward" not in m.__dict__
    m(x)
    assert len(log) == 2


def test_signature_and_docs_are_the_modules():
    m = Scaled()
    before = inspect.signature(m.forward)
    handle = wrap_forward(m, *tracing([]))
    assert inspect.signature(m.forward) == before
    assert list(inspect.signature(m.forward).parameters)[:2] == ["x", "scale"]
    assert m.forward.__doc__ == "Scaled linear."
    handle.remove()


def test_a_failing_forward_is_left_with_no_output_and_raises():
    m, log = Fails(), []
    wrap_forward(m, *tracing(log))
    with pytest.raises(ValueError, match="broken layer"):
        m(torch.ones(2))
    assert [e[0] for e in log] == ["enter", "leave"] and log[1][4] is None


def test_a_deep_copy_runs_its_own_weights():
    torch.manual_seed(0)
    m, log = Scaled(), []
    wrap_forward(m, *tracing(log))
    twin = copy.deepcopy(m)
    with torch.no_grad():
        twin.lin.weight.add_(1.0)
    x = torch.randn(2, 8)
    assert not torch.equal(twin(x), m(x))
    assert log[0][1] is twin and log[2][1] is m  # each call seen with the module that ran


def test_a_forward_patched_on_the_class_later_is_the_one_that_runs():
    class Patched(nn.Module):
        def forward(self, x):
            return x + 1

    m, log = Patched(), []
    wrap_forward(m, *tracing(log))
    Patched.forward = lambda self, x: x * 10  # type: ignore[method-assign]
    assert torch.equal(m(torch.ones(2)), torch.full((2,), 10.0))
    assert len(log) == 2


def test_an_instance_forward_set_before_is_wrapped_and_put_back():
    torch.manual_seed(0)
    m = Scaled()
    calls = []

    def offloaded(x, *args, **kwargs):  # as accelerate's hooks replace forward on the instance
        calls.append(x)
        return Scaled.forward(m, x, *args, **kwargs)

    m.forward = functools.update_wrapper(functools.partial(offloaded), Scaled.forward)
    theirs = m.forward
    log: list = []
    handle = wrap_forward(m, *tracing(log))
    x = torch.randn(2, 8)
    torch.testing.assert_close(m(x, 3.0), m.lin(x) * 3.0)
    assert len(calls) == 1 and [e[0] for e in log] == ["enter", "leave"] and log[0][1] is m
    handle.remove()
    assert m.forward is theirs


def test_remove_leaves_a_wrapper_someone_added_after_ours():
    m, log = Scaled(), []
    handle = wrap_forward(m, *tracing(log))
    ours = m.forward

    def later(*args, **kwargs):
        return ours(*args, **kwargs)

    m.forward = later
    handle.remove()
    assert m.forward is later  # theirs stays; ours, still inside it, only passes calls on
    torch.testing.assert_close(m(torch.ones(1, 8)), Scaled.forward(m, torch.ones(1, 8)))
    assert log == []


def test_a_failing_enter_still_leaves_and_raises():
    m, left = Scaled(), []

    def enter(module, args, kwargs):
        raise MemoryError("pinned copy")

    wrap_forward(m, enter, lambda module, args, kwargs, out: left.append(out))
    with pytest.raises(MemoryError, match="pinned copy"):
        m(torch.ones(1, 8))
    assert left == [None]


def test_a_failing_leave_does_not_replace_the_users_error():
    m = Fails()

    def leave(module, args, kwargs, output):
        raise RuntimeError("writer gone")

    wrap_forward(m, lambda *a: None, leave)
    with pytest.warns(UserWarning, match="writer gone"), pytest.raises(ValueError, match="broken layer"):
        m(torch.ones(2))


def test_a_deep_copy_of_an_instance_forward_gets_its_own_forward_back():
    torch.manual_seed(0)
    m = Scaled()
    m.forward = functools.partial(Scaled.forward, m)  # bound to the module, as accelerate binds it
    log: list = []
    wrap_forward(m, *tracing(log))
    twin = copy.deepcopy(m)
    with torch.no_grad():
        twin.lin.weight.add_(1.0)
    x = torch.randn(2, 8)
    torch.testing.assert_close(twin(x), twin.lin(x))
    assert not torch.equal(twin(x), m(x))
    assert isinstance(twin.forward, functools.partial) and twin.forward.args[0] is twin


def test_forwards_that_are_not_plain_functions_or_have_user_hooks_are_not_wrapped():
    class Static(nn.Module):
        @staticmethod
        def forward(x):
            return x

    hooked = Scaled()
    hooked.register_forward_hook(lambda mod, args, out: out * 2)
    assert not can_wrap(Static()) and not can_wrap(hooked) and can_wrap(Scaled())


def test_torchscript_modules_are_not_wrapped():
    assert can_wrap(Scaled())
    assert not can_wrap(torch.jit.script(nn.Linear(2, 2)))


def test_compiling_a_recorded_model_traces_no_recorder_code(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(Scaled(), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 8)
    with torch.no_grad(), accdump.record(m, tmp_path / "d"):
        eager = m(x)
        explained = torch._dynamo.explain(m)(x)
        compiled_model = torch.compile(m, backend="aot_eager", fullgraph=True)
        compiled = compiled_model(x)
        compiled_model(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    torch.testing.assert_close(compiled, eager)
    dump = accdump.load(tmp_path / "d")
    names = {r.name for r in dump.records(step=0)}
    assert {"", "0", "0.lin", "1", "2"} <= names


def test_recording_wraps_submodules_and_hooks_the_root_and_data_parallel(tmp_path):
    m = nn.Sequential(Scaled(), nn.ReLU())
    with accdump.record(m, tmp_path / "a"):
        assert "forward" not in m.__dict__ and m._forward_hooks
        assert "forward" in m[0].__dict__ and not m[0]._forward_hooks
    assert "forward" not in m[0].__dict__ and not m._forward_hooks
    dp = nn.DataParallel(nn.Sequential(Scaled(), nn.ReLU()))
    with accdump.record(dp, tmp_path / "b"):
        assert all("forward" not in mod.__dict__ for mod in dp.modules())


class Block(nn.Module):
    """A module called twice per forward, with keyword, nested and None outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Scaled()
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, *, bias: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        y = self.act(self.inner(x, 0.5, bias=bias))
        return y, {"pair": (y * 2, None), "first": x[:, :4]}


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.ones(4)
        y, extra = self.block(x, bias=bias)
        y2, _ = self.block(self.head(y) + extra["first"].sum(), bias=bias)
        return y2


def _records(path: Any) -> list[tuple]:
    return [
        (r.step, r.name, r.call, int(r.role), r.arg, r.kind, r.dtype, r.shape, r.strides, r.stats)
        for r in sorted(accdump.load(path).records(), key=lambda r: (r.step, r.order))
    ]


@pytest.mark.parametrize("level", ["module", "all"])
def test_wrapped_calls_record_what_hooks_record(tmp_path, level):
    torch.manual_seed(0)
    m = Twice()
    x = torch.randn(3, 8)
    with torch.no_grad():
        with accdump.record(m, tmp_path / "wrapped", level=level):
            assert "forward" in m.block.__dict__  # the inline enter / leave path
            for _ in range(2):
                m(x)
        # a global forward hook sends every module through hooks (the _enter / _leave path)
        handle = nn.modules.module.register_module_forward_hook(lambda mod, args, out: None)
        try:
            with accdump.record(m, tmp_path / "hooked", level=level):
                assert "forward" not in m.block.__dict__
                for _ in range(2):
                    m(x)
        finally:
            handle.remove()
    wrapped, hooked = _records(tmp_path / "wrapped"), _records(tmp_path / "hooked")
    assert wrapped == hooked
    names = {(r[1], r[2]) for r in wrapped}
    assert {("block", 0), ("block", 1), ("block.inner.lin", 1), ("block.act", 0)} <= names
    assert {r[0] for r in wrapped} == {0, 1}
    if level == "all":
        assert any("/" in r[1] for r in wrapped)  # ops named inside their module


class Interrupted(nn.Module):
    """Calls its second child paused, after a step mark, or after a call of it that raised."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.a, self.b = Scaled(), nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rec = accdump.capture.recorder.active_recorder()
        y = self.a(x, scale=2.0)
        if self.mode == "paused":
            with rec.paused():
                y = self.b(y)
        elif self.mode == "step":
            rec.step()
            y = self.b(y)
        else:
            with pytest.raises(TypeError):
                self.b(None)
            y = self.b(y)
        return y


@pytest.mark.parametrize("mode", ["paused", "step", "raised"])
def test_wrapped_and_hooked_calls_agree_when_interrupted(tmp_path, mode):
    x = torch.randn(2, 8)
    dumps = []
    for hooked in (False, True):
        m = nn.Sequential(Interrupted(mode), nn.ReLU())
        torch.manual_seed(0)
        m.load_state_dict(nn.Sequential(Interrupted(mode), nn.ReLU()).state_dict())
        handle = nn.modules.module.register_module_forward_hook(lambda *a: None) if hooked else None
        try:
            with torch.no_grad(), accdump.record(m, tmp_path / str(hooked)):
                assert ("forward" in m[0].a.__dict__) != hooked
                for _ in range(2):
                    m(x)
        finally:
            if handle is not None:
                handle.remove()
        dumps.append(_records(tmp_path / str(hooked)))
    assert dumps[0] == dumps[1] and dumps[0]
    names = {r[1] for r in dumps[0]}
    assert ("0.b" in names) == (mode != "paused")
