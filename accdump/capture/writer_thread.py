"""The background thread that turns finished steps into segment files.

The main thread never waits on the device: it hands a step's host buffers and CUDA events to a
bounded queue (so memory stays bounded when the disk is slower than the run) and goes on.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time

import numpy as np
import torch

from accdump.capture.fingerprint import hex_digests
from accdump.capture.step_buffer import CHUNK_ROWS, Capture, StepPayload
from accdump.errors import AccdumpError, RecordWriteError
from accdump.ops import STATS_FIELDS
from accdump.store.dtypes import tensor_to_bytes
from accdump.store.schema import record_dtype
from accdump.store.writer import SegmentWriter

MAX_BATCH_STEPS = 64  # steps one segment may hold (when they queued up)


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


def _heap(tensors: list[torch.Tensor]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The heap pieces of distinct host tensors, with each one's offset and size in the heap."""
    heap = [tensor_to_bytes(t) for t in tensors]
    sizes = np.fromiter((h.size for h in heap), dtype=np.int64, count=len(heap))
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if heap else sizes
    return heap, offsets, sizes


def replay_rows(p: StepPayload) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record table and heap of a CUDA graph replay: the graph's table, built once, with this
    replay's step, statistics, fingerprints and tensors."""
    assert p.replay is not None
    template, tensors = p.replay
    rows = template.table().copy()
    rows["step"] = p.step
    for dev, (where, idx) in template.stats_rows.items():
        stats = torch.cat(p.stats[dev]).numpy()[idx]
        for k, f in enumerate(STATS_FIELDS):
            rows[f][where] = stats[:, k]
    for dev, (where, idx) in template.hash_rows.items():
        rows["hash"][where] = hex_digests(torch.cat(p.hashes[dev]).numpy()[idx])
    heap, offsets, sizes = _heap(tensors)
    buffer_of = template.buffer_of
    stored = buffer_of >= 0
    rows["heap_offset"][stored] = offsets[buffer_of[stored]]
    rows["heap_nbytes"][stored] = sizes[buffer_of[stored]]
    return rows, heap


def payload_rows(p: StepPayload) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record table and heap pieces of one step (after its device work completed).

    Built column by column from the captures transposed at once: this runs beside the user's
    program, and per-record work would hold the GIL long enough to slow it down."""
    if p.replay is not None:
        return replay_rows(p)
    if not p.captures:
        return np.zeros(0, dtype=record_dtype({}, 1)), []
    n = len(p.captures)
    cols = dict(zip(Capture._fields, zip(*p.captures, strict=True), strict=True))
    stats = np.zeros((n, len(STATS_FIELDS)))
    hashes = np.zeros(n, dtype="S1")
    stats_index = np.asarray(cols["stats_index"], dtype=np.int64)
    hash_index = np.asarray(cols["hash_index"], dtype=np.int64)
    devices = np.asarray(cols["device"], dtype=object)
    for dev in set(cols["device"]):
        idx = np.flatnonzero(devices == dev)
        stats[idx] = torch.cat(p.stats[dev]).numpy()[stats_index[idx]]
        hashed = idx[hash_index[idx] >= 0]
        if len(hashed):
            hashes = hashes.astype("S32")
            hashes[hashed] = hex_digests(torch.cat(p.hashes[dev]).numpy()[hash_index[hashed]])
    strings = {col: _encoded(cols[col]) for col in ("name", "arg", "kind", "dtype", "device")}
    strings["hash"] = hashes
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


def _payload_bytes(p: StepPayload) -> int:
    """Host memory a queued step holds: its tensor copies and statistics rows."""
    copies = {id(c.tensor): c.tensor for c in p.captures if c.tensor is not None}
    n = sum(t.numel() * t.element_size() for t in copies.values())
    n += sum(t.numel() * t.element_size() for chunks in p.stats.values() for t in chunks)
    if p.replay is not None:
        n += sum(t.numel() * t.element_size() for t in p.replay[1])
    return n + 200 * len(p.captures)


def batch_rows(tables: list[tuple[np.ndarray, list[np.ndarray]]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One record table and heap for several steps' tables (string columns widened to the
    longest, shapes padded to the most dimensions, heap offsets moved past earlier steps)."""
    if len(tables) == 1:
        return tables[0]
    rows_list = [t for t, _ in tables]
    names = rows_list[0].dtype.names or ()
    dims = max(t.dtype["shape"].shape[0] for t in rows_list)
    widths = {
        n: max(t.dtype[n].itemsize for t in rows_list) for n in names if rows_list[0].dtype[n].kind == "S"
    }
    out = np.zeros(sum(len(t) for t in rows_list), dtype=record_dtype(widths, dims))
    heap: list[np.ndarray] = []
    start = heap_base = 0
    for t, h in tables:
        part = out[start : start + len(t)]
        for n in names:
            if n in ("shape", "strides"):
                part[n][:, : t.dtype[n].shape[0]] = t[n]
            elif n == "heap_offset":
                part[n] = np.where(t[n] >= 0, t[n] + heap_base, -1)
            else:
                part[n] = t[n]
        heap += h
        heap_base += sum(int(x.size) for x in h)
        start += len(t)
    return out, heap


class WriterThread:
    """Writes StepPayloads in order; the first failure stops writing and is kept in `error`.

    Steps that queue up while a segment is being written go into the next segment together
    (up to `max_batch_steps` steps and `max_batch_bytes`): a segment costs a few milliseconds of
    HDF5 work whatever its size, and short steps (decode steps, CUDA graph replays) would
    otherwise leave the writer behind. The queue holds at most `max_pending_steps` steps and
    `max_pending_bytes` of host buffers (one step whatever its size), then submit() waits."""

    def __init__(
        self,
        writer: SegmentWriter,
        max_pending_steps: int = 32,
        max_pending_bytes: int = 512 << 20,
        max_batch_steps: int | None = None,
        max_batch_bytes: int = 64 << 20,
    ):
        self._writer = writer
        self._max_steps, self._max_bytes = max_pending_steps, max_pending_bytes
        self._max_batch_steps = MAX_BATCH_STEPS if max_batch_steps is None else max_batch_steps
        self._max_batch_bytes = max_batch_bytes
        self._cond = threading.Condition()
        self._pending: collections.deque[tuple[StepPayload | None, int]] = collections.deque()  # None: stop
        self._held_steps = 0  # queued or being written
        self._held_bytes = 0
        self.error: AccdumpError | None = None
        self.steps_written: list[int] = []
        self.segments_written = 0
        self.bytes_written = 0
        self.seconds_writing = 0.0  # in the writer thread: building tables and writing files
        self.seconds_stalled = 0.0  # in the caller: waiting for room in the queue
        self._thread = threading.Thread(target=self._run, name="accdump-writer", daemon=True)
        self._thread.start()

    def submit(self, payload: StepPayload) -> None:
        """Queues a step; blocks while the queue is full (in steps or bytes)."""
        if self.error is not None:
            return
        nbytes = _payload_bytes(payload)
        t0 = time.perf_counter()
        with self._cond:
            while self._held_steps and (
                self._held_steps >= self._max_steps or self._held_bytes + nbytes > self._max_bytes
            ):
                self._cond.wait()
            self._pending.append((payload, nbytes))
            self._held_steps += 1
            self._held_bytes += nbytes
            self._cond.notify_all()
        self.seconds_stalled += time.perf_counter() - t0

    def drain(self) -> None:
        """Waits until every queued step is written (before a CUDA graph capture: the thread then
        makes no CUDA call while the capture runs)."""
        with self._cond:
            while self._held_steps:
                self._cond.wait()

    def close(self) -> None:
        """Writes what is queued, then stops the thread and releases the directory lock."""
        with self._cond:
            self._pending.append((None, 0))
            self._cond.notify_all()
        self._thread.join()
        self._writer.close()

    def _take_batch(self) -> tuple[list[tuple[StepPayload, int]], bool]:
        """The next steps to write together, and whether the thread is to stop after them."""
        with self._cond:
            while not self._pending:
                self._cond.wait()
            batch: list[tuple[StepPayload, int]] = []
            nbytes = 0
            while self._pending and len(batch) < self._max_batch_steps:
                payload, n = self._pending[0]
                if payload is None:
                    if not batch:
                        self._pending.popleft()
                        return [], True
                    break
                if batch and nbytes + n > self._max_batch_bytes:
                    break
                self._pending.popleft()
                batch.append((payload, n))
                nbytes += n
            return batch, False

    def _run(self) -> None:
        while True:
            batch, stop = self._take_batch()
            if stop:
                return
            try:
                if self.error is None:  # after a failure: drain without writing
                    self._write([p for p, _ in batch])
            finally:
                count, released = len(batch), sum(n for _, n in batch)
                batch = []  # the steps' host buffers are freed before their room is given back
                with self._cond:
                    self._held_steps -= count
                    self._held_bytes -= released
                    self._cond.notify_all()

    def _write(self, items: list[StepPayload]) -> None:
        steps = [p.step for p in items]
        try:
            for p in items:
                for ev in p.events:
                    ev.synchronize()
            t0 = time.perf_counter()
            rows, heap = batch_rows([payload_rows(p) for p in items])
            path = self._writer.write(rows, heap, {"steps": np.asarray(steps, dtype=np.int64)})
            self.seconds_writing += time.perf_counter() - t0
            self.bytes_written += path.stat().st_size
            self.segments_written += 1
            self.steps_written.extend(steps)
        except AccdumpError as exc:
            self.error = exc
        except Exception as exc:  # anything else is still a failed write, never a crash of the run
            which = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]}"
            self.error = RecordWriteError(f"writing {which} failed: {type(exc).__name__}: {exc}")

    @property
    def seconds_fsync(self) -> float:
        return self._writer.seconds_fsync


__all__ = ["CHUNK_ROWS", "WriterThread", "payload_rows"]
