"""TensorRT-LLM's C++ debug tensors (.npy per tensor per iteration) and its PyTorch backend's
debug_mode files, written here in their layouts, imported, and compared through the shipped rules."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import accdump
from accdump.diff import RenameRules
from accdump.errors import SourceFormatError
from accdump.importers import PRESETS, import_dump
from accdump.importers.trtllm import steps_of
from accdump.store import Role

from ._models import assert_names_bug, module_names, record_golden, run

# Hugging Face module paths -> TensorRT-LLM engine names (the inverse of the shipped trtllm rules)
TO_ENGINE = [
    (r"^model\.embed_tokens", "transformer.vocab_embedding"),
    (r"^model\.norm", "transformer.ln_f"),
    (r"\.self_attn\.o_proj$", ".attention.dense"),
    (r"\.self_attn\.qkv_proj$", ".attention.qkv"),
    (r"\.self_attn$", ".attention"),
    (r"\.post_attention_layernorm$", ".post_layernorm"),
    (r"\.mlp\.gate_up_proj$", ".mlp.fused_fc"),
    (r"\.mlp\.down_proj$", ".mlp.proj"),
    (r"^model\.layers", "transformer.layers"),
]


def engine_name(name: str) -> str:
    for pattern, repl in TO_ENGINE:
        name = re.sub(pattern, repl, name)
    return name


def test_cpp_debug_tensors_name_the_planted_bug(tmp_path):
    model, steps = record_golden(tmp_path / "golden", dtype=torch.bfloat16)
    names = module_names(model)
    state = {"step": 0}

    def save(mod, args, out):  # saveNpy: bfloat16 GPU tensors become float32
        if names[mod] in ("", "model"):
            return
        folder = tmp_path / "tllm_debug" / "PP_1" / "TP_1" / f"iteration_{state['step']}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{engine_name(names[mod])}.npy", out.float().numpy())
        np.save(folder / "request_ids.npy", np.array([7, 8], dtype=np.int64))

    hooks = [m.register_forward_hook(save) for m in names]
    run(model, steps, lambda s: state.update(step=s))
    for h in hooks:
        h.remove()
    result = import_dump(tmp_path / "tllm_debug", tmp_path / "target", rank=2)
    assert result.source == "trtllm" and result.rules == PRESETS["trtllm"].rules_path
    assert any("PP_1/TP_1" in n and "rank 2" in n for n in result.notes.notes)
    dump = accdump.load(tmp_path / "target")
    assert dump.ranks == [2] and dump.steps() == [0, 1]
    rec = next(dump.records(step=0, name="transformer.layers.1.mlp.proj"))
    assert rec.dtype == "float32" and rec.role == Role.OUTPUT  # as saveNpy stored it
    # no execution order in the files: 'lm_head' sorts before 'transformer.*'; the golden run's
    # order, matched through the shipped rules, puts it last
    golden = tmp_path / "golden"
    import_dump(tmp_path / "tllm_debug", tmp_path / "ordered", order_like=golden)
    rules = RenameRules.load(PRESETS["trtllm"].rules_path)  # type: ignore[arg-type]
    assert_names_bug(accdump.compare(golden, tmp_path / "ordered", rules=rules))


def test_several_runs_are_ambiguous(tmp_path):
    for tp in (1, 2):
        folder = tmp_path / "tllm_debug" / "PP_1" / f"TP_{tp}" / "iteration_0"
        folder.mkdir(parents=True)
        np.save(folder / "logits.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(SourceFormatError, match="several runs"):
        import_dump(tmp_path, tmp_path / "out")
    result = import_dump(tmp_path / "tllm_debug" / "PP_1" / "TP_2", tmp_path / "out")
    assert result.summary.records == 1


class DebugMode:
    """What tensorrt_llm/_torch/debug/debug_hook.py's debug_mode writes: hooks on every module but
    the root; `{i}.{Name}` per level joined by '-', then `input.{arg}` before forward (positional
    tensors, named by forward's parameters in tensor-counter order) and after forward the
    arguments again then the outputs as `output.{arg}`, the counter running on."""

    def __init__(self, model: torch.nn.Module, folder: Path):
        self.folder = folder / "rank0"
        self.folder.mkdir(parents=True)
        self.names: list[str] = []
        self.indices: list[int] = []
        self.handles = []
        for name, mod in model.named_modules():
            if name:
                self.handles.append(mod.register_forward_pre_hook(self.pre))
                self.handles.append(mod.register_forward_hook(self.post))

    def pre(self, mod, args):
        self.names.append(type(mod).__name__)
        if not self.indices:
            self.indices.append(0)
        if len(self.names) >= len(self.indices):
            self.indices.append(0)
        self.indices[len(self.names) - 1] += 1
        self.dump(mod, list(args), "input")

    def post(self, mod, args, out):
        self.dump(mod, [*args, out], "output")
        self.names.pop()
        self.indices.pop()

    def dump(self, mod, tensors, kind):
        params = inspect.getfullargspec(mod.forward).args[1:]
        path = "-".join(f"{self.indices[i]}.{n}" for i, n in enumerate(self.names))
        for counter, t in enumerate(tensors):
            arg = params[counter] if counter < len(params) else str(counter)
            torch.save(t, self.folder / f"{path}-{kind}.{arg}.pt")

    def remove(self):
        for h in self.handles:
            h.remove()


def test_torch_debug_mode_names_the_planted_bug(tmp_path):
    model, steps = record_golden(tmp_path / "golden")
    debug = DebugMode(model, tmp_path / "data_dump")
    run(model, steps)
    debug.remove()
    assert (
        tmp_path / "data_dump" / "rank0" / "1.LlamaModel-3.LlamaDecoderLayer-4.GatedMLP-2.Linear-output.1.pt"
    ).exists()
    result = import_dump(tmp_path / "data_dump", tmp_path / "target")
    assert result.source == "trtllm-torch"
    assert any("4 calls of the root's children, 2 per step" in n for n in result.notes.notes)
    dump = accdump.load(tmp_path / "target")
    names = {r.name for r in dump.records(step=1)}
    assert "LlamaModel.0.LlamaDecoderLayer.1.GatedMLP.0.Linear.1" in names and "LMHead.0" in names
    rec = next(dump.records(step=0, name="LlamaModel.0.LlamaDecoderLayer.2", role=Role.OUTPUT))
    assert (rec.arg, rec.kind) == ("0", "LlamaDecoderLayer")  # the echoed argument is not an output
    rules = RenameRules.load(PRESETS["trtllm-torch"].rules_path)  # type: ignore[arg-type]
    result = accdump.compare(tmp_path / "golden", tmp_path / "target", rules=rules)
    assert_names_bug(result)
    assert not any(p.note for p in result.pairs)  # every pair by name, none by structure


def test_steps_from_the_repeating_top_level_calls():
    assert steps_of(["M", "Head", "M", "Head"], None) == 2
    assert steps_of(["B", "B", "B", "L", "B", "B", "B", "L"], None) == 4
    assert steps_of(["M", "Head", "M"], None) == 2
    assert steps_of(["B", "B", "B"], 3) == 3
