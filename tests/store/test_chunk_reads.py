"""Tensor bytes read straight from heap chunks: the native Fletcher-32 equals libhdf5's, every
range reads the bytes libhdf5 reads, and a damaged chunk or a foreign layout goes through libhdf5
(which reports the damage as before)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import accdump
from accdump import ops
from accdump.errors import DumpFormatError
from accdump.store import chunk_reads, reader
from accdump.store.fletcher import fletcher32

pytestmark = pytest.mark.skipif(reader._fletcher32() is None, reason="needs the native extension")
SEED = 1234


def libhdf5_checksum(tmp_path, data: np.ndarray) -> int:
    with h5py.File(tmp_path / "c.h5", "w") as f:
        ds = f.create_dataset("d", data=data, chunks=(data.size,), fletcher32=True)
        _, raw = ds.id.read_direct_chunk((0,))
    return int.from_bytes(raw[-4:], "little")


@pytest.mark.parametrize("size", [0, 1, 2, 3, 719, 720, 721, 5001, 1 << 20])
@pytest.mark.parametrize("pattern", ["random", "ones", "zeros", "mostly-ones"])
def test_native_fletcher32_matches_libhdf5_and_numpy(tmp_path, size, pattern):
    rng = np.random.default_rng(size + 7)
    data = {
        "random": rng.integers(0, 256, size, dtype=np.uint8),
        "ones": np.full(size, 0xFF, dtype=np.uint8),  # sums that wrap around 2^32
        "zeros": np.zeros(size, dtype=np.uint8),
        "mostly-ones": np.where(rng.random(size) < 0.995, 0xFF, rng.integers(0, 256, size)).astype(np.uint8),
    }[pattern]
    got = int(torch.ops.accdump.fletcher32(torch.from_numpy(data)))
    assert got == fletcher32(data.tobytes())
    if size:
        assert got == libhdf5_checksum(tmp_path, data)


def test_native_fletcher32_rejects_bad_input():
    with pytest.raises(RuntimeError, match="contiguous 1-D uint8"):
        torch.ops.accdump.fletcher32(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="contiguous 1-D uint8"):
        torch.ops.accdump.fletcher32(torch.zeros(4, 4, dtype=torch.uint8))


@pytest.fixture
def dump(tmp_path):
    gen = torch.Generator().manual_seed(SEED)
    with accdump.record(None, tmp_path / "d", mode="tensor") as rec:
        for i, n in enumerate([3, (1 << 20) // 4 + 5, 3 << 18, 777]):  # across 1 MiB chunks
            accdump.probe(f"t{i}", torch.randn(n, generator=gen))
        rec.step()
    return accdump.load(tmp_path / "d")


def _read_all_ways(dump, monkeypatch, rec, spans):
    direct = []
    for start, n in spans:
        out = np.empty(n, dtype=np.uint8)
        dump.read_into(rec, start, out)
        direct.append(out)
    monkeypatch.setattr(dump, "_chunks", lambda segment: None)  # libhdf5 only
    for (start, n), got in zip(spans, direct, strict=True):
        want = np.empty(n, dtype=np.uint8)
        dump.read_into(rec, start, want)
        assert np.array_equal(got, want), (start, n)


def test_direct_reads_equal_libhdf5_reads(dump, monkeypatch):
    used = []
    real = chunk_reads.HeapChunks.read_into
    monkeypatch.setattr(
        chunk_reads.HeapChunks, "read_into", lambda self, *a: used.append(1) or real(self, *a)
    )
    recs = list(dump.records())
    rng = np.random.default_rng(SEED)
    for rec in recs:
        size = rec.heap_nbytes
        spans = [(0, size), (0, 1), (size - 1, 1)] + [
            (int(s), int(rng.integers(1, size - s + 1))) for s in rng.integers(0, size, 6)
        ]
        _read_all_ways(dump, monkeypatch, rec, spans)
        monkeypatch.undo()
        monkeypatch.setattr(
            chunk_reads.HeapChunks, "read_into", lambda self, *a: used.append(1) or real(self, *a)
        )
    assert len(used) >= 4 * 9  # every read above took the direct path
    assert all(torch.equal(dump.tensor(r), dump.tensor(r)) for r in recs)


def test_damaged_chunk_is_reported_as_before(dump):
    rec = max(dump.records(), key=lambda r: r.heap_nbytes)
    chunks = dump._chunks(rec.segment)
    assert chunks is not None and len(chunks.offsets) >= 3
    dump.close()
    raw = bytearray(rec.segment.read_bytes())
    raw[int(chunks.offsets[1]) + 100] ^= 0x10  # one flipped bit inside a heap chunk
    rec.segment.write_bytes(bytes(raw))
    fresh = accdump.load(rec.segment.parent.parent)
    rec = max(fresh.records(), key=lambda r: r.heap_nbytes)
    out = np.empty(rec.heap_nbytes, dtype=np.uint8)
    with pytest.raises(DumpFormatError, match="cannot be read"):
        fresh.read_into(rec, 0, out)
    # the chunks before it still read
    first = (
        np.empty(chunks.chunk - rec.heap_offset, dtype=np.uint8) if rec.heap_offset < chunks.chunk else None
    )
    if first is not None:
        fresh.read_into(rec, 0, first)


def test_other_layouts_are_read_through_libhdf5(tmp_path):
    data = np.random.default_rng(SEED).integers(0, 256, 5000, dtype=np.uint8)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        plain = f.create_dataset("a", data=data)  # contiguous
        chunked = f.create_dataset("b", data=data, chunks=(1000,))  # no checksum
        both = f.create_dataset("c", data=data, chunks=(1000,), fletcher32=True, shuffle=True)
        ours = f.create_dataset("d", data=data, chunks=(1000,), fletcher32=True)
        assert chunk_reads.HeapChunks.locate(tmp_path / "plain.h5", plain) is None
        assert chunk_reads.HeapChunks.locate(tmp_path / "plain.h5", chunked) is None
        assert chunk_reads.HeapChunks.locate(tmp_path / "plain.h5", both) is None
        table = chunk_reads.HeapChunks.locate(tmp_path / "plain.h5", ours)
    assert table is not None and table.chunk == 1000 and len(table.offsets) == 5
    out = np.empty(2345, dtype=np.uint8)
    assert table.read_into(1234, out, reader._fletcher32())
    assert np.array_equal(out, data[1234 : 1234 + 2345])
    assert ops.native_available("cpu")
