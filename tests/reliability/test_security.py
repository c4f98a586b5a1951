"""Names are data: record names with '../', '/', NUL, control characters and unicode never write
outside the dump or change its files; the terminal output and the HTML report show them as text,
never as markup or escape sequences; and nothing on the read path unpickles or evaluates."""

from __future__ import annotations

import ast
import html
import json
import os
import pickle
import re
from pathlib import Path

import h5py
import pytest
import torch
from torch import nn

import accdump
from accdump.store import Role

PACKAGE = Path(accdump.__file__).resolve().parent

HOSTILE = [
    "../../../escaped",
    "../",
    "..",
    "/etc/passwd",
    "/",
    "a/../../b",
    "C:\\Windows\\evil",
    "nul\x00inside",
    "ctrl\x01\x07\x08\x7f",
    "esc\x1b[2J\x1b]0;title\x07",
    "c1\x9bcsi",
    "new\nline",
    "cr\roverwrite",
    "[bold]looks bold[/bold]",
    "broken[/x]markup",
    "<script>alert(1)</script>",
    "$\\undefinedmacro$",
    "ü日本語🙂",
    "\u202eright-to-left",
    "x" * 4096,
]

# module names: torch refuses "" and "." in them, everything else goes
MODULE_NAMES = [n for n in HOSTILE if n and "." not in n]


class Ident(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


class Hostile(nn.Module):
    def __init__(self):
        super().__init__()
        for name in MODULE_NAMES:
            self.add_module(name, Ident())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in MODULE_NAMES:
            x = getattr(self, name)(x)
        return x


def _record(path: Path, scale: float = 1.0) -> None:
    torch.manual_seed(0)
    model = Hostile()
    x = torch.randn(2, 4)
    with torch.no_grad(), accdump.record(model, path, mode="tensor") as rec:
        model(x)
        for i, name in enumerate(HOSTILE):
            accdump.probe(name, x + i)
        accdump.probe("keys", {name: x for name in HOSTILE if name})
        # the one record that diverges in the target is named like an attack on the HTML report
        accdump.probe("<script>alert(1)</script>", x * scale)
    assert rec.error is None


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec")
    (root / "sentinel").mkdir()
    _record(root / "out" / "golden")
    _record(root / "out" / "target", scale=-1.0)
    return root


def test_names_never_become_paths(recorded):
    created = sorted(str(p.relative_to(recorded)) for p in recorded.rglob("*"))
    expected_dirs = ["out", "out/golden", "out/golden/rank00000", "out/target", "out/target/rank00000"]
    files = [p for p in created if p not in expected_dirs and p != "sentinel"]
    names = [re.sub(r"seg\d{8}\.h5$", "seg*.h5", p) for p in files]  # the model's step, then the probes'
    assert set(names) == {
        f"out/{d}/rank00000/{f}" for d in ("golden", "target") for f in ("seg*.h5", "writer.lock")
    }
    assert not list((recorded / "sentinel").iterdir())
    assert not list(recorded.parent.glob("escaped*")) and not Path("/escaped").exists()
    with h5py.File(recorded / "out" / "golden" / "rank00000" / "seg00000000.h5", "r") as f:
        assert sorted(f.keys()) == ["heap", "records"]  # no group or dataset named by the user


def test_names_are_data_that_round_trips(recorded):
    dump = accdump.load(recorded / "out" / "golden")
    probes = [r.name for r in dump.records() if r.role == Role.PROBE and r.name != "keys"]
    assert probes == [*HOSTILE, "<script>alert(1)</script>"]
    modules = {r.name for r in dump.records(role=Role.OUTPUT) if r.kind == "Ident"}
    assert modules == set(MODULE_NAMES)
    assert sorted(r.arg for r in dump.records(name="keys")) == sorted(n for n in HOSTILE if n)
    for r in dump.records(name="esc*"):  # a glob still matches names with control characters
        assert r.name.startswith("esc\x1b")


def test_show_prints_names_as_text(zygote, recorded):
    res = zygote.cli("show", recorded / "out" / "golden", "*")
    assert res.rc == 0 and res.err == "", res.err
    out = res.out
    assert not any(c in out for c in "\x00\x01\x07\x08\x1b\x7f\x9b\r"), (
        "raw control characters reach the terminal"
    )
    for shown in ("esc\\x1b[2J\\x1b]0;title\\x07", "nul\\x00inside", "new\\x0aline", "c1\\x9bcsi"):
        assert shown in out, shown
    assert "[bold]looks bold[/bold]" in out and "broken[/x]markup" in out  # markup shown, not applied
    assert "<script>alert(1)</script>" in out and "ü日本語🙂" in out


def test_compare_report_escapes_names(zygote, recorded, tmp_path):
    report, data = tmp_path / "report.html", tmp_path / "report.json"
    res = zygote.cli(
        "compare", recorded / "out" / "golden", recorded / "out" / "target",
        "--device", "cpu", "--html", report, "--json", data,
    )  # fmt: skip
    assert res.rc == 1, (res.out, res.err)
    assert "<script>alert(1)</script> <-" in res.out  # the terminal names it as text
    assert not any(c in res.out for c in "\x00\x1b\x07")
    page = report.read_text()
    assert "<script" not in page.lower(), "a record name became markup in the HTML report"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)</script>" in html.unescape(page)
    result = json.loads(data.read_text())
    assert result["first_divergence"]["name"] == "<script>alert(1)</script>"


def test_html_report_of_a_dump_named_like_markup(zygote, tmp_path):
    evil = tmp_path / "<img src=x onerror=alert(1)>"
    for side, scale in (("g", 1.0), ("t", 2.0)):
        with accdump.record(None, evil / side, mode="stats"):
            accdump.probe("$\\undefinedmacro$ and [red]x[/red]", torch.ones(4) * scale)
    report = tmp_path / "r.html"
    res = zygote.cli("compare", evil / "g", evil / "t", "--device", "cpu", "--html", report)
    assert res.rc == 1 and report.exists(), res.err  # mathtext in a name does not stop the report
    page = report.read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


# --- nothing on the read path unpickles or evaluates ------------------------------------------


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


UNSAFE = {
    "eval",
    "exec",
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "yaml.load",
    "yaml.unsafe_load",
    "yaml.full_load",
    "dill.load",
    "dill.loads",
    "np.load",
    "numpy.load",
}


def test_package_never_unpickles_or_evaluates():
    found, torch_loads = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for call, func in _calls(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{call.lineno}: {func}"
            if func in UNSAFE:
                found.append(where)
            if func == "torch.load":
                kw = {k.arg: k.value for k in call.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                torch_loads.append(where)
                assert ok, f"{where}: torch.load without weights_only=True"
    assert not found, f"unsafe deserialisation or evaluation: {found}"
    # the one torch.load is the importer of .pt files, which refuses anything but tensors
    assert all("importers" in w for w in torch_loads), torch_loads


def test_read_path_calls_no_unpickler(recorded, tmp_path, monkeypatch):
    """load, show, compare and verify on real dumps with pickle and torch.load made to fail."""

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling on the read path")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    golden, target = recorded / "out" / "golden", recorded / "out" / "target"
    dump = accdump.load(golden)
    dump.meta()
    for r in dump.records():
        dump.tensor(r)
    result = accdump.compare(golden, target, device="cpu")
    assert result.exit_code == 1
    from rich.console import Console

    from accdump.cli.show import show
    from accdump.diff.report import print_summary, write_html, write_json

    console = Console(file=open(os.devnull, "w"), width=200)
    show(str(golden), "*", None, None, 1000, console)
    print_summary(result, console)
    write_html(result, tmp_path / "r.html")
    write_json(result, tmp_path / "r.json")
