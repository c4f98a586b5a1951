"""Damaged, foreign or missing dumps raise DumpFormatError naming the file; a recording never
overwrites another one by accident."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import accdump
from accdump.store import FORMAT_NAME, FORMAT_VERSION
from accdump.store.schema import record_dtype
from accdump.store.writer import SegmentWriter

SEED = 1234
REPO = Path(accdump.__file__).resolve().parents[1]


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16)), torch.randn(4, 16)


def _record(path: Path, steps: int = 3, **kwargs) -> None:
    model, x = _model()
    with torch.no_grad(), accdump.record(model, path, mode="tensor", **kwargs) as rec:
        for i in range(steps):
            model(x + i)
    assert rec.error is None


def _read_all(path: Path) -> list[tuple]:
    """Everything a dump holds: every record's fields and every tensor's bits."""
    dump = accdump.load(path)
    dump.steps()
    out = []
    for r in dump.records():
        bits = dump.tensor(r).view(torch.uint8).tolist() if r.has_tensor else None
        out.append(
            (
                r.rank,
                r.step,
                r.order,
                r.name,
                r.call,
                r.role,
                r.arg,
                r.kind,
                r.dtype,
                r.shape,
                r.strides,
                r.storage_offset,
                r.contiguous,
                r.device,
                repr(r.stats),
                r.hash,
                bits,
            )
        )
    return out


@pytest.fixture
def good_dump(tmp_path, monkeypatch) -> Path:
    from accdump.capture import writer_thread

    with monkeypatch.context() as m:
        m.setattr(writer_thread, "MAX_BATCH_STEPS", 1)  # one segment per step, as the tests expect
        path = tmp_path / "good"
        _record(path)
    return path


def _segment(dump: Path, index: int = 1) -> Path:
    seg = dump / "rank00000" / f"seg{index:08d}.h5"
    assert seg.is_file()
    return seg


def _flip(path: Path, start: int, count: int, seed: int = SEED) -> None:
    data = bytearray(path.read_bytes())
    rnd = random.Random(seed)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= rnd.randrange(1, 256)
    path.write_bytes(bytes(data))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ACCDUMP_RECORD"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


# --- not a dump at all ----------------------------------------------------------------------


def test_missing_directory(tmp_path):
    path = tmp_path / "nope"
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(path)
    assert str(path) in str(exc.value)


def test_a_file_is_not_a_dump(good_dump):
    seg = _segment(good_dump, 0)
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(seg)
    assert str(seg) in str(exc.value)


def test_empty_directory(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(path)
    assert str(path) in str(exc.value)


# --- damaged segments -----------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.9, -1], ids=["empty", "half", "90pct", "last-byte-cut"])
def test_truncated_segment(good_dump, keep):
    seg = _segment(good_dump)
    data = seg.read_bytes()
    cut = len(data) - 1 if keep == -1 else int(len(data) * keep)
    seg.write_bytes(data[:cut])
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(good_dump)
    assert str(seg) in str(exc.value)


@pytest.mark.parametrize("mode", ["stats", "tensor"])
def test_flipped_bytes_in_the_middle_are_detected_or_harmless(tmp_path, mode):
    path = tmp_path / "d"
    model, x = _model()
    with torch.no_grad(), accdump.record(model, path, mode=mode):
        for i in range(3):
            model(x + i)
    before = _read_all(path)
    seg = _segment(path, 0)  # steps that queued up may share one segment: the first always exists
    _flip(seg, seg.stat().st_size // 2 - 16, 32)
    try:
        after = _read_all(path)
    except accdump.DumpFormatError as exc:
        assert str(seg) in str(exc)
    else:
        assert after == before, "corrupt bytes were read back as different data without an error"


def test_corrupt_tensor_bytes_are_detected(good_dump):
    seg = _segment(good_dump)
    with h5py.File(seg, "r") as f:
        heap = f["heap"]
        start = heap.id.get_offset()
        if start is None:  # chunked (checksummed) heap: corrupt its first chunk
            start = heap.id.get_chunk_info(0).byte_offset
        size = heap.id.get_storage_size()
    assert size > 64
    before = _read_all(good_dump)
    _flip(seg, start + size // 2, 8)
    with pytest.raises(accdump.DumpFormatError) as exc:
        assert _read_all(good_dump) != before  # runs only if nothing was raised
    assert str(seg) in str(exc.value)


def test_undecodable_name_raises_dump_format_error(tmp_path):
    path = tmp_path / "d"
    marker = b"UNIQUE_MARKER_NAME_0123456789"
    with accdump.record(None, path, mode="tensor"):
        accdump.probe(marker.decode(), torch.ones(4))
    seg = _segment(path, 0)
    data = seg.read_bytes()
    assert data.count(marker) == 1
    seg.write_bytes(data.replace(marker, b"\xff" + marker[1:]))
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(path)
    assert str(seg) in str(exc.value)


def test_unknown_role_value_raises_dump_format_error(good_dump):
    seg = _segment(good_dump)
    with h5py.File(seg, "r+") as f:
        rows = f["records"][...]
        rows["role"][0] = 250
        f["records"][...] = rows
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(good_dump)
    assert str(seg) in str(exc.value)


def test_tensor_read_errors_name_the_file(tmp_path):
    path = tmp_path / "d"
    with accdump.record(None, path, mode="tensor"):
        accdump.probe("x", torch.ones(4, dtype=torch.float64))
    seg = _segment(path, 0)
    data = seg.read_bytes()
    assert data.count(b"float64") == 1
    seg.write_bytes(data.replace(b"float64", b"float6X"))
    # the records table is checksummed: the damage is reported when the table is read, or at
    # the latest when the tensor is decoded; either way the message names the file
    with pytest.raises(accdump.DumpFormatError) as exc:
        dump = accdump.load(path)
        (r,) = dump.records()
        dump.tensor(r)
    assert str(seg) in str(exc.value)


def test_non_hdf5_file_named_like_a_segment(tmp_path):
    rank = tmp_path / "d" / "rank00000"
    rank.mkdir(parents=True)
    seg = rank / "seg00000000.h5"
    seg.write_text("this is not an HDF5 file\n" * 20)
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(tmp_path / "d")
    assert str(seg) in str(exc.value)


def test_foreign_hdf5_file(tmp_path):
    rank = tmp_path / "d" / "rank00000"
    rank.mkdir(parents=True)
    seg = rank / "seg00000000.h5"
    with h5py.File(seg, "w") as f:
        f.create_dataset("records", data=[1, 2, 3])
        f.attrs["format"] = "something-else"
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(tmp_path / "d")
    assert str(seg) in str(exc.value)


def test_unknown_format_version(good_dump):
    seg = _segment(good_dump)
    with h5py.File(seg, "r+") as f:
        assert int(f.attrs["format_version"]) == FORMAT_VERSION
        f.attrs["format_version"] = 999
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(good_dump)
    assert str(seg) in str(exc.value) and "999" in str(exc.value)


def test_missing_record_table(good_dump):
    seg = _segment(good_dump)
    with h5py.File(seg, "r+") as f:
        del f["records"]
    with pytest.raises(accdump.DumpFormatError) as exc:
        _read_all(good_dump)
    assert str(seg) in str(exc.value)


def test_leftover_temporary_files_are_ignored(good_dump):
    before = _read_all(good_dump)
    rank = good_dump / "rank00000"
    (rank / ".seg00000005.h5.tmp").write_bytes(os.urandom(3000))
    # even a complete segment under a temporary name is not part of the dump
    shutil.copyfile(_segment(good_dump, 0), rank / ".seg00000003.h5.tmp")
    assert _read_all(good_dump) == before
    assert accdump.load(good_dump).steps() == [0, 1, 2]


# --- one writer per directory, never over an existing recording ------------------------------


def test_second_segment_writer_is_refused_while_the_first_is_active(tmp_path):
    attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    first = SegmentWriter(tmp_path / "d", 0, attrs)
    try:
        with pytest.raises(accdump.DumpExistsError) as exc:
            SegmentWriter(tmp_path / "d", 0, attrs)
        assert "rank00000" in str(exc.value)
        with pytest.raises(accdump.DumpExistsError):
            SegmentWriter(tmp_path / "d", 0, attrs, overwrite=True)
    finally:
        first.close()
    SegmentWriter(tmp_path / "d", 0, attrs).close()  # free again once the first one closed


def test_second_recorder_in_this_process_is_refused(tmp_path):
    model, x = _model()
    with accdump.record(model, tmp_path / "d", mode="tensor") as rec:
        with pytest.raises(accdump.AccdumpError):
            accdump.record(None, tmp_path / "d", overwrite=True).start()
        model(x)
    assert rec.error is None
    assert accdump.load(tmp_path / "d").steps() == [0]


_HOLDER = """
import sys, torch, accdump
rec = accdump.record(None, sys.argv[1], mode="tensor").start()
accdump.probe("held", torch.arange(5.0))
print("ready", flush=True)
sys.stdin.readline()
rec.stop()
print("done", flush=True)
"""


def test_recorder_in_another_process_is_refused(tmp_path):
    path = tmp_path / "d"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        with pytest.raises(accdump.DumpExistsError):
            accdump.record(None, path).start()
        with pytest.raises(accdump.DumpExistsError):  # overwrite never removes a live recording
            accdump.record(None, path, overwrite=True).start()
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out.strip() == "done", err
    dump = accdump.load(path)
    (r,) = dump.records()
    assert r.name == "held" and torch.equal(dump.tensor(r), torch.arange(5.0))


def test_existing_recording_is_refused_unless_overwrite(good_dump):
    before = _read_all(good_dump)
    with pytest.raises(accdump.DumpExistsError) as exc:
        _record(good_dump, steps=1)
    assert str(good_dump) in str(exc.value) and "overwrite" in str(exc.value)
    assert _read_all(good_dump) == before  # untouched

    _record(good_dump, steps=1, overwrite=True)
    after = accdump.load(good_dump)
    assert after.steps() == [0]
    assert sorted(p.name for p in (good_dump / "rank00000").glob("seg*.h5")) == ["seg00000000.h5"]
    assert len(after) == len([r for r in before if r[1] == 0])


def test_refused_recorder_leaves_no_active_recorder(good_dump, tmp_path):
    with pytest.raises(accdump.DumpExistsError):
        accdump.record(None, good_dump).start()
    # the failed start must not hold the process-wide recorder slot
    with accdump.record(None, tmp_path / "other", mode="tensor"):
        accdump.probe("p", torch.ones(2))
    assert [r.name for r in accdump.load(tmp_path / "other").records()] == ["p"]


# --- segments too big to build in memory -----------------------------------------------------


@pytest.mark.parametrize("limit", [None, 0], ids=["in-memory", "direct"])
def test_both_write_paths_give_the_same_records_and_tensors(tmp_path, monkeypatch, limit):
    from accdump.store import writer

    if limit is not None:
        monkeypatch.setattr(writer, "IMAGE_LIMIT", limit)
    _record(tmp_path / "d")
    dump = accdump.load(tmp_path / "d")
    model, x = _model()
    recs = [r for r in dump.records(step=0) if r.name == "" and r.role == accdump.store.Role.INPUT]
    assert dump.steps() == [0, 1, 2] and recs and torch.equal(dump.tensor(recs[0]), x)
    names = sorted(p.name for p in (tmp_path / "d" / "rank00000").iterdir())
    assert names[-1] == "writer.lock" and names[0] == "seg00000000.h5"
    assert all(re.fullmatch(r"seg\d{8}\.h5", n) for n in names[:-1])  # no temporary file left


def test_a_big_segment_without_room_on_disk_is_refused_before_hdf5_writes(tmp_path, monkeypatch):
    from accdump.store import writer

    monkeypatch.setattr(writer, "IMAGE_LIMIT", 0)
    real = os.statvfs

    class Full:
        def __init__(self, st: os.statvfs_result):
            self.f_frsize, self.f_bavail = st.f_frsize, 1

    monkeypatch.setattr(writer.os, "statvfs", lambda p: Full(real(p)))
    attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    w = SegmentWriter(tmp_path / "d", 0, attrs)
    try:
        with pytest.raises(accdump.RecordWriteError, match="No space left on device: .* bytes needed") as exc:
            w.write(np.zeros(0, dtype=record_dtype({}, 1)), [np.ones(4096, dtype=np.uint8)], {"steps": [0]})
        assert "seg00000000.h5" in str(exc.value)
    finally:
        w.close()
    assert sorted(p.name for p in (tmp_path / "d" / "rank00000").iterdir()) == ["writer.lock"]
