"""TP=1 golden vs TP=2 target (2 processes on gloo): shards are put back together, a correct
target passes, a missing or doubled all-reduce is named, ranks that disagree are reported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import accdump
from accdump.diff.rules import RulesError
from accdump.diff.unshard import UnshardRules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "capture"))
from test_collectives import RowParallel, _worker, free_port  # noqa: E402


def record(path: Path, world: int, reduces: int) -> Path:
    mp.start_processes(
        _worker, args=(world, free_port(), str(path), reduces), nprocs=world, start_method="spawn"
    )
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp")
    return {
        "golden": record(tmp / "tp1", 1, 1),
        "ok": record(tmp / "tp2", 2, 1),
        "missing": record(tmp / "tp2-missing", 2, 0),
        "doubled": record(tmp / "tp2-doubled", 2, 2),
    }


def test_correct_tp2_target_matches_tp1_golden(runs):
    res = accdump.compare(runs["golden"], runs["ok"], device="cpu")
    assert res.first_divergence is None, res.verdict_line()
    assert "unsharded from 2 ranks" in res.steps_note and "concat dim 1" in res.steps_note
    assert res.findings == []
    names = {p.target.name for p in res.pairs}
    assert {"up", "down", "down/all_reduce.0"} <= names  # the all-reduce input summed, output replicated


def test_missing_all_reduce_is_named_and_ranks_disagree(runs):
    res = accdump.compare(runs["golden"], runs["missing"], device="cpu")
    d = res.first_divergence
    assert d is not None and d.attributed_to == "down" and d.pair.target.step == 0
    assert any("ranks disagree on down" in f for f in res.findings)
    assert any(r.name == "down/all_reduce.0" for r in res.only_golden)


def test_doubled_all_reduce_is_named(runs):
    res = accdump.compare(runs["golden"], runs["doubled"], device="cpu")
    d = res.first_divergence
    assert d is not None and d.pair.target.step == 0
    assert d.pair.target.name in ("down/all_reduce.1", "down")
    assert any(r.name == "down/all_reduce.1" for r in res.only_target)
    assert (
        d.pair.metrics.norm_ratio == pytest.approx(2.0, rel=1e-3) or d.pair.target.name == "down/all_reduce.1"
    )


def test_cli_and_rules_file(runs, tmp_path, capsys):
    from accdump.cli.main import main

    rules = tmp_path / "unshard.yaml"
    rules.write_text(
        '- {glob: "down", unshard: sum, role: output}\n- {glob: "", unshard: sum, role: output}\n'
    )
    sys.argv = ["accdump", "compare", str(runs["golden"]), str(runs["missing"]), "--unshard", str(rules)]
    with pytest.raises(SystemExit) as exit_:
        main()
    # summing the partial outputs by rule is what the missing all-reduce should have done: passes
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {glob: down, unshard: average}\n")
    with pytest.raises(RulesError, match="unshard: one of"):
        UnshardRules.load(bad)


# --- attention with heads split across ranks, and a wrong head reshape in one layer ---------------

HEADS, HEAD_DIM, MODEL_DIM, SEQ = 4, 4, 16, 6


class TPAttention(nn.Module):
    """q/k/v column-parallel (a rank holds HEADS / world heads), o_proj row-parallel with its
    all-reduce inside (as tensor-parallel engines do)."""

    def __init__(self, rank: int, world: int, seed: int, bad_reshape: bool):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        full = {n: torch.randn(HEADS * HEAD_DIM, MODEL_DIM, generator=g) / 4 for n in ("q", "k", "v")}
        o = torch.randn(MODEL_DIM, HEADS * HEAD_DIM, generator=g) / 4
        self.local = HEADS // world
        rows = slice(rank * self.local * HEAD_DIM, (rank + 1) * self.local * HEAD_DIM)
        for n, w in full.items():
            lin = nn.Linear(MODEL_DIM, self.local * HEAD_DIM, bias=False)
            with torch.no_grad():
                lin.weight.copy_(w[rows])
            setattr(self, f"{n}_proj", lin)
        self.o_proj = RowParallel(o, rank, world, 1)
        self.bad_reshape = bad_reshape

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if self.bad_reshape:  # the head split read with the wrong strides
            return x.reshape(b, self.local, t, HEAD_DIM)
        return x.view(b, t, self.local, HEAD_DIM).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self.heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        att = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM**0.5, dim=-1) @ v
        b, _, t, _ = att.shape
        return self.o_proj(att.transpose(1, 2).reshape(b, t, self.local * HEAD_DIM))


class TPBlocks(nn.Module):
    def __init__(self, rank: int, world: int, bad_layer: int | None):
        super().__init__()
        self.layers = nn.ModuleList(TPAttention(rank, world, 10 + i, i == bad_layer) for i in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def _attention_worker(rank: int, world: int, port: int, path: str, bad_layer: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = TPBlocks(rank, world, bad_layer if bad_layer >= 0 else None)
        x = torch.randn(1, SEQ, MODEL_DIM, generator=torch.Generator().manual_seed(3))
        with torch.no_grad(), accdump.record(model, path, mode="tensor"):
            model(x)
    finally:
        dist.destroy_process_group()


def record_attention(path: Path, world: int, bad_layer: int) -> Path:
    args = (world, free_port(), str(path), bad_layer)
    mp.start_processes(_attention_worker, args=args, nprocs=world, start_method="spawn")
    return path


def test_wrong_head_reshape_is_attributed_to_its_attention(tmp_path):
    golden = record_attention(tmp_path / "tp1", 1, -1)
    ok = record_attention(tmp_path / "tp2", 2, -1)
    bad = record_attention(tmp_path / "tp2-bad", 2, 1)
    assert accdump.compare(golden, ok, device="cpu").first_divergence is None
    res = accdump.compare(golden, bad, device="cpu")
    d = res.first_divergence
    assert d is not None, res.verdict_line()
    # q/k/v of layer 1 still pass; the input of its o_proj (the attention output) fails: the error
    # is in layers.1's own code between them
    assert d.attributed_to == "layers.1" and d.pair.target.step == 0
