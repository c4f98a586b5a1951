"""find_tensors: which tensors sit inside nested arguments and outputs, and the keys that name them;
the recorder's inlined paths key module arguments the same way."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import accdump
from accdump.capture.flatten import MAX_DEPTH, find_tensors
from accdump.store import Role


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    extra: tuple | None = None
    note: str = "x"


def _keys(value, key: str = "", depth: int = 0) -> list[str]:
    return [k for k, _ in find_tensors(value, key, depth)]


def test_keys_join_positions_and_names():
    t = torch.zeros(1)
    value = {"a": t, "b": (t, None, [t, 3, "s"]), 0: {"": t}, "": t, "out": Out(t, (t,))}
    assert _keys(value) == ["a", "b.0", "b.2.0", "0.", "0", "out.logits", "out.extra.0"]
    assert _keys(t) == ["0"] and _keys(t, "k") == ["k"]
    assert _keys((t, t), "p", 1) == ["p.0", "p.1"]
    assert _keys(None) == _keys(3) == _keys("s") == _keys(Out) == []


def test_values_are_the_tensors_themselves():
    a, b = torch.zeros(1), torch.ones(2)
    found = find_tensors([a, {"b": b}])
    assert [t for _, t in found][0] is a and [t for _, t in found][1] is b


def test_nesting_deeper_than_max_depth_is_not_searched():
    t = torch.zeros(1)
    value: object = t
    for _ in range(MAX_DEPTH + 2):
        value = [value]
    assert find_tensors(value) == []
    value = t
    for _ in range(MAX_DEPTH):
        value = [value]
    assert _keys(value) == [".".join(["0"] * MAX_DEPTH)]


class ManyArgs(nn.Module):
    def forward(self, *args, **kwargs):
        return args[0] + 1


def test_recorded_argument_keys_match_find_tensors(tmp_path):
    t = torch.arange(3.0)
    args = (*[t + i for i in range(70)], None, (t, [t, None]), 5)
    kwargs = {"k": t, "nested": {"": t}, "none": None}
    with torch.no_grad(), accdump.record(ManyArgs(), tmp_path / "d") as rec:
        rec.model(*args, **kwargs)
    got = [r.arg for r in accdump.load(tmp_path / "d").records(role=Role.INPUT)]
    assert got == _keys(args) + _keys(kwargs)
    assert got[68:] == ["68", "69", "71.0", "71.1.0", "k", "nested."]
