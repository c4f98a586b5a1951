"""Folders of tensor files mapped by --pattern: imported, compared, and their bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import accdump
from accdump.errors import SourceFormatError
from accdump.importers import import_dump
from accdump.importers.pattern import compile_pattern
from accdump.store import Role

from ._models import assert_names_bug, module_names, record_golden, run


def save_outputs(model, steps, path_of) -> None:
    """Runs the model saving each module's output (not the root's) where `path_of(step, name)` says."""
    names = module_names(model)
    state = {"step": 0}

    def save(mod, args, out):
        if names[mod]:
            path = path_of(state["step"], names[mod])
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".npy":
                np.save(path, out.numpy())
            elif path.suffix == ".npz":
                np.savez(path, out.numpy())  # stored as arr_0
            elif path.suffix == ".safetensors":
                save_file({"0": out.contiguous()}, str(path))
            elif names[mod].endswith("self_attn"):
                torch.save((out, torch.zeros(1)), path)  # several tensors in one file
            else:
                torch.save(out, path)

    hooks = [m.register_forward_hook(save) for m in names]
    run(model, steps, lambda s: state.update(step=s))
    for h in hooks:
        h.remove()


def test_npy_tree_pattern_names_the_planted_bug(tmp_path):
    model, steps = record_golden(tmp_path / "golden")
    src = tmp_path / "src"
    save_outputs(model, steps, lambda s, n: src / "PP_0" / "TP_0" / f"iteration_{s}" / f"{n}.npy")
    (src / "PP_0" / "notes.txt").write_text("not a tensor")
    result = import_dump(
        src,
        tmp_path / "target",
        pattern="PP_{pp}/TP_{rank}/iteration_{step}/{name}.npy",
        order_like=tmp_path / "golden",
    )
    assert result.notes.unmatched == ["PP_0/notes.txt"]
    assert result.summary.steps == {0, 1} and result.summary.ranks == {0}
    assert_names_bug(accdump.compare(tmp_path / "golden", tmp_path / "target"))


def test_mixed_files_pattern_without_suffix(tmp_path):
    model, steps = record_golden(tmp_path / "golden")
    suffix = {"model.embed_tokens": ".safetensors", "model.norm": ".npz"}
    save_outputs(
        model, steps, lambda s, n: tmp_path / "src" / f"torch_debug_step{s}_{n}{suffix.get(n, '.pt')}"
    )
    result = import_dump(tmp_path / "src", tmp_path / "target", pattern="torch_debug_step{step}_{name}")
    assert result.notes.unmatched == []
    dump = accdump.load(tmp_path / "target")
    attn = {r.arg for r in dump.records(step=0, name="model.layers.0.self_attn")}
    assert attn == {"0", "1"}  # a tuple in one .pt: one record per tensor
    assert {r.arg for r in dump.records(step=0, name="model.norm")} == {"0"}  # arr_0 of the .npz
    assert next(dump.records(step=1, name="model.embed_tokens")).has_tensor
    # without --order-like the records are in module-path order: lm_head first, then model.*
    first = min(dump.records(step=0), key=lambda r: r.order)
    assert first.name == "lm_head"
    import_dump(
        tmp_path / "src",
        tmp_path / "ordered",
        pattern="torch_debug_step{step}_{name}",
        order_like=tmp_path / "golden",
    )
    assert_names_bug(accdump.compare(tmp_path / "golden", tmp_path / "ordered"))


def test_fields_roles_calls_and_ranks(tmp_path):
    for rank in (0, 1):
        for role in ("input", "output"):
            for call in (0, 1):
                path = tmp_path / f"r{rank}" / f"{role}-{call}-blk.attn.pt"
                path.parent.mkdir(exist_ok=True)
                torch.save(torch.full((2,), float(call)), path)
    result = import_dump(tmp_path, tmp_path / "out", pattern="r{rank}/{role}-{call}-{name}.pt", rank=1)
    recs = sorted((r.rank, r.step, r.name, r.call, r.role, r.arg) for r in accdump.load(tmp_path / "out"))
    assert recs == sorted(
        (1, 0, "blk.attn", c, role, "0") for role in (Role.INPUT, Role.OUTPUT) for c in (0, 1)
    )
    assert any("no step" in n for n in result.notes.notes)


def test_calls_count_up_without_a_call_field(tmp_path):
    for i in range(3):
        torch.save(torch.ones(1) * i, tmp_path / f"x_{i}.pt")
    import_dump(tmp_path, tmp_path / "out", pattern="{name}_*.pt")
    assert [(r.name, r.call) for r in accdump.load(tmp_path / "out")] == [("x", 0), ("x", 1), ("x", 2)]


def test_unmatched_files_are_listed_and_fatal_with_strict(tmp_path):
    torch.save(torch.ones(2), tmp_path / "step0_a.pt")
    torch.save(torch.ones(2), tmp_path / "other.pt")
    result = import_dump(tmp_path, tmp_path / "out", pattern="step{step}_{name}.pt")  # out: not scanned
    assert result.notes.unmatched == ["other.pt"] and result.summary.records == 1
    with pytest.raises(SourceFormatError, match="--strict: 1 file"):
        import_dump(
            tmp_path, tmp_path.parent / f"{tmp_path.name}_out2", pattern="step{step}_{name}.pt", strict=True
        )
    assert not (tmp_path.parent / f"{tmp_path.name}_out2").exists()  # refused before writing anything


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("iteration_{step}/x.npy", "pattern field missing: {name}"),
        ("iteration_{step/{name}.npy", "malformed field"),
        ("{name}.json", "tensor files are"),
        ("nothing_{name}.pt", "no file matches"),
    ],
)
def test_bad_patterns(tmp_path, pattern, message):
    torch.save(torch.ones(1), tmp_path / "a.pt")
    with pytest.raises(SourceFormatError, match=message):
        import_dump(tmp_path, tmp_path / "out", pattern=pattern)


def test_pattern_regex():
    regex, fields, with_suffix = compile_pattern("PP_{pp}/TP_{rank}/iteration_{step}/{name}.npy")
    assert fields == {"pp", "rank", "step", "name"} and with_suffix
    m = regex.fullmatch("PP_1/TP_3/iteration_12/model.layers.0.mlp.npy")
    assert m is not None and m["rank"] == "3" and m["step"] == "12" and m["name"] == "model.layers.0.mlp"
    assert regex.fullmatch("PP_1/TP_x/iteration_12/a.npy") is None


def test_bad_input_messages_name_the_file(tmp_path):
    torch.save({"lr": 0.1}, tmp_path / "step0_opt.pt")
    with pytest.raises(SourceFormatError, match=r"step0_opt\.pt: holds no tensor \(a dict\)"):
        import_dump(tmp_path, tmp_path / "out", pattern="step{step}_{name}.pt")
    with pytest.raises(SourceFormatError, match="unknown preset 'nemo'"):
        import_dump(tmp_path, tmp_path / "out", preset="nemo")
    with pytest.raises(SourceFormatError, match="has no layout accdump knows"):
        import_dump(tmp_path, tmp_path / "out")
