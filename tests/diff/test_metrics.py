"""Statistics-only verdicts: std and mean differences in units of the golden's magnitude, so that
rounding of a tensor whose spread is small next to its mean passes and a real change of spread fails."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import accdump
from accdump.diff import Verdict
from accdump.store import Role

from ._emit import compare_outputs

DIM, EXPERTS, DECODE_STEPS = 64, 8, 8


class Router(nn.Module):
    """A Mixtral-like MoE router: top-2 of softmax(gate(x)) renormalised, and the experts' indices."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(DIM, EXPERTS, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)  # an untrained router: near-tied top-2 weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, experts = self.gate(x).softmax(-1).topk(2, dim=-1)
        return weights / weights.sum(-1, keepdim=True), experts


@pytest.mark.parametrize("mode", ["stats", "tensor"])
def test_bfloat16_routing_weights_of_one_sequence_decode_steps_pass(tmp_path, mode):
    """Two weights 0.5 +- 0.006..0.09 per step: bfloat16 moves each by ~1e-3, their std by up to 20%."""
    torch.manual_seed(0)
    golden = Router().eval()
    target = copy.deepcopy(golden).to(torch.bfloat16)
    xs = torch.randn(DECODE_STEPS, 1, 1, DIM)  # one sequence, one token per step
    for model, path, dtype in (
        (golden, tmp_path / "g", torch.float32),
        (target, tmp_path / "t", torch.bfloat16),
    ):
        with torch.no_grad(), accdump.record(model, path, mode=mode):
            for x in xs:
                model(x.to(dtype))
    result = accdump.compare(tmp_path / "g", tmp_path / "t", device="cpu")
    assert result.first_divergence is None, result.verdict_line()
    assert [p.row() for p in result.pairs if p.verdict != Verdict.PASS] == []
    weights = [
        p
        for p in result.pairs
        if p.target.name == "" and p.target.role == Role.OUTPUT and p.target.arg == "0"
    ]
    assert len(weights) == DECODE_STEPS
    assert {p.target.dtype for p in weights} == {"bfloat16"}
    assert all(abs(p.golden.stats.mean - 0.5) < 1e-6 and p.golden.stats.std < 0.1 for p in weights)
    # measured against the golden std alone, the spread's change would have been broken (> 0.05)
    old = [abs(p.target.stats.std - p.golden.stats.std) / p.golden.stats.std for p in weights]
    assert max(old) > 0.2
    if mode == "stats":
        assert max(p.metrics.std_rel_diff for p in weights) < 0.01


def uniform(mean: float, half_width: float, n: int = 4096) -> torch.Tensor:
    return mean + half_width * torch.linspace(-1.0, 1.0, n)


@pytest.mark.parametrize(
    ("mean", "verdict"),
    [(0.0, Verdict.CATASTROPHIC), (2.0, Verdict.BROKEN)],
    ids=["centred", "offset"],
)
def test_spread_grown_one_and_a_half_times_fails_statistics_only(tmp_path, mean, verdict):
    golden = uniform(mean, 0.5)
    target = uniform(mean, 0.75)  # the same mean, 1.5x the std
    pair = compare_outputs(tmp_path, golden, target, "stats")
    m = pair.metrics
    std = golden.std(unbiased=False).item()
    assert m.std_rel_diff == pytest.approx(0.5 * std / max(std, abs(mean)), rel=1e-4)
    assert pair.verdict == verdict
    if mean:  # with its mean, its norm moves 1.4% and its absmax 10%: the std is what fails it
        assert abs(m.norm_ratio - 1) < 0.02 and m.absmax_rel_diff < 0.15 and m.mean_diff < 1e-6


def test_zeroed_head_fails_statistics_only(tmp_path):
    golden = torch.randn(8, 4, 16, generator=torch.Generator().manual_seed(5)) + 0.1
    target = golden.clone()
    target[:, 2] = 0.0  # one of 4 heads zeroed
    pair = compare_outputs(tmp_path, golden, target, "stats")
    assert pair.failing
    assert pair.metrics.std_rel_diff > 0.1


def test_bfloat16_rounding_of_two_near_equal_weights_passes_statistics_only(tmp_path):
    golden = torch.tensor([[0.5035148, 0.4964852]])  # std 0.0035
    target = golden.to(torch.bfloat16)  # [0.50390625, 0.49609375]: std 0.0039, 11% more
    pair = compare_outputs(tmp_path, golden, target, "stats")
    assert pair.verdict == Verdict.PASS, pair.row()
    assert pair.metrics.std_rel_diff == pytest.approx((0.00390625 - 0.0035148) / 0.5, rel=1e-3)
