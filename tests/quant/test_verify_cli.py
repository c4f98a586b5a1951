"""`accdump verify` end to end: a small model of fake quantized linears (FP8 block, ModelOpt NVFP4,
compressed-tensors NVFP4) computing from a checkpoint, recorded with accdump.record, then checked
through the command line (in process) and the library. Golden runs pass; a bug planted in one
layer (a known mis-decoding, applied by the "production" module) fails that layer alone, and the
diagnosis names it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import accdump
from accdump.cli.main import main
from accdump.quant import (
    Checkpoint,
    QuantLinear,
    quantize_activation,
    quantize_fp8_blocks,
    quantize_nvfp4,
    reference_linear,
)
from accdump.quant.hypotheses import HYPOTHESES
from accdump.store import Dump

SEED = 1234
HIDDEN, FF, TOKENS = 512, 256, 8
QKV = "model.layers.0.self_attn.qkv_proj"  # FP8 block, DeepSeek names, 4 x 4 scale grid
UP = "model.layers.0.mlp.up_proj"  # NVFP4, ModelOpt names, static input_scale
DOWN = "model.layers.0.mlp.down_proj"  # NVFP4, compressed-tensors names (global scales as divisors)
LAYERS = (QKV, UP, DOWN)
HYPOTHESIS = {h.name: h for h in HYPOTHESES}


def structured(gen: torch.Generator, n: int, k: int) -> torch.Tensor:
    """Weights whose row and column magnitudes vary log-normally, so block scales differ a lot
    across the grid (a transposed grid then changes the output clearly; quant_formats.md §7.2)."""
    rows = torch.exp(0.8 * torch.randn(n, 1, generator=gen))
    cols = torch.exp(0.8 * torch.randn(1, k, generator=gen))
    return torch.randn(n, k, generator=gen) * rows * cols * 0.02


def write_checkpoint(directory: Path) -> Path:
    gen = torch.Generator().manual_seed(SEED)
    qkv = quantize_fp8_blocks(structured(gen, HIDDEN, HIDDEN))
    assert qkv.scale.shape == (4, 4)
    up = quantize_nvfp4(structured(gen, FF, HIDDEN))
    down = quantize_nvfp4(structured(gen, HIDDEN, FF))
    tensors = {
        f"{QKV}.weight": qkv.q.view(torch.float8_e4m3fn),
        f"{QKV}.weight_scale_inv": qkv.scale,
        f"{UP}.weight": up.q,
        f"{UP}.weight_scale": up.scale.view(torch.float8_e4m3fn),
        f"{UP}.weight_scale_2": torch.tensor(up.global_scale),
        f"{UP}.input_scale": torch.tensor(2.0**-5),
        f"{DOWN}.weight_packed": down.q,
        f"{DOWN}.weight_scale": down.scale.view(torch.float8_e4m3fn),
        f"{DOWN}.weight_global_scale": torch.tensor([1.0 / down.global_scale]),
        f"{DOWN}.input_global_scale": torch.tensor([2.0**5]),
        "model.layers.0.input_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
        "lm_head.weight": torch.randn(64, HIDDEN, generator=gen).bfloat16(),
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.safetensors"
    save_file(tensors, str(path))
    config = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    (directory / "config.json").write_text(json.dumps(config))
    return path


class FakeQuantLinear(nn.Module):
    """A "production" quantized linear: quantizes its input as the checkpoint says and computes
    with the checkpoint's weight, mis-decoded by `bug` (a hypothesis name) when one is set."""

    def __init__(self, layer: QuantLinear):
        super().__init__()
        self.layer = layer
        self.bug: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        x2 = x.reshape(-1, x.shape[-1])
        xin = (
            x2
            if lay.activation == "none"
            else quantize_activation(x2.float(), lay.activation, lay.input_scale)
        )
        w = lay.weight if self.bug is None else HYPOTHESIS[self.bug].apply(lay.weight)
        assert w is not None, f"{self.bug} does not apply to {lay.name}"
        return reference_linear(xin, w, lay.bias).reshape(*x.shape[:-1], -1).to(x.dtype)


class StaleOutput(nn.Module):
    """A broken kernel that returns a stale buffer whatever its input."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((*x.shape[:-1], self.n), 0.5, dtype=x.dtype)


class Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


class Block(nn.Module):
    def __init__(self, layers: dict[str, QuantLinear]):
        super().__init__()
        self.input_layernorm = Norm()
        self.self_attn = nn.Module()
        self.self_attn.qkv_proj = FakeQuantLinear(layers[QKV])
        self.mlp = nn.Module()
        self.mlp.up_proj = FakeQuantLinear(layers[UP])
        self.mlp.down_proj = FakeQuantLinear(layers[DOWN])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.self_attn.qkv_proj(self.input_layernorm(x))
        return h + self.mlp.down_proj(torch.relu(self.mlp.up_proj(h)))


class TinyQuantModel(nn.Module):
    """Module names match the checkpoint's layer prefixes (model.layers.0...)."""

    def __init__(self, layers: dict[str, QuantLinear]):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([Block(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.layers[0](x)

    def linear(self, prefix: str) -> FakeQuantLinear:
        module = self.get_submodule(prefix)
        assert isinstance(module, FakeQuantLinear)
        return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def layers(checkpoint) -> dict[str, QuantLinear]:
    found, unknown = Checkpoint(checkpoint).quantized_layers()
    assert unknown == [] and sorted(found) == sorted(LAYERS)
    assert (found[QKV].weight.format, found[QKV].activation) == ("fp8_block", "fp8_group128")
    assert (found[UP].weight.format, found[UP].activation, found[UP].input_scale) == (
        "nvfp4",
        "nvfp4",
        2.0**-5,
    )
    assert (found[DOWN].weight.format, found[DOWN].activation, found[DOWN].input_scale) == (
        "nvfp4",
        "nvfp4",
        2.0**-5,
    )
    return found


def inputs(steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED + 1)
    return [torch.randn(1, TOKENS, HIDDEN, generator=gen).bfloat16() for _ in range(steps)]


def record_run(
    layers: dict[str, QuantLinear],
    path: Path,
    bug: tuple[str, str] | None = None,
    steps: int = 1,
    bug_from_step: int = 0,
    mode: str = "tensor",
) -> Path:
    """Records `steps` forward passes; `bug` = (layer prefix, hypothesis) planted from `bug_from_step`."""
    model = TinyQuantModel(layers)
    with torch.no_grad(), accdump.record(model, path, mode=mode):
        for step, x in enumerate(inputs(steps)):
            if bug is not None and step == bug_from_step:
                model.linear(bug[0]).bug = bug[1]
            model(x)
    return path


def run_cli(capsys, monkeypatch, *args: object) -> tuple[int, str, str]:
    """`accdump ARGS...` in this process: (exit status, stdout, stderr). A --json file is removed
    first, so a report read afterwards is this run's."""
    argv = [str(a) for a in args]
    if "--json" in argv:
        Path(argv[argv.index("--json") + 1]).unlink(missing_ok=True)
    monkeypatch.setattr(sys, "argv", ["accdump", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else int(code)), out.out, out.err


def strict_json(path: Path) -> dict:
    def no_constants(c: str) -> None:
        raise AssertionError(f"{path} holds {c}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


def verdicts(report: dict) -> dict[tuple[str, int], str]:
    return {(c["name"], c["step"]): c["verdict"] for c in report["checks"]}


@pytest.fixture(scope="module")
def golden(layers, tmp_path_factory) -> Path:
    return record_run(layers, tmp_path_factory.mktemp("dumps") / "golden", steps=2)


def test_golden_run_passes_through_the_cli(checkpoint, golden, tmp_path, capsys, monkeypatch):
    report = tmp_path / "verify.json"
    code, out, err = run_cli(
        capsys,
        monkeypatch,
        "verify",
        "--checkpoint",
        checkpoint,
        "--dump",
        golden,
        "--json",
        report,
        "--device",
        "cpu",
    )
    assert code == 0, (out, err)
    assert out.splitlines()[0].startswith("OK: 6 layer calls match the reference")
    data = strict_json(report)
    assert data["exit_code"] == 0 and data["unrecognised"] == [] and data["notes"] == []
    assert verdicts(data) == {(name, step): "pass" for name in LAYERS for step in (0, 1)}
    for c in data["checks"]:
        assert c["diagnosis"] is None
        assert c["record"] == c["name"] and c["rank"] == 0
        assert c["agreement"]["cosine"] > 0.9999 and c["agreement"]["nan_mismatch"] == 0
        assert c["format"] == ("fp8_block" if c["name"] == QKV else "nvfp4")


def test_golden_run_passes_through_the_library(checkpoint, golden):
    run = accdump.verify(checkpoint, golden, device="cpu")
    assert run.exit_code == 0 and run.failed == [] and run.notes == []
    assert sorted({c.check.name for c in run.checks}) == sorted(LAYERS)
    assert all(c.check.verdict == "pass" and c.check.diagnosis is None for c in run.checks)
    # Checkpoint and Dump objects work as well as paths
    again = accdump.verify(Checkpoint(checkpoint), Dump(golden), layer=QKV, device="cpu")
    assert [(c.check.name, c.step) for c in again.checks] == [(QKV, 0), (QKV, 1)]


PLANTED = [
    (QKV, "scales-transposed"),
    (QKV, "scales-inverted"),
    (QKV, "read-as-e4m3fnuz"),
    (UP, "nibbles-swapped"),
    (UP, "scales-inverted"),
    (DOWN, "global-missing"),
    (DOWN, "nibbles-swapped"),
]


@pytest.mark.parametrize(("layer", "bug"), PLANTED, ids=[f"{b}-{lay.split('.')[-1]}" for lay, b in PLANTED])
def test_planted_bug_fails_its_layer_and_is_named(
    checkpoint, layers, tmp_path, capsys, monkeypatch, layer, bug
):
    dump = record_run(layers, tmp_path / "dump", bug=(layer, bug))
    report = tmp_path / "verify.json"
    code, out, err = run_cli(
        capsys,
        monkeypatch,
        "verify",
        "--checkpoint",
        checkpoint,
        "--dump",
        dump,
        "--json",
        report,
        "--device",
        "cpu",
    )
    assert code == 1, (out, err)
    description = HYPOTHESIS[bug].description
    first = out.splitlines()[0]
    assert first.startswith("FAIL: 1 of 3 layer calls disagree"), first
    assert f"first: {layer} (step 0): {description}" in first
    data = strict_json(report)
    assert data["exit_code"] == 1
    assert verdicts(data) == {(name, 0): ("fail" if name == layer else "pass") for name in LAYERS}
    failed = next(c for c in data["checks"] if c["name"] == layer)
    assert failed["diagnosis"] is not None, failed["tried"]
    assert failed["diagnosis"]["hypothesis"] == bug
    assert failed["diagnosis"]["description"] == description
    assert bug in failed["tried"]
    # the planted re-decoding reproduces the production output
    assert failed["diagnosis"]["agreement"]["rel_l2"] < failed["noise_floor"]
    assert failed["diagnosis"]["agreement"]["nan_mismatch"] == 0
    for c in data["checks"]:
        if c["name"] != layer:
            assert c["diagnosis"] is None


def test_planted_bug_through_the_library(checkpoint, layers, tmp_path):
    dump = record_run(layers, tmp_path / "dump", bug=(QKV, "scales-transposed"))
    run = accdump.verify(str(checkpoint), str(dump), device="cpu")
    assert run.exit_code == 1
    assert [c.check.name for c in run.failed] == [QKV]
    check = run.failed[0].check
    assert check.verdict == "fail" and check.format == "fp8_block"
    # a square grid of structured scales: transposing it is far outside the FP8 noise floor
    assert check.agreement.rel_l2 > 10 * check.noise_floor
    assert check.agreement.cosine < 0.99
    assert check.diagnosis is not None and check.diagnosis.hypothesis == "scales-transposed"
    assert "scales-transposed" not in check.diagnosis.also
    assert {c.check.name: c.check.verdict for c in run.checks} == {QKV: "fail", UP: "pass", DOWN: "pass"}


def test_stats_mode_dump_checks_nothing(checkpoint, layers, tmp_path, capsys, monkeypatch):
    dump = record_run(layers, tmp_path / "stats", mode="stats")
    report = tmp_path / "verify.json"
    code, out, err = run_cli(
        capsys,
        monkeypatch,
        "verify",
        "--checkpoint",
        checkpoint,
        "--dump",
        dump,
        "--json",
        report,
        "--device",
        "cpu",
    )
    assert code == 2, (out, err)
    assert out.startswith("NOTHING CHECKED")
    data = strict_json(report)
    assert data["checks"] == [] and data["exit_code"] == 2
    assert len(data["notes"]) == 3
    for name in LAYERS:
        note = next(n for n in data["notes"] if n.startswith(name))
        assert "recorded without tensors" in note and "--mode tensor" in note
    assert "recorded without tensors" in out


def test_layer_glob(checkpoint, layers, tmp_path, capsys, monkeypatch):
    dump = record_run(layers, tmp_path / "dump", bug=(QKV, "scales-inverted"))
    report = tmp_path / "verify.json"
    common = ("verify", "--checkpoint", checkpoint, "--dump", dump, "--json", report, "--device", "cpu")

    code, out, err = run_cli(capsys, monkeypatch, *common, "--layer", "*.mlp.*")
    assert code == 0, (out, err)  # the bug is in a layer not selected
    assert sorted(c["name"] for c in strict_json(report)["checks"]) == [DOWN, UP]

    code, out, err = run_cli(capsys, monkeypatch, *common, "--layer", "*self_attn*")
    assert code == 1, (out, err)
    assert [(c["name"], c["verdict"]) for c in strict_json(report)["checks"]] == [(QKV, "fail")]

    code, out, err = run_cli(capsys, monkeypatch, *common, "--layer", "*.o_proj")
    assert code == 2, (out, err)
    data = strict_json(report)
    assert data["checks"] == []
    assert data["notes"] == [f"no quantized layer of {checkpoint} matches '*.o_proj'"]


def test_step_filter(checkpoint, layers, tmp_path, capsys, monkeypatch):
    dump = record_run(layers, tmp_path / "dump", bug=(UP, "nibbles-swapped"), steps=2, bug_from_step=1)
    report = tmp_path / "verify.json"
    common = ("verify", "--checkpoint", checkpoint, "--dump", dump, "--json", report, "--device", "cpu")

    code, out, err = run_cli(capsys, monkeypatch, *common, "--step", "0")
    assert code == 0, (out, err)
    assert verdicts(strict_json(report)) == {(name, 0): "pass" for name in LAYERS}

    code, out, err = run_cli(capsys, monkeypatch, *common, "--step", "1")
    assert code == 1, (out, err)
    assert verdicts(strict_json(report)) == {(name, 1): ("fail" if name == UP else "pass") for name in LAYERS}
    assert f"first: {UP} (step 1)" in out.splitlines()[0]

    code, out, err = run_cli(capsys, monkeypatch, *common)
    assert code == 1, (out, err)
    data = strict_json(report)
    assert verdicts(data) == {
        (name, step): ("fail" if (name, step) == (UP, 1) else "pass") for name in LAYERS for step in (0, 1)
    }

    code, out, err = run_cli(capsys, monkeypatch, *common, "--step", "7")
    assert code == 2, (out, err)
    assert strict_json(report)["checks"] == []


@pytest.mark.parametrize("missing", ["dump", "checkpoint"])
def test_missing_path_is_one_line_on_stderr(checkpoint, golden, tmp_path, capsys, monkeypatch, missing):
    nowhere = tmp_path / f"no-such-{missing}"
    ck, dump = (nowhere, golden) if missing == "checkpoint" else (checkpoint, nowhere)
    code, out, err = run_cli(
        capsys, monkeypatch, "verify", "--checkpoint", ck, "--dump", dump, "--device", "cpu"
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("accdump: error: ") and str(nowhere) in lines[0], lines[0]
    assert "Traceback" not in err + out


def test_unrecognised_layers_are_reported_not_fatal(
    layers, golden, tmp_path, capsys, monkeypatch, checkpoint
):
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint))
    tensors["model.layers.0.mlp.gate_proj.weight_packed"] = torch.zeros(FF, HIDDEN // 8, dtype=torch.int32)
    tensors["model.layers.0.mlp.gate_proj.weight_scale"] = torch.ones(FF, HIDDEN // 128, dtype=torch.bfloat16)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    report = tmp_path / "verify.json"
    code, out, err = run_cli(
        capsys,
        monkeypatch,
        "verify",
        "--checkpoint",
        path,
        "--dump",
        golden,
        "--json",
        report,
        "--device",
        "cpu",
    )
    assert code == 0, (out, err)
    assert "not recognised" in out and "model.layers.0.mlp.gate_proj" in out
    data = strict_json(report)
    assert [u["name"] for u in data["unrecognised"]] == ["model.layers.0.mlp.gate_proj"]
    assert len(data["checks"]) == 6


def test_json_is_valid_when_the_reference_output_is_zero(checkpoint, layers, tmp_path, capsys, monkeypatch):
    model = TinyQuantModel(layers)
    model.model.layers[0].self_attn.qkv_proj = StaleOutput(HIDDEN)
    dump = tmp_path / "dump"
    with torch.no_grad(), accdump.record(model, dump, mode="tensor"):
        model(torch.zeros(1, TOKENS, HIDDEN, dtype=torch.bfloat16))  # qkv_proj's input is all zero
    report = tmp_path / "verify.json"
    code, out, err = run_cli(
        capsys,
        monkeypatch,
        "verify",
        "--checkpoint",
        checkpoint,
        "--dump",
        dump,
        "--json",
        report,
        "--layer",
        QKV,
        "--device",
        "cpu",
    )
    assert code == 1, (out, err)
    checks = strict_json(report)["checks"]
    assert [(c["name"], c["verdict"]) for c in checks] == [(QKV, "fail")]
