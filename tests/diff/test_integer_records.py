"""Integer and bool records (expert indices, token ids, masks, int8 codes) compare exactly: one
changed element fails the pair, in tensor mode and from the statistics alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import accdump
from accdump.diff import Thresholds, Verdict
from accdump.diff.metrics import verdict_of
from accdump.store import Role

from ._emit import Emit, compare_outputs

DIM, EXPERTS, TOKENS, TOP_K = 16, 8, 32, 2
MODES = ["stats", "tensor"]


class Router(nn.Module):
    """Top-2 routing: weights and expert indices; `flip` plants a wrong index (token 5, slot 0)."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(DIM, EXPERTS, bias=False)
        self.flip = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, experts = self.gate(x).softmax(-1).topk(TOP_K, dim=-1)
        if self.flip:
            experts = experts.clone()
            chosen = set(experts[5].tolist())
            experts[5, 0] = next(e for e in range(EXPERTS) if e not in chosen)
        return weights / weights.sum(-1, keepdim=True), experts


class Experts(nn.Module):
    """All experts as one module, as transformers runs them: each token through its chosen ones."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(EXPERTS, DIM, DIM) / DIM**0.5)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        per_expert = torch.einsum("td,edf->tef", x, self.w)
        chosen = per_expert.gather(1, experts[..., None].expand(-1, -1, DIM))
        return (weights[..., None] * chosen).sum(1)


class MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.router = Router()
        self.experts = Experts()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(x, *self.router(x))


def record_moe(tmp_path, mode: str, flip: bool) -> tuple[str, str]:
    torch.manual_seed(0)
    golden = MoE().eval()
    target = copy.deepcopy(golden)
    target.router.flip = flip
    x = torch.randn(TOKENS, DIM)
    for model, side in ((golden, "g"), (target, "t")):
        with torch.no_grad(), accdump.record(model, tmp_path / side, mode=mode):
            model(x)
    return str(tmp_path / "g"), str(tmp_path / "t")


@pytest.mark.parametrize("mode", MODES)
def test_one_flipped_expert_index_is_blamed_on_the_router(tmp_path, mode):
    result = accdump.compare(*record_moe(tmp_path, mode, flip=True), device="cpu")
    d = result.first_divergence
    assert d is not None, result.verdict_line()
    assert (d.attributed_to, d.pair.target.role, d.pair.target.arg) == ("router", Role.OUTPUT, "1")
    assert d.pair.target.dtype == "int64" and d.pair.verdict == Verdict.BROKEN
    # the float tolerances alone would not fail it (1 index of 64), and blame the experts instead
    assert verdict_of(d.pair.metrics, Thresholds()) < Verdict.BROKEN
    if mode == "tensor":
        assert d.pair.note == "integer values differ (1 of 64 elements, first at [5, 0])"
    else:
        assert d.pair.note.startswith("integer statistics differ (") and "sum" in d.pair.note
    assert d.pair.note in result.verdict_line()
    weights = [p for p in result.pairs if p.target.name == "router" and p.target.role == Role.OUTPUT]
    assert [(p.target.arg, p.verdict) for p in weights] == [("0", Verdict.PASS), ("1", Verdict.BROKEN)]


@pytest.mark.parametrize("mode", MODES)
def test_equal_integer_records_pass(tmp_path, mode):
    result = accdump.compare(*record_moe(tmp_path, mode, flip=False), device="cpu")
    assert result.first_divergence is None and result.exit_code == 0, result.verdict_line()
    integer = [p for p in result.pairs if p.target.dtype == "int64"]
    assert integer and all(p.verdict == Verdict.PASS and p.note == "" for p in integer)


def one_flipped(golden: torch.Tensor) -> torch.Tensor:
    target = golden.clone()
    flat = target.view(-1)
    flat[3] = ~flat[3] if golden.dtype == torch.bool else flat[3] + 1
    return target


INTEGERS = [
    torch.arange(24, dtype=torch.int64).reshape(4, 6) % 7,  # token ids / positions
    torch.arange(-12, 12, dtype=torch.int8).reshape(4, 6),  # int8 codes
    torch.arange(24).reshape(4, 6) % 3 == 0,  # a mask
]


@pytest.mark.parametrize("golden", INTEGERS, ids=lambda t: str(t.dtype).removeprefix("torch."))
@pytest.mark.parametrize("mode", MODES)
def test_one_changed_element_fails_and_equal_values_pass(tmp_path, golden, mode):
    pair = compare_outputs(tmp_path / "same", golden, golden.clone(), mode)
    assert pair.verdict == Verdict.PASS and pair.note == ""
    pair = compare_outputs(tmp_path / "flip", golden, one_flipped(golden), mode)
    assert pair.verdict == Verdict.BROKEN and pair.failing
    if mode == "tensor":
        assert pair.note == "integer values differ (1 of 24 elements, first at [0, 3])"
    else:
        assert pair.note.startswith("integer statistics differ (") and "sum" in pair.note


@pytest.mark.parametrize("mode", MODES)
def test_equal_values_in_other_integer_dtypes_pass(tmp_path, mode):
    golden = torch.arange(24, dtype=torch.int64).reshape(4, 6)
    pair = compare_outputs(tmp_path, golden, golden.to(torch.int32), mode)
    assert (pair.golden.dtype, pair.target.dtype) == ("int64", "int32")
    assert pair.verdict == Verdict.PASS and pair.note == ""
    pair = compare_outputs(tmp_path / "flip", golden, one_flipped(golden).to(torch.int32), mode)
    assert pair.verdict == Verdict.BROKEN


def test_permuted_indices_fail_by_fingerprint_in_hash_mode(tmp_path):
    golden = torch.arange(24, dtype=torch.int64).reshape(4, 6)
    target = golden.clone()
    target[0, 0], target[0, 1] = golden[0, 1], golden[0, 0]  # every statistic stays the same
    pair = compare_outputs(tmp_path, golden, target, "hash")
    assert pair.golden.stats == pair.target.stats
    assert (pair.verdict, pair.note) == (Verdict.BROKEN, "integer statistics differ (fingerprint)")


@pytest.mark.parametrize("mode", MODES)
def test_float_golden_and_integer_target_keep_the_float_tolerances(tmp_path, mode):
    golden = torch.arange(24, dtype=torch.float32).reshape(4, 6) * 10
    pair = compare_outputs(tmp_path, golden, one_flipped(golden).to(torch.int64), mode)
    assert pair.verdict == Verdict.PASS and pair.note == ""  # 1 of 24 values off by 1 in ~100


def test_integer_shards_put_together_compare_without_a_shards_fingerprint(tmp_path, monkeypatch):
    """TP=2 target in hash mode: the concatenation keeps no fingerprint (rank 0's is of its shard)."""
    golden = torch.arange(24, dtype=torch.int64).reshape(4, 6)
    paths = {"g": (golden, 0, 1), "t0": (golden[:, :3], 0, 2), "t1": (golden[:, 3:], 1, 2)}
    for name, (value, rank, world) in paths.items():
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        module = Emit(value.contiguous())
        with torch.no_grad(), accdump.record(module, tmp_path / name[0], mode="hash"):
            module(torch.zeros(1))
    result = accdump.compare(tmp_path / "g", tmp_path / "t", device="cpu")
    assert "concat dim 1" in result.steps_note
    (pair,) = [p for p in result.pairs if p.target.role == Role.OUTPUT]
    assert pair.target.shape == (4, 6) and pair.target.hash == ""
    assert (pair.verdict, pair.note) == (Verdict.PASS, "")
