"""The background thread that turns finished steps into segment files.

The main thread never waits on the device: it hands a step's host buffers and CUDA events to a
bounded queue (so memory stays bounded when the disk is slower than the run) and goes on.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from accdump.capture.fingerprint import hex_digest
from accdump.capture.step_buffer import CHUNK_ROWS, StepPayload
from accdump.errors import AccdumpError, RecordWriteError
from accdump.ops import STATS_FIELDS
from accdump.store.dtypes import tensor_to_bytes
from accdump.store.schema import record_dtype
from accdump.store.writer import SegmentWriter

_STOP = object()


def _encoded(values: list[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=object)


def payload_rows(p: StepPayload) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record table and heap pieces of one step (after its device work completed).

    Built column by column: this runs beside the user's program, and per-field work would hold
    the GIL long enough to slow it down."""
    caps = p.captures
    n = len(caps)
    strings = {
        col: _encoded([getattr(c, col) for c in caps]) for col in ("name", "arg", "kind", "dtype", "device")
    }
    hashes = [""] * n
    stats = np.zeros((n, len(STATS_FIELDS)))
    by_device: dict[str, list[int]] = {}
    for i, c in enumerate(caps):
        by_device.setdefault(c.device, []).append(i)
    for dev, idx in by_device.items():
        table = torch.cat(p.stats[dev]).numpy()
        stats[idx] = table[[caps[i].stats_index for i in idx]]
        hashed = [i for i in idx if caps[i].hash_index >= 0]
        if hashed:
            htable = torch.cat(p.hashes[dev]).numpy()
            for i in hashed:
                h = htable[caps[i].hash_index]
                hashes[i] = hex_digest((int(h[0]), int(h[1])))
    strings["hash"] = _encoded(hashes)
    widths = {col: max((len(v) for v in vals), default=1) for col, vals in strings.items()}
    max_ndim = max((len(c.shape) for c in caps), default=1)
    rows = np.zeros(n, dtype=record_dtype(widths, max_ndim))
    if n == 0:
        return rows, []
    rows["step"] = p.step
    for col in ("order", "call", "role", "storage_offset", "contiguous"):
        rows[col] = [getattr(c, col) for c in caps]
    for col, vals in strings.items():
        rows[col] = vals
    rows["ndim"] = [len(c.shape) for c in caps]
    shape = rows["shape"]
    strides = rows["strides"]
    for i, c in enumerate(caps):
        k = len(c.shape)
        if k:
            shape[i, :k] = c.shape
            strides[i, :k] = c.strides
    for k, f in enumerate(STATS_FIELDS):
        rows[f] = stats[:, k]
    heap: list[np.ndarray] = []
    offsets = np.full(n, -1, dtype=np.int64)
    sizes = np.zeros(n, dtype=np.int64)
    offset = 0
    stored: dict[int, int] = {}  # id(host copy) -> heap offset: a tensor captured twice is stored once
    for i, c in enumerate(caps):
        if c.tensor is None:
            continue
        raw = tensor_to_bytes(c.tensor)
        sizes[i] = raw.size
        if id(c.tensor) in stored:
            offsets[i] = stored[id(c.tensor)]
            continue
        offsets[i] = stored[id(c.tensor)] = offset
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
