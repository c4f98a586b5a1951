"""Structural alignment: a re-implementation with other module names still pairs and is judged."""

from __future__ import annotations

import torch
from torch import nn

import accdump
from accdump.diff.comparison import align_by_structure


class Stack(nn.Module):
    def __init__(self, attr: str, n: int = 3):
        super().__init__()
        self.attr = attr
        setattr(self, attr, nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(n)]))

    def forward(self, x):
        for layer in getattr(self, self.attr):
            x = layer(x)
        return x


def record_pair(tmp_path, bug: bool):
    torch.manual_seed(0)
    golden, target = Stack("layers"), Stack("blocks")
    target.load_state_dict({k.replace("layers", "blocks"): v for k, v in golden.state_dict().items()})
    if bug:
        with torch.no_grad():
            target.blocks[1][0].bias += 1.0
    x = torch.randn(4, 16)
    with torch.no_grad():
        with accdump.record(golden, tmp_path / "g", mode="tensor"):
            golden(x)
        with accdump.record(target, tmp_path / "t", mode="tensor"):
            target(x)
    return tmp_path / "g", tmp_path / "t"


def test_renamed_modules_pair_by_structure_and_find_the_bug(tmp_path):
    g, t = record_pair(tmp_path, bug=True)
    result = accdump.compare(g, t)
    assert not result.only_golden and not result.only_target
    d = result.first_divergence
    assert d is not None
    assert (d.pair.target.name, d.pair.golden.name) == ("blocks.1.0", "layers.1.0")
    assert "matched by structure" in d.pair.note
    assert "golden: layers.1.0" in result.verdict_line()


def test_renamed_modules_without_a_bug_pass(tmp_path):
    g, t = record_pair(tmp_path, bug=False)
    result = accdump.compare(g, t)
    assert result.first_divergence is None and result.exit_code == 0
    assert len(result.pairs) == 20


def test_structural_alignment_can_be_turned_off(tmp_path):
    g, t = record_pair(tmp_path, bug=True)
    result = accdump.compare(g, t, structural=False)
    names = {p.target.name for p in result.pairs}
    assert names == {""}  # only the root shares its name
    assert len(result.only_target) == 18 and len(result.only_golden) == 18


def test_alignment_skips_an_extra_target_module(tmp_path):
    g, t = record_pair(tmp_path, bug=False)
    gd, td = accdump.load(g), accdump.load(t)
    golden = [r for r in gd.records() if r.name]
    target = [r for r in td.records() if r.name]
    del golden[4]  # a record only the target has
    pairs, left_g, left_t = align_by_structure(golden, target)
    assert len(pairs) == len(golden) and not left_g and len(left_t) == 1
    assert all(a.kind == b.kind and a.shape == b.shape for a, b, _ in pairs)
