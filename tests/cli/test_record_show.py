"""`accdump record` around an unchanged script (in process and as a child) and `accdump show`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import accdump
from accdump.store import Role

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    for _ in range(3):
        model(torch.randn(2, 8))
    print("args", sys.argv[1:])
    sys.exit(3)
    """
)


def accdump_cli(*args: object, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accdump", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "run_model.py"
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize("how", ["in_process", "child"])
def test_record_runs_the_script_unchanged(tmp_path, script, how):
    out = tmp_path / "dump"
    command = [script, "a", "b"] if how == "in_process" else [sys.executable, script, "a", "b"]
    proc = accdump_cli("record", "-o", out, "--mode", "tensor", "--steps", "0,2", "--", *command)
    assert proc.returncode == 3, proc.stderr  # the script's own exit status
    assert "args ['a', 'b']" in proc.stdout
    dump = accdump.load(out)
    assert dump.steps() == [0, 2]
    recs = list(dump.records(step=0))
    assert {r.name for r in recs} == {"", "0", "1", "2"}
    out_rec = next(dump.records(step=2, name="2", role=Role.OUTPUT))
    assert dump.tensor(out_rec).shape == (2, 4)
    assert dump.meta()["mode"] == "tensor"


def test_record_refuses_an_existing_recording(tmp_path, script):
    out = tmp_path / "dump"
    assert accdump_cli("record", "-o", out, "--", script).returncode == 3
    proc = accdump_cli("record", "-o", out, "--", script)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("accdump: error:") and "already holds a recording" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert accdump_cli("record", "-o", out, "--overwrite", "--", script).returncode == 3


def test_show_summary_and_records(tmp_path, script):
    out = tmp_path / "dump"
    accdump_cli("record", "-o", out, "--", script)
    proc = accdump_cli("show", out)
    assert proc.returncode == 0, proc.stderr
    assert "24 records" in proc.stdout and "steps 0..2" in proc.stdout
    proc = accdump_cli("show", out, "2", "--step", "1")
    assert proc.returncode == 0
    lines = [ln for ln in proc.stdout.splitlines() if "float32" in ln]
    assert len(lines) == 2 and all(" 1 " in ln for ln in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "/nonexistent/dump"], "no such dump directory"),
        (["record", "-o", "x", "--mode", "bogus", "--", "s.py"], "unknown mode"),
        (["record", "-o", "x", "--steps", "1-a", "--", "s.py"], "bad steps specification"),
    ],
)
def test_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "s.py").write_text("print('never')\n")
    proc = accdump_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
