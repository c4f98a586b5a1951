"""msProbe dumps: written here in msProbe's layout (statistics and tensor tasks), and by msProbe
itself when it is installed; imported, then compared with an accdump recording of the same model."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import accdump
from accdump.errors import SourceFormatError
from accdump.importers import import_dump
from accdump.importers.msprobe import stats_of
from accdump.store import Role

from ._models import assert_names_bug, module_names, record_golden, run

REPO = Path(__file__).resolve().parents[2]


def _leaf(t: torch.Tensor, data_name: str | None) -> dict:
    leaf = {"type": "torch.Tensor", "dtype": str(t.dtype), "shape": list(t.shape)}
    leaf |= {"Max": t.max().item(), "Min": t.min().item(), "Mean": None, "Norm": None}
    if t.is_floating_point():
        leaf |= {"Mean": t.mean().item(), "Norm": t.norm().item()}
    leaf["requires_grad"] = t.requires_grad
    if data_name:
        leaf["data_name"] = data_name
    return leaf


def write_msprobe(model: torch.nn.Module, steps: list[torch.Tensor], out: Path, task: str) -> None:
    """Runs `model` writing what msProbe's L0 dump writes: step{N}/rank0/dump.json (entries
    `Module.{path}.{Class}.forward.{call}` at forward end, the root not hooked), construct.json and,
    for task "tensor", dump_tensor_data/{entry}.{input|output}.{i}.pt."""
    names = module_names(model)
    state: dict = {}

    def save(t: torch.Tensor, key: str) -> dict:
        name = f"{key}.pt" if task == "tensor" else None
        if name:
            torch.save(t.detach().clone(), state["dir"] / "dump_tensor_data" / name)
        return _leaf(t, name)

    def pre(mod, args):
        key = f"Module.{names[mod]}.{type(mod).__name__}.forward"
        call = state["calls"].get(key, -1) + 1
        state["calls"][key] = call
        state["stack"].append((f"{key}.{call}", [a.detach().clone() for a in args]))

    def post(mod, args, output):
        key, inputs = state["stack"].pop()
        state["construct"][key] = state["stack"][-1][0] if state["stack"] else None
        state["data"][key] = {
            "input_args": [save(t, f"{key}.input.{i}") for i, t in enumerate(inputs)],
            "input_kwargs": {},
            "output": [save(output, f"{key}.output.0")],
            "parameters": {
                p: save(v, f"{key}.parameters.{p}") for p, v in mod.named_parameters(recurse=False)
            },
        }

    def start(step: int) -> None:
        flush()
        state.update(dir=out / f"step{step}" / "rank0", calls={}, stack=[], data={}, construct={})
        (state["dir"] / "dump_tensor_data").mkdir(parents=True, exist_ok=True)

    def flush() -> None:
        if "dir" in state:
            dump = {"task": task, "level": "L0", "framework": "pytorch", "dump_data_dir": None}
            (state["dir"] / "dump.json").write_text(json.dumps({**dump, "data": state["data"]}))
            (state["dir"] / "construct.json").write_text(json.dumps(state["construct"]))

    handles = [m.register_forward_pre_hook(pre) for m in names if m is not model]
    handles += [m.register_forward_hook(post) for m in names if m is not model]
    run(model, steps, start)
    flush()
    for h in handles:
        h.remove()


@pytest.mark.parametrize("task", ["statistics", "tensor"])
def test_msprobe_layout_names_the_planted_bug(tmp_path, task):
    model, steps = record_golden(tmp_path / "golden")
    write_msprobe(model, steps, tmp_path / "msprobe", task)
    result = import_dump(tmp_path / "msprobe", tmp_path / "target")  # preset detected
    assert result.source == "msprobe"
    dump = accdump.load(tmp_path / "target")
    assert dump.steps() == [-1, 0, 1]  # parameters once, then the steps
    assert dump.meta()["mode"] == ("stats" if task == "statistics" else "tensor")
    rec = next(dump.records(step=0, name="model.layers.1.mlp", role=Role.OUTPUT))
    assert rec.kind == "GatedMLP" and rec.call == 0 and rec.arg == "0"
    assert rec.has_tensor == (task == "tensor")
    if task == "statistics":
        assert math.isnan(rec.stats.std) and rec.stats.l2norm > 0 and rec.stats.absmax > 0
        assert any("no Norm (int64)" in why for _, why in result.notes.skipped)  # the token ids
    assert_names_bug(accdump.compare(tmp_path / "golden", tmp_path / "target"))


def test_module_and_api_names(tmp_path):
    rank = tmp_path / "step0" / "rank3"
    rank.mkdir(parents=True)
    t = torch.arange(6.0).reshape(2, 3)
    data = {
        "Module.model.layers.2.self_attn.LlamaAttention.forward.0": {"output": [_leaf(t, None)]},
        "Functional.softmax.3.forward": {"input_args": [_leaf(t, None), {"type": "int", "value": -1}]},
        "Torch.matmul.0.forward": {"output": [_leaf(t, None)]},
        "Module.model.LlamaModel.backward.0": {"input": [_leaf(t, None)]},
    }
    (rank / "dump.json").write_text(json.dumps({"task": "statistics", "level": "mix", "data": data}))
    parent = "Module.model.layers.2.self_attn.LlamaAttention.forward.0"
    (rank / "construct.json").write_text(json.dumps({"Functional.softmax.3.forward": parent}))
    result = import_dump(tmp_path, tmp_path / "out", preset="msprobe")
    recs = {(r.name, r.call, r.role, r.arg, r.kind) for r in accdump.load(tmp_path / "out")}
    assert recs == {
        ("model.layers.2.self_attn", 0, Role.OUTPUT, "0", "LlamaAttention"),
        ("model.layers.2.self_attn/Functional.softmax", 3, Role.INPUT, "0", "Functional.softmax"),
        ("Torch.matmul", 0, Role.OUTPUT, "0", "Torch.matmul"),
    }
    assert accdump.load(tmp_path / "out").ranks == [3]
    assert any("backward" in n for n in result.notes.notes)


def test_statistics_fill_what_is_known():
    s = stats_of({"shape": [2, 3], "Max": 3.0, "Min": 1.0, "Mean": 2.0, "Norm": 5.0})
    assert s == {
        "count": 6,
        "l2norm": 5.0,
        "min": 1.0,
        "max": 3.0,
        "absmax": 3.0,
        "zeros": 0.0,
        "mean": 2.0,
        "sum": 12.0,
    }
    assert stats_of({"shape": [4], "Max": float("nan"), "Min": 0.0, "Mean": None, "Norm": None}) == {
        "count": 4,
        "nan": 1.0,
    }
    assert stats_of({"shape": [4], "Max": float("inf"), "Min": 0.0, "Norm": float("inf")})["posinf"] == 1.0
    assert stats_of({"shape": [4], "Max": 7, "Min": 0, "Mean": None, "Norm": None}) is None  # integers


def test_target_nan_is_catastrophic_in_stats_only_compare(tmp_path):
    model, steps = record_golden(tmp_path / "golden")
    write_msprobe(model, steps, tmp_path / "msprobe", "statistics")
    path = tmp_path / "msprobe" / "step0" / "rank0" / "dump.json"
    dump = json.loads(path.read_text())
    key = next(k for k in dump["data"] if k.startswith("Module.model.layers.0.mlp.down_proj."))
    dump["data"][key]["output"][0] |= {"Max": float("nan"), "Min": float("nan")}
    path.write_text(json.dumps(dump))
    import_dump(tmp_path / "msprobe", tmp_path / "target")
    d = accdump.compare(tmp_path / "golden", tmp_path / "target").first_divergence
    assert d is not None and d.pair.golden.name == "model.layers.0.mlp.down_proj"
    assert d.pair.metrics is not None and d.pair.metrics.new_nan == 1


def test_data_name_leaving_the_dump_is_refused(tmp_path):
    rank = tmp_path / "step0" / "rank0"
    (rank / "dump_tensor_data").mkdir(parents=True)
    torch.save(torch.ones(2), tmp_path / "outside.pt")
    leaf = _leaf(torch.ones(2), "../../../outside.pt")
    data = {"Module.fc.Linear.forward.0": {"output": [leaf]}}
    (rank / "dump.json").write_text(json.dumps({"task": "tensor", "level": "L0", "data": data}))
    with pytest.raises(SourceFormatError, match="points outside"):
        import_dump(tmp_path, tmp_path / "out")


MSPROBE_RUN = textwrap.dedent(
    """
    import json, sys, torch
    from msprobe.pytorch import PrecisionDebugger
    from tests.importers._models import build, plant_bug
    out, task = sys.argv[1], sys.argv[2]
    model, steps = build()
    plant_bug(model)
    cfg = {"task": task, "dump_path": out, "rank": [], "step": [], "level": "L0",
           task: {"scope": [], "list": [], "data_mode": ["all"]}}
    json.dump(cfg, open(out + ".json", "w"))
    debugger = PrecisionDebugger(config_path=out + ".json")
    for ids in steps:
        debugger.start(model=model)
        with torch.no_grad():
            model(ids)
        debugger.stop()
        debugger.step()
    """
)


@pytest.mark.skipif(
    importlib.util.find_spec("msprobe") is None, reason="msProbe (mindstudio-probe) not installed"
)
@pytest.mark.parametrize("task", ["statistics", "tensor"])
def test_real_msprobe_dump(tmp_path, task):
    """msProbe itself (in a child process: it patches torch) dumps the buggy run on the CPU."""
    record_golden(tmp_path / "golden")
    out = tmp_path / "msprobe"
    proc = subprocess.run(
        [sys.executable, "-c", MSPROBE_RUN, str(out), task],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["step0", "step1"]
    result = import_dump(out, tmp_path / "target")
    assert result.source == "msprobe", importlib.metadata.version("mindstudio-probe")
    assert result.summary.tensors == (result.summary.records if task == "tensor" else 0)
    assert_names_bug(accdump.compare(tmp_path / "golden", tmp_path / "target"))
