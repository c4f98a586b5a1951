"""accdump._C.CallSite / CallFrame: wrapped module calls entered and left in C, as the
recorder's Python closures do it (ACCDUMP_CAPTURE=python keeps those)."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest
import torch
from torch import nn

import accdump
from accdump.store import Role

_C = pytest.importorskip("accdump._C")


@dataclasses.dataclass
class Pair:  # a value the native capture leaves to Python
    a: torch.Tensor
    b: torch.Tensor


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, *, pair: Pair | None = None, scale: float = 1.0) -> torch.Tensor:
        y = self.lin(x) * scale
        return y if pair is None else y + pair.a - pair.b


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.norm = nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inner(x, pair=Pair(x, x * 0.5))
        x = self.inner(self.norm(x), scale=0.25)  # a second call of the same module
        return self.norm(x)


def _records(path) -> list:
    return [dataclasses.replace(r, segment=None, heap_offset=0) for r in accdump.load(path).records()]


@pytest.mark.parametrize("mode", ["stats", "tensor", "hash"])
def test_dumps_match_the_python_closures(tmp_path, monkeypatch, mode) -> None:
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for how in ("native", "python"):
        monkeypatch.setenv("ACCDUMP_CAPTURE", how)
        with accdump.record(net, tmp_path / how, mode=mode) as rec, torch.no_grad():
            assert (rec._call_site is _C.CallSite) == (how == "native")
            outputs[how] = [net(x) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(outputs["native"], outputs["python"], strict=True))
    native, python = _records(tmp_path / "native"), _records(tmp_path / "python")
    assert native == python
    calls = {(r.name, r.call) for r in native if r.step == 0}
    assert {("inner", 0), ("inner", 1), ("norm", 0), ("norm", 1), ("inner.lin", 1)} <= calls
    # the dataclass keyword input went to the Python capture, from the C call site
    assert {r.arg for r in native if r.name == "inner" and r.role == Role.INPUT} >= {"0", "pair.a", "pair.b"}


def test_frames_are_the_stacks_and_op_level_counts_into_them(tmp_path) -> None:
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(list(rec._stack))
            return x.exp()

    net = nn.Sequential(Probe())
    with accdump.record(net, tmp_path / "d", level="all") as rec, torch.no_grad():
        net(torch.ones(2))
    frames = seen[0]
    assert [type(f) for f in frames] == [_C.CallFrame, _C.CallFrame]
    assert [f.name for f in frames] == ["", "0"] and frames[1].call == 0
    assert frames[1].op_counts == {"exp": 1} and frames[1].kwargs_pending is False
    names = {r.name for r in accdump.load(tmp_path / "d").records()}
    assert "0/exp.0" in names


def test_call_frame_attributes() -> None:
    f = _C.CallFrame("model.layers.0", 3)
    assert (f.name, f.call, f.op_counts, f.kwargs_pending) == ("model.layers.0", 3, None, False)
    f.op_counts = {"add": 2}
    f.kwargs_pending = True
    assert f.op_counts == {"add": 2} and f.kwargs_pending is True
    with pytest.raises(TypeError):
        f.kwargs_pending = 1  # a bool only
    with pytest.raises(AttributeError):
        f.name = "other"  # fixed when made
    with pytest.raises(AttributeError):
        del f.call
    with pytest.raises(TypeError):
        _C.CallFrame("x")


def test_bad_arguments_raise() -> None:
    site = _C.CallSite(object(), [], "m", "Linear", True, True, Role.INPUT, Role.OUTPUT, print, print)
    with pytest.raises(TypeError, match="enter takes 3 arguments"):
        site.enter(None, ())
    with pytest.raises(TypeError, match="leave takes 4 arguments"):
        site.leave(None, (), {})
    with pytest.raises(TypeError):
        _C.CallSite(
            object(), (), "m", "Linear", True, True, Role.INPUT, Role.OUTPUT, print, print
        )  # not a list
    with pytest.raises(AttributeError):  # the recorder has no open step attribute
        site.enter(None, (), {})


def test_an_error_in_the_capture_reaches_the_caller_and_the_call_is_left(tmp_path) -> None:
    net = Net()
    with accdump.record(net, tmp_path / "d") as rec, torch.no_grad():

        def broken(*args):
            raise RuntimeError("capture failed")

        rec._capture_python = broken  # the dataclass input goes there
        with pytest.raises(RuntimeError, match="capture failed"):
            net(torch.randn(3, 6))
        assert rec._stack == []  # every call entered was left


def test_a_stopped_recorder_and_its_call_sites_are_collected(tmp_path) -> None:
    net = Net()
    rec = accdump.record(net, tmp_path / "d")
    with rec, torch.no_grad():
        net(torch.randn(3, 6))
    ref = weakref.ref(rec)
    del rec
    gc.collect()
    assert ref() is None


class _LeavesEverything:
    """A StepCapture stand-in whose capture() says -2: any negative count leaves the value to
    the Python capture, as `native.capture(...) < 0` reads it."""

    def __init__(self, native):
        self._native = native

    def capture(self, *args):
        return -2

    def __getattr__(self, name):
        return getattr(self._native, name)


def test_a_negative_count_from_another_capture_goes_to_python(tmp_path, monkeypatch) -> None:
    net = Net()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    with accdump.record(net, tmp_path / "stand_in") as rec, torch.no_grad():
        rec._native = _LeavesEverything(rec._native)
        net(x)
    monkeypatch.setenv("ACCDUMP_CAPTURE", "python")
    with accdump.record(net, tmp_path / "python") as rec, torch.no_grad():
        net(x)
    assert _records(tmp_path / "stand_in") == _records(tmp_path / "python")
