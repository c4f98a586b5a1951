"""The background thread that turns finished steps into segment files.

The main thread never waits on the device: it hands a step's host buffers and CUDA events to a
bounded queue (so memory stays bounded when the disk is slower than the run) and goes on.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time

import numpy as np
import torch

from accdump.capture.fingerprint import hex_digest
from accdump.capture.step_buffer import CHUNK_ROWS, Capture, StepPayload
from accdump.errors import AccdumpError, RecordWriteError
from accdump.ops import STATS_FIELDS
from accdump.store.dtypes import tensor_to_bytes
from accdump.store.schema import record_dtype
from accdump.store.writer import SegmentWriter

_STOP = object()


def _encoded(values: tuple[str, ...]) -> np.ndarray:
    """UTF-8 bytes of each string (`S<longest>`), encoding each distinct string once."""
    codes = {v: v.encode("utf-8") for v in set(values)}
    return np.array([codes[v] for v in values], dtype=bytes)


def _padded(tuples: tuple[tuple[int, ...], ...], ndims: np.ndarray, width: int) -> np.ndarray:
    """[n, width] int64 array of the tuples (tuple i has ndims[i] entries), padded with zeros."""
    out = np.zeros((len(tuples), width), dtype=np.int64)
    flat = itertools.chain.from_iterable(tuples)
    out[np.arange(width) < ndims[:, None]] = np.fromiter(flat, dtype=np.int64, count=int(ndims.sum()))
    return out


def payload_rows(p: StepPayload) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record table and heap pieces of one step (after its device work completed).

    Built column by column from the captures transposed at once: this runs beside the user's
    program, and per-record work would hold the GIL long enough to slow it down."""
    if not p.captures:
        return np.zeros(0, dtype=record_dtype({}, 1)), []
    n = len(p.captures)
    cols = dict(zip(Capture._fields, zip(*p.captures, strict=True), strict=True))
    stats = np.zeros((n, len(STATS_FIELDS)))
    hashes = [""] * n
    stats_index = np.asarray(cols["stats_index"], dtype=np.int64)
    hash_index = np.asarray(cols["hash_index"], dtype=np.int64)
    devices = np.asarray(cols["device"], dtype=object)
    for dev in set(cols["device"]):
        idx = np.flatnonzero(devices == dev)
        stats[idx] = torch.cat(p.stats[dev]).numpy()[stats_index[idx]]
        hashed = idx[hash_index[idx] >= 0]
        if len(hashed):
            htable = torch.cat(p.hashes[dev]).numpy()
            for i, h in zip(hashed.tolist(), htable[hash_index[hashed]].tolist(), strict=True):
                hashes[i] = hex_digest((h[0], h[1]))
    strings = {col: _encoded(cols[col]) for col in ("name", "arg", "kind", "dtype", "device")}
    strings["hash"] = _encoded(tuple(hashes))
    ndims = np.fromiter(map(len, cols["shape"]), dtype=np.int64, count=n)
    dims = max(1, int(ndims.max()))
    rows = np.zeros(n, dtype=record_dtype({col: v.dtype.itemsize for col, v in strings.items()}, dims))
    rows["step"] = p.step
    for col in ("order", "call", "role", "storage_offset", "contiguous"):
        rows[col] = cols[col]
    for col, vals in strings.items():
        rows[col] = vals
    rows["ndim"] = ndims
    rows["shape"] = _padded(cols["shape"], ndims, dims)
    rows["strides"] = _padded(cols["strides"], ndims, dims)
    for k, f in enumerate(STATS_FIELDS):
        rows[f] = stats[:, k]
    heap: list[np.ndarray] = []
    offsets = np.full(n, -1, dtype=np.int64)
    sizes = np.zeros(n, dtype=np.int64)
    offset = 0
    stored: dict[int, int] = {}  # id(host copy) -> heap offset: a tensor captured twice is stored once
    for i, t in enumerate(cols["tensor"]):
        if t is None:
            continue
        raw = tensor_to_bytes(t)
        sizes[i] = raw.size
        if id(t) in stored:
            offsets[i] = stored[id(t)]
            continue
        offsets[i] = stored[id(t)] = offset
        heap.append(raw)
        offset += raw.size
    rows["heap_offset"], rows["heap_nbytes"] = offsets, sizes
    return rows, heap


class WriterThread:
    """Writes StepPayloads in order; the first failure stops writing and is kept in `error`."""

    def __init__(self, writer: SegmentWriter, max_pending_steps: int = 2):
        self._writer = writer
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending_steps)
        self.error: AccdumpError | None = None
        self.steps_written: list[int] = []
        self.bytes_written = 0
        self.seconds_writing = 0.0  # in the writer thread: building tables and writing files
        self.seconds_fsync = 0.0
        self.seconds_stalled = 0.0  # in the caller: waiting for room in the queue
        self._thread = threading.Thread(target=self._run, name="accdump-writer", daemon=True)
        self._thread.start()

    def submit(self, payload: StepPayload) -> None:
        """Queues a step; blocks while `max_pending_steps` steps are already waiting."""
        if self.error is None:
            t0 = time.perf_counter()
            self._queue.put(payload)
            self.seconds_stalled += time.perf_counter() - t0

    def close(self) -> None:
        """Writes what is queued, then stops the thread and releases the directory lock."""
        self._queue.put(_STOP)
        self._thread.join()
        self._writer.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self.error is not None:
                continue  # drain without writing after a failure
            assert isinstance(item, StepPayload)
            try:
                for ev in item.events:
                    ev.synchronize()
                t0 = time.perf_counter()
                rows, heap = payload_rows(item)
                path = self._writer.write(rows, heap, {"steps": np.asarray([item.step], dtype=np.int64)})
                self.seconds_writing += time.perf_counter() - t0
                self.bytes_written += path.stat().st_size
                self.steps_written.append(item.step)
            except AccdumpError as exc:
                self.error = exc
            except Exception as exc:  # anything else is still a failed write, never a crash of the run
                self.error = RecordWriteError(f"writing step {item.step} failed: {type(exc).__name__}: {exc}")


__all__ = ["CHUNK_ROWS", "WriterThread", "payload_rows"]
