"""SGLang dumper files, written here as its non-intrusive mode writes them, imported and compared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import accdump
from accdump.errors import SourceFormatError
from accdump.importers import import_dump
from accdump.importers.sglang import record_identity
from accdump.store import Role

from ._models import assert_names_bug, module_names, record_golden, run


class Dumper:
    """What sglang.srt.debug_utils.dumper writes: one `{value, meta}` .pt per dump, named by its
    tags joined by `___`, into DIR/EXP_NAME/."""

    def __init__(self, folder: Path, old: bool = False):
        self.folder, self.old = folder, old
        self.folder.mkdir(parents=True)
        self.step, self.index = 0, 0

    def dump(self, name: str, value: object, **tags: object) -> None:
        self.index += 1
        if self.old:
            head = {"forward_pass_id": self.step + 1, "rank": 0, "name": name, "dump_index": self.index}
        else:
            head = {"step": self.step, "rank": 0, "dump_index": self.index, "name": name}
            head["recompute_status"] = "disabled"
        full = {**head, **tags}
        path = self.folder / ("___".join(f"{k}={v}" for k, v in full.items()) + ".pt")
        torch.save(value if self.old else {"value": value, "meta": {**full, "world_size": 1}}, path)


def hook_non_intrusive(model: torch.nn.Module, dumper: Dumper) -> list:
    """The non-intrusive mode: every module's positional inputs and output."""
    names = module_names(model)

    def pre(mod, args):
        for i, a in enumerate(args):
            dumper.dump("non_intrusive__" + ".".join(p for p in (names[mod], f"inputs.{i}") if p), a)

    def post(mod, args, out):
        dumper.dump("non_intrusive__" + ".".join(p for p in (names[mod], "output") if p), out)

    return [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]


def test_sglang_non_intrusive_dump_names_the_planted_bug(tmp_path):
    model, steps = record_golden(tmp_path / "golden")
    dumper = Dumper(tmp_path / "dumper" / "dump_20260101_120000_000001")
    hooks = hook_non_intrusive(model, dumper)

    def between(step: int) -> None:
        dumper.step = step
        dumper.dump("scores", torch.ones(3), layer_id=1)  # a manual dump with a context tag
        dumper.dump("batch_size", 2)  # not a tensor: listed, left out

    run(model, steps, between)
    for h in hooks:
        h.remove()
    result = import_dump(tmp_path / "dumper", tmp_path / "target")  # the one experiment folder inside
    assert result.source == "sglang"
    assert any("holds no tensor (a int)" in why for _, why in result.notes.skipped)
    dump = accdump.load(tmp_path / "target")
    assert dump.steps() == [0, 1]
    probe = next(dump.records(step=1, role=Role.PROBE))
    assert (probe.name, probe.call) == ("scores@layer_id=1", 0)
    embed_in = next(dump.records(step=0, name="model.embed_tokens", role=Role.INPUT))
    assert embed_in.dtype == "int64" and embed_in.arg == "0"
    assert_names_bug(accdump.compare(tmp_path / "golden", tmp_path / "target"))


def test_old_dumper_files(tmp_path):
    dumper = Dumper(tmp_path / "sglang_dump_x", old=True)
    for step in range(2):
        dumper.step = step
        dumper.dump("non_intrusive__model.layers.0.output", torch.full((2,), float(step)))
        dumper.dump("non_intrusive__model.layers.0.output", torch.zeros(2))  # a second call
    result = import_dump(tmp_path, tmp_path / "out", preset="sglang")
    assert any("forward_pass_id" in n for n in result.notes.notes)
    recs = [(r.step, r.name, r.call, r.role) for r in accdump.load(tmp_path / "out")]
    assert recs == [(s, "model.layers.0", c, Role.OUTPUT) for s in (0, 1) for c in (0, 1)]


def test_record_identity():
    assert record_identity({"name": "non_intrusive__inputs.0"}) == ("", Role.INPUT, "0")
    assert record_identity({"name": "non_intrusive__a.b.inputs.hidden_states"}) == (
        "a.b",
        Role.INPUT,
        "hidden_states",
    )
    assert record_identity({"name": "non_intrusive__a.output.dense.output.1"}) == (
        "a.output.dense",
        Role.OUTPUT,
        "1",
    )
    tags = {"step": "0", "rank": "0", "dump_index": "4", "name": "h", "layer_id": "3"}
    assert record_identity(tags) == ("h@layer_id=3", Role.PROBE, "0")


def test_several_experiments_are_ambiguous(tmp_path):
    for exp in ("dump_a", "dump_b"):
        Dumper(tmp_path / exp).dump("x", torch.ones(1))
    with pytest.raises(SourceFormatError, match="2 SGLang dump folders"):
        import_dump(tmp_path, tmp_path / "out", preset="sglang")
