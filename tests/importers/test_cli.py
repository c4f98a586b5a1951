"""`accdump import`: the summary, --list-presets, exit status 2 with one line on bad input, and
show / compare working unchanged on what it wrote."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import accdump.importers
from accdump.cli.main import main

from ._models import BUGGY, module_names, record_golden, run


def cli(monkeypatch, capsys, *args: object) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["accdump", *map(str, args)])
    code: object = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return (code if isinstance(code, int) else 0), out, err


def test_import_then_show_and_compare(tmp_path, monkeypatch, capsys):
    model, steps = record_golden(tmp_path / "golden")
    names = module_names(model)
    state = {"step": 0}

    def save(mod, args, out):
        if names[mod]:
            folder = tmp_path / "src" / f"iteration_{state['step']}"
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"{names[mod]}.npy", out.numpy())

    hooks = [m.register_forward_hook(save) for m in names]
    run(model, steps, lambda s: state.update(step=s))
    for h in hooks:
        h.remove()
    code, out, err = cli(
        monkeypatch, capsys, "import", tmp_path / "src", "-o", tmp_path / "target",
        "--pattern", "iteration_{step}/{name}.npy", "--order-like", tmp_path / "golden",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("Imported 62 records (62 tensors) from pattern")
    assert "float32 (.npy)" in out and ".npy cannot hold bfloat16" in out
    code, out, _ = cli(monkeypatch, capsys, "show", tmp_path / "target", "model.layers.1.*")
    assert code == 0 and BUGGY in out
    code, out, _ = cli(monkeypatch, capsys, "compare", tmp_path / "golden", tmp_path / "target")
    assert code == 1 and f"DIVERGED at rank 0, step 0: {BUGGY}" in out


def test_list_presets(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "import", "--list-presets")
    assert code == 0
    flat = re.sub(r"[\s│┃|]", "", out)  # long cells wrap (or are cut) inside the table
    for name in ("msprobe", "sglang", "trtllm", "trtllm-torch"):
        assert name in flat
    rules = Path(accdump.importers.__file__).parent / "rules"
    assert (rules / "trtllm_torch.yaml").is_file() and (rules / "msprobe.yaml").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nemo"], "unknown preset 'nemo'"),
        (["--pattern", "step{step}.pt"], "pattern field missing: {name}"),
        (["--pattern", "{name}.pt"], "holds no tensor (a dict)"),
        (["--pattern", "{name}.pt", "--dtype", "bfloat17"], "--dtype bfloat17: not a torch dtype"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, monkeypatch, capsys, args, message):
    torch.save({"lr": 0.1}, tmp_path / "opt.pt")
    code, out, err = cli(monkeypatch, capsys, "import", tmp_path, "-o", tmp_path / "out", *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert err.startswith("accdump: error: ")


def test_missing_output_is_a_usage_error(tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "import", tmp_path)
    assert code == 2 and "-o/--output" in err
