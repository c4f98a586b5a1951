"""fletcher32 equals libhdf5's own Fletcher-32 (read back from a chunk the filter wrote), including
odd lengths, all-zero data and the runs of 0xff whose sums wrap around 2^32; and record tables
written with it read back and are checked like any other chunk."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from accdump.errors import DumpFormatError
from accdump.store.fletcher import fletcher32
from accdump.store.schema import RECORDS, record_dtype
from accdump.store.writer import SegmentWriter


def libhdf5_checksum(tmp_path, data: np.ndarray) -> int:
    with h5py.File(tmp_path / "c.h5", "w") as f:
        ds = f.create_dataset("d", data=data, chunks=(data.size,), fletcher32=True)
        _, raw = ds.id.read_direct_chunk((0,))
    return int.from_bytes(raw[-4:], "little")


@pytest.mark.parametrize("size", [1, 2, 3, 719, 720, 721, 5001, 1 << 18])
@pytest.mark.parametrize("pattern", ["random", "ones", "zeros", "mostly-ones"])
def test_fletcher32_matches_libhdf5(tmp_path, size, pattern):
    rng = np.random.default_rng(size)
    data = {
        "random": rng.integers(0, 256, size, dtype=np.uint8),
        "ones": np.full(size, 0xFF, dtype=np.uint8),
        "zeros": np.zeros(size, dtype=np.uint8),
        "mostly-ones": np.where(rng.random(size) < 0.995, 0xFF, rng.integers(0, 256, size)).astype(np.uint8),
    }[pattern]
    assert fletcher32(data.tobytes()) == libhdf5_checksum(tmp_path, data)


def table(n: int) -> np.ndarray:
    rows = np.zeros(n, dtype=record_dtype({"name": 24, "kind": 8, "dtype": 8, "device": 4}, 2))
    rng = np.random.default_rng(n)
    rows["order"] = np.arange(n)
    rows["name"] = [f"model.layers.{i}.mlp".encode() for i in range(n)]
    rows["kind"], rows["dtype"], rows["device"] = b"Linear", b"float32", b"cpu"
    rows["ndim"], rows["shape"] = 2, rng.integers(1, 64, (n, 2))
    rows["mean"] = rng.standard_normal(n)
    rows["contiguous"] = rng.random(n) < 0.5
    rows["heap_offset"] = -1
    return rows


def test_record_tables_written_directly_read_back_and_are_checked(tmp_path):
    writer = SegmentWriter(tmp_path / "d", 0, {"format": "accdump", "format_version": 1})
    rows = table(300)
    path = writer.write(rows, [], {"steps": [0]})
    writer.write(table(0), [], {"steps": [1]})
    with h5py.File(path) as f:
        back = f[RECORDS][()]
        assert f[RECORDS].fletcher32 and back.dtype == rows.dtype and (back == rows).all()
    data = bytearray(path.read_bytes())
    at = data.find(b"model.layers.150.mlp")
    data[at] ^= 0x01  # one flipped bit inside the record table
    path.write_bytes(bytes(data))
    with pytest.raises((DumpFormatError, OSError)):
        with h5py.File(path) as f:
            f[RECORDS][()]
