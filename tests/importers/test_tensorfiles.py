"""Tensor files: dtypes survive bit for bit, raw .npy values take --dtype, unsafe pickles and paths
leaving the source are refused."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import accdump
from accdump.errors import SourceFormatError, UnsafeFileError
from accdump.importers import import_dump
from accdump.importers.records import ImportNotes
from accdump.importers.tensorfiles import load_tensors


def imported(tmp_path: Path, **kw) -> dict[str, torch.Tensor]:
    result = import_dump(tmp_path / "src", tmp_path / "out", pattern="{name}", **kw)
    dump = accdump.load(tmp_path / "out")
    tensors = {f"{r.name}:{r.arg}": dump.tensor(r) for r in dump}
    tensors["_notes"] = result.notes  # type: ignore[assignment]
    return tensors


def write_raw_npy(path: Path, descr: str, shape: tuple[int, ...], raw: bytes) -> None:
    """A .npy as TensorRT-LLM's saveNpy writes it for types NumPy lacks (descr 'x')."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + raw)


def test_low_precision_dtypes_survive(tmp_path):
    (tmp_path / "src").mkdir()
    gen = torch.Generator().manual_seed(0)
    bf16 = torch.randn(3, 5, generator=gen).to(torch.bfloat16)
    fp8 = torch.randn(4, 4, generator=gen).to(torch.float8_e4m3fn)
    torch.save({"w": bf16, "q": fp8}, tmp_path / "src" / "ckpt.pt")
    save_file({"x": bf16, "y": fp8}, str(tmp_path / "src" / "st.safetensors"))
    got = imported(tmp_path)
    for key, want in (("ckpt:w", bf16), ("ckpt:q", fp8), ("st:x", bf16), ("st:y", fp8)):
        assert got[key].dtype == want.dtype and torch.equal(
            got[key].view(torch.uint8), want.view(torch.uint8)
        ), key


def test_npy_dtype_is_reported_and_reinterpreted(tmp_path):
    (tmp_path / "src").mkdir()
    bf16 = torch.randn(2, 3).to(torch.bfloat16)
    np.save(tmp_path / "src" / "bits.npy", bf16.view(torch.int16).numpy().view(np.uint16))
    np.save(tmp_path / "src" / "upcast.npy", bf16.float().numpy())
    got = imported(tmp_path)
    assert got["bits:0"].dtype == torch.uint16 and got["upcast:0"].dtype == torch.float32
    got = imported(tmp_path, dtype="bfloat16", overwrite=True)
    assert torch.equal(got["bits:0"], bf16) and got["upcast:0"].dtype == torch.float32  # floats never cast
    dtypes = got["_notes"].dtypes  # type: ignore[attr-defined]
    assert dtypes[("uint16 (.npy)", "bfloat16", "reinterpreted bits (--dtype)")] == 1
    assert dtypes[("float32 (.npy)", "float32", "kept: --dtype reinterprets only raw 2-byte values")] == 1


def test_raw_npy_needs_dtype(tmp_path):
    (tmp_path / "src").mkdir()
    bf16 = torch.randn(2, 3).to(torch.bfloat16)
    write_raw_npy(tmp_path / "src" / "host.npy", "x", (2, 3), bf16.view(torch.uint8).numpy().tobytes())
    with pytest.raises(SourceFormatError, match=r"host\.npy: holds raw 2-byte values.*pass --dtype"):
        imported(tmp_path)
    with pytest.raises(SourceFormatError, match="4-byte ones"):
        imported(tmp_path, dtype="float32")
    assert torch.equal(imported(tmp_path, dtype="bfloat16")["host:0"], bf16)


def test_npy_layouts(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    notes = ImportNotes()
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.save(tmp_path / "be.npy", a.astype(">f4"))
    for name in ("f", "be"):
        ((_, t),) = load_tensors(tmp_path / f"{name}.npy", None, notes)
        assert torch.equal(t, torch.from_numpy(a)), name
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="object array"):
        load_tensors(tmp_path / "obj.npy", None, notes)


MARKER = "pwned.txt"


def _touch(path: str) -> None:
    Path(path).write_text("code ran")


class Evil:
    """Unpickling this would call _touch(marker) — it is what a malicious .pt does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_pickled_objects_are_refused_without_running_them(tmp_path):
    (tmp_path / "src").mkdir()
    marker = tmp_path / MARKER
    torch.save({"x": torch.ones(2), "obj": Evil(marker)}, tmp_path / "src" / "evil.pt")
    with pytest.raises(
        UnsafeFileError, match=r"evil\.pt: refused: it needs .*_touch, which is neither a tensor.*re-save"
    ):
        import_dump(tmp_path / "src", tmp_path / "out", pattern="{name}.pt")
    assert not marker.exists()
    torch.load(tmp_path / "src" / "evil.pt", weights_only=False)  # what a full unpickling would do
    assert marker.read_text() == "code ran"


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_paths_never_leave_the_source(tmp_path):
    src, outside = tmp_path / "src", tmp_path / "outside"
    src.mkdir()
    outside.mkdir()
    torch.save(torch.ones(2), src / "a.pt")
    torch.save(torch.ones(2), outside / "secret.pt")
    (src / "link.pt").symlink_to(outside / "secret.pt")
    (src / "inner.pt").symlink_to(src / "a.pt")  # stays inside: fine
    (src / "dir").symlink_to(outside, target_is_directory=True)
    result = import_dump(src, tmp_path / "out", pattern="{name}.pt")
    names = {r.name for r in accdump.load(tmp_path / "out")}
    assert names == {"a", "inner"}
    why = dict(result.notes.skipped)
    assert why[str(src / "link.pt")] == "symbolic link leading outside the source folder"
    assert why[str(src / "dir")] == "symbolic link to a folder: not followed"
    with pytest.raises(SourceFormatError, match="--strict"):
        import_dump(src, tmp_path / "out2", pattern="{name}.pt", strict=True)
