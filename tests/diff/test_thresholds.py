"""Verdict limits from a file, with per-name-glob overrides."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import accdump
from accdump.diff import Thresholds
from accdump.diff.rules import RulesError


def test_load_limits_and_overrides(tmp_path):
    f = tmp_path / "th.yaml"
    lines = [
        "cosine: 0.9999",
        "rel_l2: [0.01, 0.1, 0.4]",
        "overrides:",
        "  - glob: '*.lm_head'",
        "    cosine: [0.99, 0.9, 0.5]",
    ]
    f.write_text("\n".join(lines) + "\n")
    th = Thresholds.load(f)
    assert th.cosine == (0.9999, 0.99, 0.9)
    assert th.rel_l2 == (0.01, 0.1, 0.4)
    head = th.for_name("model.lm_head")
    assert head.cosine == (0.99, 0.9, 0.5) and head.rel_l2 == (0.01, 0.1, 0.4)
    assert th.for_name("model.layers.0") is th


@pytest.mark.parametrize(
    "text, message",
    [
        ("cosine: [a, b]\n", "must be a number"),
        ("bogus: 1\n", "unknown threshold 'bogus'"),
        ("overrides:\n  - cosine: 0.5\n", "needs a 'glob'"),
        ("[1, 2\n", "not valid YAML"),
    ],
)
def test_bad_threshold_files_name_the_problem(tmp_path, text, message):
    f = tmp_path / "th.yaml"
    f.write_text(text)
    with pytest.raises(RulesError, match=message):
        Thresholds.load(f)


def test_override_changes_the_verdict_for_matching_names(tmp_path):
    torch.manual_seed(0)
    golden = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    target = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    target.load_state_dict(golden.state_dict())
    with torch.no_grad():
        target[1].weight.add_(0.002 * torch.randn(32, 32))  # a small, real deviation in module "1"
    x = torch.randn(8, 32)
    with torch.no_grad():
        with accdump.record(golden, tmp_path / "g", mode="tensor"):
            golden(x)
        with accdump.record(target, tmp_path / "t", mode="tensor"):
            target(x)
    strict = Thresholds(cosine=(0.99999, 0.9999, 0.999), rel_l2=(1e-3, 1e-2, 2e-2))
    assert accdump.compare(tmp_path / "g", tmp_path / "t", thresholds=strict).first_divergence is not None
    lenient = Thresholds(
        cosine=strict.cosine, rel_l2=strict.rel_l2, overrides=(("1", Thresholds()), ("", Thresholds()))
    )
    assert accdump.compare(tmp_path / "g", tmp_path / "t", thresholds=lenient).first_divergence is None
