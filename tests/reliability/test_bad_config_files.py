"""Malformed renaming rules and threshold files given to `accdump compare`: exit status 2 and one
line naming the file, never a traceback, never a rule silently read as something else, never code
run from the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import accdump
from tests.reliability._zygote import assert_one_line_error


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    x = torch.randn(2, 8)
    for name in ("golden", "target"):
        with torch.no_grad(), accdump.record(model, root / name, mode="tensor"):
            model(x)
    return root / "golden", root / "target"


BAD_RULES = {
    "empty.yaml": "",
    "empty.json": "",
    "not-utf8.yaml": b"\xff\xfe- pattern: a\n\x80",
    "bad-yaml.yaml": "- pattern: [unclosed\n  replacement: x\n",
    "bad-json.json": '[{"pattern": "a", ',
    "tabs.yaml": "- pattern: a\n\treplacement: b\n",
    "top-level-number.json": "5",
    "top-level-mapping.yaml": "pattern: a\nreplacement: b\n",
    "rename-not-a-list.yaml": "rename: 5\n",
    "rule-a-string.json": '["a"]',
    "rule-three-items.json": '[["a", "b", "c"]]',
    "pattern-list.yaml": "- pattern: [a, b]\n  replacement: x\n",
    "pattern-null.yaml": "- pattern: null\n  replacement: x\n",
    "pattern-number.yaml": "- pattern: 5\n  replacement: x\n",
    "replacement-mapping.yaml": "- pattern: a\n  replacement: {x: 1}\n",
    "invalid-regex.yaml": "- pattern: '(['\n  replacement: x\n",
    "bad-group-reference.yaml": "- pattern: 'a(b)'\n  replacement: '\\9'\n",
    "unknown-group-name.yaml": "- pattern: 'a'\n  replacement: '\\g<name>'\n",
    "bad-escape.yaml": "- pattern: 'a'\n  replacement: '\\q'\n",
    "deep-nesting.json": "[" * 100_000 + "]" * 100_000,
}

BAD_THRESHOLDS = {
    "empty.yaml": "",
    "not-utf8.yaml": b"cosine: \xff\xfe\n",
    "bad-yaml.yaml": "[1, 2\n",
    "bad-json.json": '{"cosine": ',
    "a-list.yaml": "- 1\n",
    "unknown-key.yaml": "bogus: 1\n",
    "text-limit.yaml": "cosine: high\n",
    "mapping-limit.yaml": "cosine: {a: 1}\n",
    "nested-list.json": '{"cosine": [[1]]}',
    "null-limit.yaml": "cosine: null\n",
    "bool-limit.yaml": "cosine: true\n",
    "nan-limit.yaml": "cosine: .nan\n",
    "four-limits.yaml": "cosine: [0.9, 0.8, 0.7, 0.6]\n",
    "list-for-a-number.yaml": "atol: [1, 2]\n",
    "overrides-number.yaml": "overrides: 5\n",
    "overrides-text.yaml": "overrides: abc\n",
    "overrides-mapping.yaml": "overrides: {glob: a}\n",
    "override-no-glob.yaml": "overrides:\n  - cosine: 0.5\n",
    "override-glob-list.yaml": "overrides:\n  - glob: [a]\n    cosine: 0.5\n",
    "override-unknown-key.yaml": "overrides:\n  - glob: '*'\n    bogus: 1\n",
}


def _write(path, text: str | bytes) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


@pytest.mark.parametrize("name", list(BAD_RULES))
def test_malformed_rename_rules(zygote, dumps, tmp_path, name):
    f = tmp_path / name
    _write(f, BAD_RULES[name])
    assert_one_line_error(zygote.cli("compare", *dumps, "--device", "cpu", "--rename", f), f, name)


@pytest.mark.parametrize("name", list(BAD_THRESHOLDS))
def test_malformed_thresholds(zygote, dumps, tmp_path, name):
    f = tmp_path / name
    _write(f, BAD_THRESHOLDS[name])
    assert_one_line_error(zygote.cli("compare", *dumps, "--device", "cpu", "--thresholds", f), f, name)


@pytest.mark.parametrize("option", ["--rename", "--thresholds"])
@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_config_file(zygote, dumps, tmp_path, option, what):
    f = tmp_path / "rules.yaml"
    if what == "directory":
        f.mkdir()
    assert_one_line_error(zygote.cli("compare", *dumps, "--device", "cpu", option, f), f, what)


@pytest.mark.parametrize("option", ["--rename", "--thresholds"])
def test_yaml_tags_never_run_code(zygote, dumps, tmp_path, option):
    marker = tmp_path / "PWNED"
    f = tmp_path / "evil.yaml"
    f.write_text(f"- !!python/object/apply:os.system ['touch {marker}']\n")
    assert_one_line_error(zygote.cli("compare", *dumps, "--device", "cpu", option, f), f, option)
    assert not marker.exists()


def test_well_formed_files_still_work(zygote, dumps, tmp_path):
    rules, th = tmp_path / "rules.yaml", tmp_path / "th.yaml"
    rules.write_text("- pattern: '^(\\d)$'\n  replacement: '\\1'\n- ['x', 'y']\n")
    th.write_text("cosine: '0.999'\nrel_l2: [0.05]\natol: 1e-3\noverrides:\n  - glob: '2'\n    cosine: 0.9\n")
    res = zygote.cli("compare", *dumps, "--device", "cpu", "--rename", rules, "--thresholds", th)
    assert res.rc == 0 and res.err == "" and res.out.startswith("OK: no divergence"), (res.out, res.err)
