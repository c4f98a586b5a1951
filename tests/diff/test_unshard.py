"""TP=1 golden vs TP=2 target (2 processes on gloo): shards are put back together, a correct
target passes, a missing or doubled all-reduce is named, ranks that disagree are reported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

import accdump
from accdump.diff.rules import RulesError
from accdump.diff.unshard import UnshardRules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "capture"))
from test_collectives import _worker, free_port  # noqa: E402


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
