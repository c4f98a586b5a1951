"""`accdump compare` on a foreign side (--target-format / --target-pattern, --golden-*): the same
verdict, first divergence and pairs as `accdump import` then `accdump compare`, the reports naming
the source, no temporary dump left behind, and import's one-line errors with exit status 2."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import accdump
from accdump.importers import PRESETS

from ._models import BUGGY, build, module_names, plant_bug, record_golden, run
from .test_cli import cli
from .test_msprobe import write_msprobe
from .test_tensorfiles import MARKER, Evil
from .test_trtllm import DebugMode, engine_name

PATTERN = "iteration_{step}/{name}.npy"


def write_npy_tree(
    model: torch.nn.Module, steps: list[torch.Tensor], out: Path, engine: bool = False
) -> None:
    """Runs `model` saving each module's output as {out}/iteration_{step}/{name}.npy (engine=True:
    TensorRT-LLM's tllm_debug/PP_1/TP_1 tree and engine names)."""
    names = module_names(model)
    state = {"step": 0}

    def save(mod, args, output):
        if names[mod] in (("", "model") if engine else ("",)):
            return
        folder = out / ("PP_1/TP_1" if engine else "") / f"iteration_{state['step']}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{engine_name(names[mod]) if engine else names[mod]}.npy", output.float().numpy())

    hooks = [m.register_forward_hook(save) for m in names]
    run(model, steps, lambda s: state.update(step=s))
    for h in hooks:
        h.remove()


def write_source(kind: str, model: torch.nn.Module, steps: list[torch.Tensor], out: Path) -> None:
    if kind == "pattern":
        write_npy_tree(model, steps, out)
    elif kind == "msprobe":
        write_msprobe(model, steps, out, "tensor")
    elif kind == "trtllm":
        write_npy_tree(model, steps, out, engine=True)
    else:
        debug = DebugMode(model, out)
        run(model, steps)
        debug.remove()


@pytest.fixture
def tmpdir_watch(tmp_path, monkeypatch) -> Path:
    """The folder tempfile uses, to see that compare leaves nothing there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def compare_json(monkeypatch, capsys, tmp_path: Path, *args: object) -> tuple[int, str, str, dict]:
    report = tmp_path / f"report{len(list(tmp_path.glob('report*')))}.json"
    code, out, err = cli(monkeypatch, capsys, "compare", *args, "--device", "cpu", "--json", report)
    assert code in (0, 1), err
    return code, out, err, json.loads(report.read_text())


# (kind, compare's options on the target, import's options, compare's options on both ways)
CASES = [
    ("pattern", ["--target-pattern", PATTERN], ["--pattern", PATTERN], []),
    ("msprobe", ["--target-format", "msprobe"], [], []),
    ("msprobe", ["--target-format", "auto"], [], []),
    ("trtllm", ["--target-format", "trtllm", "--target-rank", "0"], ["--rank", "0"], ["trtllm"]),
    ("trtllm-torch", ["--target-format", "auto"], [], ["trtllm-torch"]),
]


@pytest.mark.parametrize(("kind", "direct", "imported", "rules"), CASES)
def test_direct_compare_equals_import_then_compare(
    tmp_path, monkeypatch, capsys, tmpdir_watch, kind, direct, imported, rules
):
    golden, src = tmp_path / "golden", tmp_path / "src"
    model, steps = record_golden(golden)
    write_source(kind, model, steps, src)
    rename = ["--rename", PRESETS[rules[0]].rules_path] if rules else []

    code, out, _, got = compare_json(monkeypatch, capsys, tmp_path, golden, src, *direct, *rename)
    assert list(tmpdir_watch.iterdir()) == []  # the temporary dump is gone
    # an orderless source takes the golden's order, as import --order-like does
    code_i, _, err = cli(
        monkeypatch, capsys, "import", src, "-o", tmp_path / "dump", *imported, "--order-like", golden
    )
    assert code_i == 0, err
    want_code, want_out, _, want = compare_json(
        monkeypatch, capsys, tmp_path, golden, tmp_path / "dump", *rename
    )

    assert code == want_code == 1
    verdict = out.splitlines()[0]
    assert verdict == want_out.splitlines()[0] and BUGGY.rsplit(".", 1)[0] in verdict
    assert got["target"] == str(src) and want["target"] == str(tmp_path / "dump")
    assert got["golden"] == want["golden"] == str(golden)
    assert got["first_divergence"] == want["first_divergence"] is not None
    assert got["pairs"] == want["pairs"] and len(got["pairs"]) > 20
    assert {k: v for k, v in got.items() if k != "target"} == {k: v for k, v in want.items() if k != "target"}
    assert "target: imported" in out and "through a temporary dump, removed" in out
    assert "accdump-compare-" not in out


def test_reports_name_the_source_and_order_note(tmp_path, monkeypatch, capsys, tmpdir_watch):
    golden, src = tmp_path / "golden", tmp_path / "src"
    model, steps = record_golden(golden)
    write_npy_tree(model, steps, src)
    html, csv = tmp_path / "r.html", tmp_path / "r.csv"
    code, out, err = cli(
        monkeypatch, capsys, "compare", golden, src, "--target-pattern", PATTERN,
        "--device", "cpu", "--html", html, "--csv", csv,
    )  # fmt: skip
    assert code == 1, err
    assert out.startswith(f"DIVERGED at rank 0, step 0: {BUGGY}")  # the answer first
    assert f"note: execution order taken from the golden {golden}" in out
    assert f"target: imported 62 records (62 tensors) from pattern {src}" in out
    text = html.read_text()
    assert f"<code>{src}</code>" in text and str(tmpdir_watch) not in text
    assert str(tmpdir_watch) not in out + csv.read_text()
    assert list(tmpdir_watch.iterdir()) == []


def test_import_dir_keeps_the_dump(tmp_path, monkeypatch, capsys, tmpdir_watch):
    golden, src, kept = tmp_path / "golden", tmp_path / "msprobe", tmp_path / "kept"
    model, steps = record_golden(golden)
    write_msprobe(model, steps, src, "statistics")
    code, out, _, got = compare_json(
        monkeypatch, capsys, tmp_path, golden, src, "--target-format", "msprobe", "--import-dir", kept
    )
    assert code == 1 and f"kept in {kept / 'target'}" in out
    assert got["target"] == str(src) and not (kept / "golden").exists()
    assert accdump.load(kept / "target").meta()["mode"] == "stats"
    assert list(tmpdir_watch.iterdir()) == []
    # the kept dump compares as it is; a second run refuses to replace it
    _, _, _, again = compare_json(monkeypatch, capsys, tmp_path, golden, kept / "target")
    assert again["pairs"] == got["pairs"]
    code, _, err = cli(
        monkeypatch, capsys, "compare", golden, src, "--target-format", "msprobe", "--import-dir", kept
    )
    assert code == 2 and err.count("\n") == 1 and "already holds a recording" in err


def test_foreign_golden_and_both_sides_foreign(tmp_path, monkeypatch, capsys, tmpdir_watch):
    model, steps = build()
    write_msprobe(model, steps, tmp_path / "gold_msprobe", "tensor")
    plant_bug(model)
    with torch.no_grad(), accdump.record(model, tmp_path / "target", mode="tensor"):
        for ids in steps:
            model(ids)
    write_npy_tree(model, steps, tmp_path / "target_npy")

    code, out, _, got = compare_json(
        monkeypatch,
        capsys,
        tmp_path,
        tmp_path / "gold_msprobe",
        tmp_path / "target",
        "--golden-format",
        "auto",
    )
    assert code == 1 and "golden: imported" in out and "target: imported" not in out
    assert cli(monkeypatch, capsys, "import", tmp_path / "gold_msprobe", "-o", tmp_path / "g")[0] == 0
    _, want_out, _, want = compare_json(monkeypatch, capsys, tmp_path, tmp_path / "g", tmp_path / "target")
    assert out.splitlines()[0] == want_out.splitlines()[0]
    assert got["golden"] == str(tmp_path / "gold_msprobe") and got["pairs"] == want["pairs"]
    assert got["first_divergence"] == want["first_divergence"] and BUGGY in out.splitlines()[0]

    # both foreign: the golden imported first, the orderless target takes its order
    code, out, _, both = compare_json(
        monkeypatch, capsys, tmp_path, tmp_path / "gold_msprobe", tmp_path / "target_npy",
        "--golden-format", "msprobe", "--target-pattern", PATTERN,
    )  # fmt: skip
    assert code == 1 and out.startswith(f"DIVERGED at rank 0, step 0: {BUGGY}")
    assert (both["golden"], both["target"]) == (str(tmp_path / "gold_msprobe"), str(tmp_path / "target_npy"))
    assert f"execution order taken from the golden {tmp_path / 'gold_msprobe'}" in out
    assert list(tmpdir_watch.iterdir()) == []


def test_accdump_dumps_are_compared_as_before(tmp_path, monkeypatch, capsys, tmpdir_watch):
    model, steps = record_golden(tmp_path / "golden")
    with torch.no_grad(), accdump.record(model, tmp_path / "target", mode="tensor"):
        for ids in steps:
            model(ids)
    _, out, _, plain = compare_json(monkeypatch, capsys, tmp_path, tmp_path / "golden", tmp_path / "target")
    _, out_auto, _, auto = compare_json(
        monkeypatch, capsys, tmp_path, tmp_path / "golden", tmp_path / "target",
        "--target-format", "auto", "--golden-format", "auto",
    )  # fmt: skip
    assert plain == auto and out.splitlines()[:-1] == out_auto.splitlines()[:-1]  # but "wrote ..."
    assert "imported" not in out
    assert list(tmpdir_watch.iterdir()) == []


def _unknown_layout(src: Path) -> None:
    (src / "notes.txt").write_text("hello")


def _corrupt(src: Path) -> None:
    torch.save(torch.ones(100), src / "a.pt")
    data = (src / "a.pt").read_bytes()
    (src / "a.pt").write_bytes(data[: len(data) // 2])


def _unsafe(src: Path) -> None:
    torch.save({"x": torch.ones(2), "obj": Evil(src.parent / MARKER)}, src / "evil.pt")


@pytest.mark.parametrize(
    ("build_src", "direct", "imported", "message"),
    [
        (_unknown_layout, ["--target-format", "auto"], [], "has no layout accdump knows"),
        (_unknown_layout, ["--target-format", "nemo"], ["--preset", "nemo"], "unknown preset 'nemo'"),
        (
            _corrupt,
            ["--target-pattern", "{name}.pt"],
            ["--pattern", "{name}.pt"],
            "not a readable torch file",
        ),
        (_unsafe, ["--target-pattern", "{name}.pt"], ["--pattern", "{name}.pt"], "evil.pt: refused"),
    ],
)
def test_bad_sources_fail_as_import_does(
    tmp_path, monkeypatch, capsys, tmpdir_watch, build_src, direct, imported, message
):
    record_golden(tmp_path / "golden")
    src = tmp_path / "src"
    src.mkdir()
    build_src(src)
    code, out, err = cli(monkeypatch, capsys, "compare", tmp_path / "golden", src, *direct)
    assert code == 2 and err.count("\n") == 1 and err.startswith("accdump: error: ") and message in err, err
    assert "Traceback" not in err + out
    code_i, _, err_i = cli(monkeypatch, capsys, "import", src, "-o", tmp_path / "out", *imported)
    assert code_i == 2 and err == err_i  # word for word what import says
    assert list(tmpdir_watch.iterdir()) == []
    assert not (tmp_path / MARKER).exists()  # the pickle never ran


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--target-format", "msprobe", "--target-pattern", PATTERN],
            "either --target-format or --target-pattern",
        ),
        (["--golden-rank", "1"], "--golden-rank reads a foreign GOLDEN: add --golden-format"),
        (["--target-dtype", "bfloat16"], "--target-dtype reads a foreign TARGET"),
    ],
)
def test_option_mistakes_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    record_golden(tmp_path / "golden")
    code, _, err = cli(monkeypatch, capsys, "compare", tmp_path / "golden", tmp_path / "golden", *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_foreign_folder_without_format_names_the_option(tmp_path, monkeypatch, capsys):
    model, steps = record_golden(tmp_path / "golden")
    write_msprobe(model, steps, tmp_path / "msprobe", "statistics")
    code, _, err = cli(monkeypatch, capsys, "compare", tmp_path / "golden", tmp_path / "msprobe")
    assert code == 2 and err.count("\n") == 1
    assert "not an accdump dump but looks like msprobe output: add --target-format msprobe" in err
