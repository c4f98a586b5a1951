"""Writes one rank's dump as a series of segment files, each complete and atomically renamed.

A kill or a full disk loses at most the segment in flight: every segment is written under a
temporary name, fsynced, closed and renamed into place (atomic on POSIX), so readers only ever see
complete files. A lock file keeps two recorders out of one rank directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5p, h5s, h5t

from accdump.errors import DumpExistsError, RecordWriteError
from accdump.store.fletcher import fletcher32
from accdump.store.schema import HEAP, RECORDS, SEGMENT_GLOB

LOCK_NAME = "writer.lock"


def rank_dir_name(rank: int) -> str:
    return f"rank{rank:05d}"


_Attr = tuple[str, np.ndarray, Any, Any]


def _prepared_attrs(attrs: dict[str, Any]) -> list[_Attr]:
    """(name, value, file type, memory type) of each attribute. Strings are fixed-length UTF-8:
    variable-length ones live in HDF5's global heap, which no checksum covers, and a damaged
    length there hangs or crashes libhdf5 on read."""
    out = []
    for key, value in attrs.items():
        if isinstance(value, str):
            raw = value.encode("utf-8")
            data = np.array(raw, dtype=h5py.string_dtype("utf-8", max(1, len(raw))))
        else:
            data = np.asarray(value)
        out.append((key, data, h5py.h5t.py_create(data.dtype, logical=True), h5py.h5t.py_create(data.dtype)))
    return out


def _write_attrs(f: h5py.File, attrs: list[_Attr]) -> None:
    """Creates new root attributes through h5py's low-level API: `f.attrs[k] = v` spends about
    0.1 ms per attribute on checks and type conversions, holding the GIL beside the user's program."""
    for name, data, file_type, mem_type in attrs:
        attr = h5py.h5a.create(f.id, name.encode(), file_type, h5py.h5s.create_simple(data.shape))
        try:
            attr.write(data, mtype=mem_type)
        finally:
            attr.close()


# the HDF5 1.10 file format checksums every metadata block: a damaged segment is then reported as
# such, where the default (1.0) format lets libhdf5 parse garbage and crash
# A chunk cache that holds a few heap chunks: a tensor ending inside a chunk leaves it cached for
# the next one to fill (with libhdf5's 1 MiB default, each such chunk was written, read back and
# checksummed again).
_LIBVER: dict[str, Any] = {"libver": ("v110", "latest"), "rdcc_nbytes": 8 << 20}
IMAGE_LIMIT = 256 << 20  # segments up to this size are built in memory, then written


def _write_file(path: Path, data: bytes) -> float:
    """Writes `data` to a new file at `path` and fsyncs it (a full disk raises OSError here);
    returns the seconds the fsync took."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        t0 = time.perf_counter()
        os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def _check_room(directory: Path, nbytes: int) -> None:
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < nbytes:
        raise OSError(
            errno.ENOSPC, f"No space left on device: {nbytes} bytes needed, {free} free", str(directory)
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Writes segments seg00000000.h5, seg00000001.h5, ... into DIR/rankNNNNN."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        rank: int,
        run_attrs: dict[str, Any],
        overwrite: bool = False,
        *,
        claim: bool = True,
    ):
        """claim=False: the caller holds the directory's lock (the segment writer process)."""
        self.root, self.rank = Path(root), rank
        self.dir = self.root / rank_dir_name(rank)
        self.run_attrs = run_attrs
        self._prepared_run_attrs = _prepared_attrs(run_attrs)
        self._seq = 0
        self.seconds_fsync = 0.0
        self._record_types: dict[np.dtype, Any] = {}  # HDF5 compound types, built once per layout
        self._lock_fd = -1
        if claim:
            self._claim(overwrite)

    @property
    def lock_fd(self) -> int:
        """The descriptor holding the directory's lock (-1 when not claimed)."""
        return self._lock_fd

    def _claim(self, overwrite: bool) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RecordWriteError(f"cannot create dump directory {self.dir}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise DumpExistsError(
                f"{self.dir} is being written by another recorder (lock {self.dir / LOCK_NAME} is held)"
            ) from None
        existing = sorted(self.dir.glob(SEGMENT_GLOB))
        if existing and not overwrite:
            self.close()
            raise DumpExistsError(
                f"{self.dir} already holds a recording ({len(existing)} segment(s)); "
                "choose a new output directory or pass overwrite=True (--overwrite)"
            )
        for old in existing:
            old.unlink()

    def write(self, rows: np.ndarray, heap: list[np.ndarray], attrs: dict[str, Any]) -> Path:
        """Writes one segment: `rows` (schema.record_dtype) and the concatenated `heap` byte arrays.

        The segment is built in memory and written with plain writes (up to IMAGE_LIMIT bytes):
        libhdf5 then never meets a write error, which it does not survive (after a failed write
        on a full disk it crashes the process later, when its objects are freed). A bigger
        segment is written by libhdf5 directly, after checking that the disk has room for it."""
        final = self.dir / f"seg{self._seq:08d}.h5"
        tmp = self.dir / f".seg{self._seq:08d}.h5.tmp"
        heap_bytes = sum(int(h.size) for h in heap)
        estimate = int(rows.nbytes) + heap_bytes + (1 << 20)
        try:
            if estimate <= IMAGE_LIMIT:
                with h5py.File(tmp.name, "w", driver="core", backing_store=False, **_LIBVER) as f:
                    self._fill(f, rows, heap, heap_bytes, attrs)
                    f.flush()
                    image = f.id.get_file_image()
                self.seconds_fsync += _write_file(tmp, image)
            else:
                _check_room(self.dir, estimate)
                with h5py.File(tmp, "w", **_LIBVER) as f:
                    self._fill(f, rows, heap, heap_bytes, attrs)
                t0 = time.perf_counter()
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self.seconds_fsync += time.perf_counter() - t0
            t0 = time.perf_counter()
            os.replace(tmp, final)
            _fsync_dir(self.dir)
            self.seconds_fsync += time.perf_counter() - t0
        except Exception as exc:  # h5py reports a full disk as OSError or RuntimeError
            with contextlib.suppress(OSError):
                tmp.unlink()
            # HDF5's messages hold newlines (a ctime() stamp): the error is reported on one line
            raise RecordWriteError(f"writing {final} failed: {' '.join(str(exc).split())}") from exc
        self._seq += 1
        return final

    def _fill(
        self, f: h5py.File, rows: np.ndarray, heap: list[np.ndarray], total: int, attrs: dict[str, Any]
    ) -> None:
        segment_attrs = {**attrs, "segment": self._seq}
        _write_attrs(f, [a for a in self._prepared_run_attrs if a[0] not in segment_attrs])
        _write_attrs(f, _prepared_attrs(segment_attrs))
        self._write_records(f, rows)
        # equal chunks of at most 1 MiB: a filtered dataset stores a partial last chunk whole
        chunk = (-(-total // -(-total // (1 << 20))),) if total else None
        ds = f.create_dataset(HEAP, shape=(total,), dtype=np.uint8, chunks=chunk, fletcher32=total > 0)
        offset = 0
        for h in heap:
            if h.size:
                ds[offset : offset + h.size] = h
            offset += int(h.size)

    def _write_records(self, f: h5py.File, rows: np.ndarray) -> None:
        """The record table as one chunk with its Fletcher-32 checksum (flipped bits are reported on
        read, never returned). Written directly, checksum included: building the compound type of
        every segment and converting the rows through it cost more than the rest of the segment."""
        if len(rows) == 0:
            f.create_dataset(RECORDS, data=rows)
            return
        tid = self._record_types.get(rows.dtype)
        if tid is None:
            tid = self._record_types[rows.dtype] = h5t.py_create(rows.dtype, logical=True)
        dcpl = h5p.create(h5p.DATASET_CREATE)
        dcpl.set_chunk((len(rows),))
        dcpl.set_fletcher32()
        ds = h5d.create(f.id, RECORDS.encode(), tid, h5s.create_simple((len(rows),)), dcpl=dcpl)
        raw = np.ascontiguousarray(rows).tobytes()  # the file type mirrors the packed little-endian dtype
        ds.write_direct_chunk((0,), raw + fletcher32(raw).to_bytes(4, "little"))

    def forget_lock_after_fork(self) -> None:
        """In a forked child: closes its copy of the lock descriptor without unlocking (the lock
        belongs to the open file the parent shares), so that the lock ends with the recorder."""
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1

    def close(self) -> None:
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = -1


def json_attr(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
