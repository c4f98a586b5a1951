"""The scripts in examples/ run as a user runs them (subprocesses in a scratch directory, small
sizes) and do what their docstrings say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import accdump
from accdump.store import Role

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT_S = 180


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in `cwd`, offline and on one thread; stdout and stderr captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def ok(proc: subprocess.CompletedProcess[str], code: int = 0) -> str:
    """The process's stdout, after checking its exit status."""
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_cli_around_a_script(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    script = str(EXAMPLES / "cli_around_a_script.py")
    for out, args in (("golden", []), ("target", ["--bug"]), ("bf16", ["--dtype", "bfloat16"])):
        cmd = ["-m", "accdump", "record", "-o", out, "--", sys.executable, script, "--tokens", "3", *args]
        assert ok(run(cmd, tmp_path)).count("generated:") == 2
    golden = accdump.load(tmp_path / "golden")
    assert golden.steps() == [0, 1, 2]
    assert "model.layers.1.mlp.down_proj" in {r.name for r in golden.records()}

    compared = run(["-m", "accdump", "compare", "golden", "target", "--json", "result.json"], tmp_path)
    first_line = ok(compared, 1).splitlines()[0]
    assert first_line.startswith("DIVERGED at rank 0, step 0: model.layers.1.mlp.down_proj ("), first_line
    d = json.loads((tmp_path / "result.json").read_text())["first_divergence"]
    assert (d["attributed_to"], d["step"], d["role"]) == ("model.layers.1.mlp.down_proj", 0, "output")
    assert not any(p["verdict"] != "pass" for p in d["inputs"])

    bf16 = accdump.compare(tmp_path / "golden", tmp_path / "bf16", device="cpu")
    assert bf16.exit_code == 0, bf16.verdict_line()


def test_custom_generation_loop(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    script = str(EXAMPLES / "custom_generation_loop.py")
    correct = ok(run([script, "--tokens", "3", "--out", "ok"], tmp_path)).splitlines()
    assert correct[-1].startswith("OK: no divergence"), correct
    assert correct[0].replace("golden", "target") == correct[1]  # the same tokens in bfloat16

    buggy = ok(run([script, "--tokens", "3", "--out", "bug", "--bug"], tmp_path), 1).splitlines()
    assert buggy[-1].startswith("DIVERGED at rank 0, step 0: model.layers.1.self_attn.v_proj ("), buggy

    dump = accdump.load(tmp_path / "ok" / "golden")
    assert dump.steps() == [0, 1, 2]
    assert [r.step for r in dump.records(role=Role.TOKENS)] == [0, 1, 2]
    for step in range(3):
        probe = next(dump.records(step=step, name="next_token_logits"))
        lm_head = next(dump.records(step=step, name="lm_head", role=Role.OUTPUT))
        assert probe.role == Role.PROBE and probe.order > lm_head.order  # in the step of its forward


def test_probes_in_a_runner(tmp_path: Path) -> None:
    script = str(EXAMPLES / "probes_in_a_runner.py")
    correct = ok(run([script, "--tokens", "3", "--out", "ok"], tmp_path)).splitlines()
    assert correct[-1].startswith("OK: no divergence"), correct

    buggy = ok(run([script, "--tokens", "3", "--out", "bug", "--bug"], tmp_path), 1).splitlines()
    assert buggy[-1].startswith("DIVERGED at rank 0, step 0: layers.1 ("), buggy
    assert buggy[-1].endswith("between layers.1.input and layers.1.attn."), buggy

    dump = accdump.load(tmp_path / "bug" / "target")
    assert dump.steps() == [0, 1, 2]
    assert {r.role for r in dump.records()} == {Role.PROBE}
    probes = [r.name for r in dump.records(step=0)]
    layer = [f"layers.{i}.{p}" for i in range(2) for p in ("input", "attn", "mlp")]
    assert probes == ["tokens", *layer, "logits"]
