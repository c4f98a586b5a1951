"""`accdump compare` through the command line: exit status, error messages, JSON / CSV / HTML reports."""

from __future__ import annotations

import csv
import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import accdump
from accdump.diff import compare

from ._tiny import golden_model, prompt, record_forward, renamed_copy, target_copy

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accdump", "compare", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def strict_json(path: Path):
    def no_constants(c):
        raise AssertionError(f"{path} holds {c}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


def assert_one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("accdump: error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """golden, golden again (an identical run) and a target with a wrong attention scale in layer 1,
    in stats and tensor mode."""
    root = tmp_path_factory.mktemp("cli")
    golden, ids = golden_model(), prompt()
    target = target_copy(golden)
    target.layer_list[1].attn.bug_scale = True
    out = {}
    for mode in ("stats", "tensor"):
        for name, model in (("golden", golden), ("golden2", golden), ("target", target)):
            path = root / f"{name}_{mode}"
            record_forward(model, path, ids, mode=mode)
            out[name, mode] = path
    out["root"] = root
    return out


@pytest.mark.parametrize("mode", ["stats", "tensor"])
def test_planted_bug_exits_1_and_writes_reports(dumps, tmp_path, mode):
    g, t = dumps["golden", mode], dumps["target", mode]
    j, c, h = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.html"
    proc = run_cli(g, t, "--json", j, "--csv", c, "--html", h, "--device", "cpu")
    assert proc.returncode == 1, (proc.stdout[-3000:], proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "DIVERGED at rank 0, step 0" in proc.stdout

    expected = compare(g, t, device="cpu")
    exp_d = expected.first_divergence
    assert exp_d is not None and exp_d.attributed_to == "layers.1.attn"

    data = strict_json(j)
    fd = data["first_divergence"]
    assert isinstance(fd, dict)
    for key in ("rank", "step", "name", "golden_name", "metrics", "verdict"):
        assert key in fd, key
    assert (fd["rank"], fd["step"]) == (0, 0)
    assert fd["name"] == fd["golden_name"] == "layers.1.attn.o_proj"
    assert fd["role"] == "input"
    assert fd["attributed_to"] == "layers.1.attn"
    assert fd["verdict"] in ("broken", "catastrophic")
    assert isinstance(fd["metrics"], dict) and fd["metrics"]["source"] == mode
    assert fd["metrics"]["norm_ratio"] == pytest.approx(exp_d.pair.metrics.norm_ratio)
    if mode == "tensor":
        assert fd["metrics"]["cosine"] is not None and fd["metrics"]["cosine"] < 0.999
    assert len(data["pairs"]) == len(expected.pairs)

    with open(c, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(expected.pairs)
    assert [(r["step"], r["name"], r["role"], r["arg"]) for r in rows] == [
        (str(p.target.step), p.target.name, p.target.role.name.lower(), p.target.arg) for p in expected.pairs
    ]
    assert {"cosine", "norm_ratio", "rel_l2", "verdict"} <= set(rows[0])
    div_rows = [r for r in rows if r["name"] == "layers.1.attn.o_proj" and r["role"] == "input"]
    assert len(div_rows) == 1 and div_rows[0]["verdict"] == fd["verdict"]

    page = h.read_text()
    assert expected.verdict_line() in html.unescape(page)
    assert "data:image/png;base64," in page
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)  # nothing fetched from elsewhere
    assert "<script" not in page and "<link" not in page


def test_golden_vs_golden_exits_0(dumps, tmp_path):
    g, g2 = dumps["golden", "tensor"], dumps["golden2", "tensor"]
    j, c, h = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.html"
    proc = run_cli(g, g2, "--json", j, "--csv", c, "--html", h, "--device", "cpu")
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr)
    assert "OK: no divergence" in proc.stdout
    data = strict_json(j)  # identical tensors have an infinite SQNR: written as null
    assert data["first_divergence"] is None
    assert data["first_token_diff"] is None
    assert all(p["verdict"] == "pass" for p in data["pairs"])
    with open(c, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["pairs"]) > 50
    page = html.unescape(h.read_text())
    assert compare(g, g2, device="cpu").verdict_line() in page
    assert "data:image/png;base64," in page


def test_same_directory_twice_exits_0(dumps):
    g = dumps["golden", "stats"]
    proc = run_cli(g, g)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("side", ["golden", "target"])
def test_missing_dump_directory_exits_2(dumps, tmp_path, side):
    missing = tmp_path / "no_such_dump"
    args = (missing, dumps["golden", "stats"]) if side == "golden" else (dumps["golden", "stats"], missing)
    line = assert_one_line_error(run_cli(*args))
    assert str(missing) in line


@pytest.mark.parametrize(
    "suffix, text",
    [
        pytest.param(".json", '[{"pattern": ', id="json"),
        pytest.param(".yaml", "- pattern: [unclosed\n  replacement: x\n", id="yaml"),
        pytest.param(".yaml", "- pattern: '(['\n  replacement: x\n", id="bad-regex"),
        pytest.param(".yaml", "pattern: x\n", id="not-a-list"),
    ],
)
def test_malformed_rules_file_exits_2(dumps, tmp_path, suffix, text):
    rules = tmp_path / f"rules{suffix}"
    rules.write_text(text)
    line = assert_one_line_error(
        run_cli(dumps["golden", "stats"], dumps["target", "stats"], "--rename", rules)
    )
    assert str(rules) in line


def test_rename_rules_through_the_cli(dumps, tmp_path):
    """A target whose modules are named blocks.{i}.ffn pairs with layers.{i}.mlp through --rename
    (structural alignment off, so that the rules alone pair them)."""
    golden = golden_model()
    target = renamed_copy(golden, "blocks", "ffn")
    target.layer_list[1].attn.bug_scale = True
    t = tmp_path / "renamed"
    record_forward(target, t, prompt(), mode="stats")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- pattern: '^blocks\\.(\\d+)\\.ffn'\n  replacement: 'layers.\\1.mlp'\n"
        "- pattern: '^blocks\\.'\n  replacement: 'layers.'\n"
    )
    j = tmp_path / "r.json"
    proc = run_cli(dumps["golden", "stats"], t, "--rename", rules, "--no-structural", "--json", j)
    assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr)
    data = strict_json(j)
    assert data["only_golden"] == [] and data["only_target"] == []
    fd = data["first_divergence"]
    assert (fd["name"], fd["golden_name"]) == ("blocks.1.attn.o_proj", "layers.1.attn.o_proj")
    assert fd["attributed_to"] == "blocks.1.attn"


def test_csv_keeps_metric_columns_when_the_first_pair_is_a_mismatch(tmp_path):
    """The first record (the root's first input, a mask) has shapes that do not align: that pair is a
    'mismatch' without tensor metrics; every other pair has them and the CSV must keep their columns."""

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = golden_model()

        def forward(self, mask, ids):
            return self.inner(ids) * mask.mean()

    torch.manual_seed(0)
    model = Masked().eval()
    g, t = tmp_path / "g", tmp_path / "t"
    with torch.no_grad():
        with accdump.record(model, g, mode="tensor"):
            model(torch.ones(1, 12), prompt())
        with accdump.record(model, t, mode="tensor"):
            model(torch.ones(1, 9), prompt())  # a shorter mask: the same values, other shape
    c = tmp_path / "r.csv"
    proc = run_cli(g, t, "--csv", c, "--device", "cpu")
    assert proc.returncode == 1, proc.stderr  # the mask pair cannot be compared
    with open(c, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["verdict"] == "mismatch" and rows[0]["name"] == ""
    assert len(rows) > 50
    assert {"cosine", "norm_ratio", "rel_l2"} <= set(rows[0])
    assert all(float(r["cosine"]) > 0.999 for r in rows[1:])
