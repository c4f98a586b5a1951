"""Segment files written by a child process, so that HDF5 work never holds the recorder's GIL.

libhdf5 runs under h5py's lock and holds the interpreter lock while it builds a segment: in the
recording process every millisecond of it is a millisecond the user's program waits. The
recorder's writer thread therefore builds each segment's record table (NumPy, a fraction of the
cost) and hands it with the heap bytes to a child process over a pipe, which writes the segment
and answers with its path or the error. Messages are JSON headers and raw array bytes (nothing is
unpickled); the child imports NumPy and h5py, not torch.

Tensor bytes (a heap of 1 MiB or more) do not go through the pipe, which moves a few hundred MB/s at best: the
writer thread copies them into a shared memory file (memfd) that the child maps, and the child
writes the segment's heap from there in one piece. The child has it mapped before the message
that describes it arrives, so a recorder killed after sending still leaves the child everything
it needs. Without memfd the bytes go through the pipe.

The parent keeps the rank directory's lock and passes the locked descriptor on: the lock is
held until both have closed it. A killed parent leaves the child to finish the segment in
hand (it then reads the end of its pipe and exits), and SIGINT is ignored by the child, so a
Ctrl-C lets the recorder flush the open step through it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from accdump.errors import AccdumpError, RecordWriteError
from accdump.store.record_table import StepColumns, batch_tables, build_table, from_wire, to_wire
from accdump.store.writer import SegmentWriter

_HEADER = struct.Struct("<Q")
_PIPE_BYTES = 1 << 20  # a larger pipe: fewer system calls for the heap of a tensor-mode step
_F_SETPIPE_SZ = 1031
_IOV_MAX = 1024
_ARENA_MIN_HEAP = 1 << 20  # smaller heaps go through the pipe, which is fast enough for them
Parts = list[tuple[StepColumns, list[np.ndarray]]]


class _HeapArena:
    """A shared memory file both processes map; the heap of the segment being written is laid
    out in it from offset 0 (write_steps waits for each segment: one region is enough)."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("accdump-heap", os.MFD_CLOEXEC)
        self.size = 0
        self._map: mmap.mmap | None = None

    def place(self, pieces: list[np.ndarray]) -> int:
        """Copies `pieces` one after another from offset 0, growing the file as needed; returns
        its size. Raises OSError when memory for it cannot be had."""
        total = sum(int(p.size) for p in pieces)
        if total > self.size:
            size = max(-(-total // (1 << 20)) << 20, 2 * self.size)
            os.posix_fallocate(self.fd, 0, size)  # ENOSPC now rather than SIGBUS on a page fault
            self._map = mmap.mmap(self.fd, size)
            self.size = size
        assert self._map is not None
        dst = np.frombuffer(self._map, dtype=np.uint8, count=total)
        offset = 0
        for p in pieces:
            dst[offset : offset + p.size] = p
            offset += int(p.size)
        return self.size

    def close(self) -> None:
        self._map = None
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _make_arena() -> _HeapArena | None:
    try:
        return _HeapArena()
    except (AttributeError, OSError):  # no memfd here: heap bytes go through the pipe
        return None


class _Channel:
    """Length-prefixed frames over a pair of pipe descriptors (the system calls release the GIL)."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd = read_fd, write_fd
        for fd in (read_fd, write_fd):
            if fd < 0:
                continue
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
            except OSError:
                pass  # the default size works, with more system calls

    def send(self, *frames: Any) -> None:
        """Sends each frame (bytes or a contiguous array), with as few system calls as the pipe
        allows: each one lets the other threads of this process take the interpreter."""
        views: list[memoryview] = []
        for frame in frames:
            view = memoryview(frame).cast("B")
            views += [memoryview(_HEADER.pack(view.nbytes)), view]
        i = 0
        while True:
            while i < len(views) and not views[i].nbytes:
                i += 1
            if i == len(views):
                return
            n = os.writev(self.write_fd, views[i : i + _IOV_MAX])
            while n:  # step past what was written; a view written in part keeps its rest
                if n >= views[i].nbytes:
                    n -= views[i].nbytes
                    i += 1
                else:
                    views[i], n = views[i][n:], 0

    def recv(self) -> bytearray:
        """The next frame; EOFError once the other side closed its end."""
        (n,) = _HEADER.unpack(self._read_exact(_HEADER.size))
        return self._read_exact(n)

    def _read_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = os.readv(self.read_fd, [view[got:]])
            if k == 0:
                raise EOFError
            got += k
        return buf

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.read_fd = self.write_fd = -1


def _package_root() -> str:
    import accdump

    return str(Path(accdump.__file__).resolve().parent.parent)


_live_sinks: weakref.WeakSet[SegmentProcess] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A process forked from the recorder's (DataLoader workers, say) must not keep the pipe to the
    # segment writer or the directory lock open: the writer would wait for it to exit before
    # seeing the end of its input, and the lock would outlive the recorder.
    for sink in list(_live_sinks):
        with contextlib.suppress(Exception):  # one sink's trouble must not leave another's open
            sink.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SegmentProcess:
    """Writes batches of steps as segments through a child process, into the rank directory
    that `writer` claimed (its lock is released when both processes are done).

    The child starts with the first segment (a recorder that writes nothing starts none); if it
    cannot start, segments are written in the calling thread, and stderr says so once."""

    def __init__(self, writer: SegmentWriter):
        self._writer = writer
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: _Channel | None = None
        self._local: LocalSegments | None = None
        self._fsync_s = 0.0
        self._closed = False
        self._arena: _HeapArena | None = None
        _live_sinks.add(self)

    def forget_after_fork(self) -> None:
        """In a forked child: closes this process's copies of the pipe, arena and lock descriptors
        (the recorder's own stay open); this copy of the sink writes nothing more."""
        self._closed = True
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        if self._arena is not None:
            self._arena.close()
            self._arena = None
        self._writer.forget_lock_after_fork()

    def _start(self) -> None:
        writer = self._writer
        lock_fd = writer.lock_fd
        self._arena = _make_arena()
        arena_fd = self._arena.fd if self._arena is not None else -1
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        env.pop("ACCDUMP_RECORD", None)  # set by `accdump record`: this process records nothing
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "accdump.store.writer_process",
                    str(to_child_r),
                    str(from_child_w),
                    str(arena_fd),
                ],
                pass_fds=(to_child_r, from_child_w, *(fd for fd in (lock_fd, arena_fd) if fd >= 0)),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            if self._arena is not None:
                self._arena.close()
                self._arena = None
            print(
                f"accdump: cannot start the segment writer process ({exc}); writing segments in a "
                "thread instead",
                file=sys.stderr,
            )
            self._local = LocalSegments(writer)
            return
        os.close(to_child_r)
        os.close(from_child_w)
        self._chan = _Channel(from_child_r, to_child_w)
        self._send(
            {"op": "open", "root": os.fspath(writer.root), "rank": writer.rank, "attrs": writer.run_attrs}
        )

    @property
    def seconds_fsync(self) -> float:
        return self._local.seconds_fsync if self._local is not None else self._fsync_s

    @property
    def pid(self) -> int | None:
        """The child's process id, once started."""
        return self._proc.pid if self._proc is not None else None

    def _send(self, message: Any, *buffers: Any) -> None:
        assert self._chan is not None
        try:
            self._chan.send(_json(message), *buffers)
        except OSError as exc:  # BrokenPipeError: the child is gone
            raise self._gone() from exc

    def _gone(self) -> RecordWriteError:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        how = f"exited with status {code}" if code is not None and code >= 0 else ""
        if code is not None and code < 0:
            try:
                how = f"was killed by signal {-code} ({signal.Signals(-code).name})"
            except ValueError:  # a signal number Python has no name for
                how = f"was killed by signal {-code}"
        return RecordWriteError(
            f"the segment writer process (pid {self._proc.pid}) {how or 'stopped answering'}"
        )

    def write_steps(self, parts: Parts, steps: list[int]) -> tuple[Path, int]:
        """Writes the steps as one segment; returns its path and size. Raises AccdumpError."""
        if self._proc is None and self._local is None:
            self._start()
        if self._local is not None:
            return self._local.write_steps(parts, steps)
        assert self._chan is not None
        frames: list[Any] = []
        steps_meta = []
        heap: list[np.ndarray] = []
        for sc, pieces in parts:
            meta, arrays = to_wire(sc)
            meta["heap"] = len(pieces)
            meta["heap_sizes"] = [int(h.size) for h in pieces]
            steps_meta.append(meta)
            frames += arrays
            heap += [np.ascontiguousarray(h).reshape(-1).view(np.uint8) for h in pieces]
        message: dict[str, Any] = {"op": "write", "steps": steps, "parts": steps_meta}
        if self._arena is not None and sum(int(h.size) for h in heap) >= _ARENA_MIN_HEAP:
            try:
                message["arena"] = self._arena.place(heap)
                heap = []
            except OSError:
                pass  # no room for it in memory: through the pipe
        self._send(message, *frames, *heap)
        try:
            reply = json.loads(self._chan.recv())
        except (EOFError, OSError) as exc:
            raise self._gone() from exc
        if reply["op"] == "error":
            raise RecordWriteError(reply["message"])
        self._fsync_s += reply["fsync_s"]
        return Path(reply["path"]), reply["size"]

    def close(self) -> None:
        """Lets the child finish and exit."""
        if self._closed:
            return
        self._closed = True
        if self._proc is None or self._chan is None:
            self._writer.close()
            return
        try:
            self._chan.send(_json({"op": "close"}))
            self._chan.recv()
        except (EOFError, OSError):
            pass
        self._chan.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._arena is not None:
            self._arena.close()
        self._writer.close()  # the child is gone: the lock can go


class LocalSegments:
    """The same interface as SegmentProcess, writing in the calling thread."""

    def __init__(self, writer: SegmentWriter):
        self._writer = writer

    @property
    def seconds_fsync(self) -> float:
        return self._writer.seconds_fsync

    def write_steps(self, parts: Parts, steps: list[int]) -> tuple[Path, int]:
        return write_segment(self._writer, parts, steps)

    def close(self) -> None:
        self._writer.close()


def segment_table(parts: Parts) -> tuple[np.ndarray, list[np.ndarray]]:
    """The record table and heap of one segment holding the steps of `parts`."""
    return batch_tables([(build_table(sc, [int(h.size) for h in pieces]), pieces) for sc, pieces in parts])


def write_segment(
    writer: SegmentWriter, parts: Parts, steps: list[int], whole_heap: np.ndarray | None = None
) -> tuple[Path, int]:
    """Builds the steps' tables and writes them as one segment; returns its path and size.
    `whole_heap`, when given, holds the parts' heap pieces one after another (written at once)."""
    rows, heap = segment_table(parts)
    return _write(writer, rows, heap if whole_heap is None else [whole_heap], steps)


def _write(
    writer: SegmentWriter, rows: np.ndarray, heap: list[np.ndarray], steps: list[int]
) -> tuple[Path, int]:
    path = writer.write(rows, heap, {"steps": np.asarray(steps, dtype=np.int64)})
    return path, path.stat().st_size


def _frame_count(meta: dict[str, Any]) -> int:
    """How many array frames follow a step's description (record_table.to_wire)."""
    if "table" in meta:
        return 1
    groups = ("ints", "strings", "string_ids", "stats", "hashes")
    return sum(len(meta[g]) for g in groups) + 4  # + ndims, shapes, strides, heap_slot


def _json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


class _ArenaView:
    """The child's mapping of the parent's heap arena."""

    def __init__(self, fd: int):
        self.fd = fd
        self._map: mmap.mmap | None = None
        self._size = 0

    def heap(self, size: int, sizes: list[list[int]]) -> tuple[list[list[np.ndarray]], np.ndarray]:
        """Each part's heap pieces and the whole heap, as views of the arena (`size` bytes now)."""
        if size != self._size:
            self._map = mmap.mmap(self.fd, size, prot=mmap.PROT_READ)
            self._size = size
        assert self._map is not None
        total = sum(sum(s) for s in sizes)
        whole = np.frombuffer(self._map, dtype=np.uint8, count=total)
        out, offset = [], 0
        for part in sizes:
            pieces = []
            for n in part:
                pieces.append(whole[offset : offset + n])
                offset += n
            out.append(pieces)
        return out, whole


def _serve(chan: _Channel, arena: _ArenaView | None) -> None:
    opened = json.loads(chan.recv())
    writer = SegmentWriter(opened["root"], opened["rank"], opened["attrs"], claim=False)
    failed = False
    while True:
        try:
            message = json.loads(chan.recv())
        except EOFError:
            return  # the recorder's process is gone: what it sent is written
        if message["op"] == "close":
            chan.send(_json({"op": "closed"}))
            return
        steps = message["steps"]
        in_arena = "arena" in message
        received: list[tuple[dict[str, Any], list[bytearray], list[np.ndarray]]] = []
        for meta in message["parts"]:
            frames = [chan.recv() for _ in range(_frame_count(meta))]
            received.append((meta, frames, []))
        if not in_arena:
            for part_meta, _, heap in received:
                heap += [np.frombuffer(chan.recv(), dtype=np.uint8) for _ in range(part_meta["heap"])]
        whole = None
        if in_arena:
            assert arena is not None, "the recorder placed the heap in an arena this process lacks"
            pieces, whole = arena.heap(message["arena"], [meta["heap_sizes"] for meta, _, _ in received])
            received = [(meta, frames, p) for (meta, frames, _), p in zip(received, pieces, strict=True)]
        if failed:
            chan.send(_json({"op": "error", "message": "an earlier write failed"}))
            continue
        fsync_before = writer.seconds_fsync
        reply: dict[str, Any]
        try:
            parts = [(from_wire(meta, frames), heap) for meta, frames, heap in received]
            path, size = write_segment(writer, parts, steps, whole)
            reply = {
                "op": "ok",
                "path": os.fspath(path),
                "size": size,
                "fsync_s": writer.seconds_fsync - fsync_before,
            }
        except AccdumpError as exc:
            failed, reply = True, {"op": "error", "message": str(exc)}
        except Exception as exc:  # any failure is a failed write, reported to the recorder
            which = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]}"
            failed = True
            reply = {"op": "error", "message": f"writing {which} failed: {type(exc).__name__}: {exc}"}
        chan.send(_json(reply))


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the recorder flushes on Ctrl-C, through us
    chan = _Channel(int(argv[0]), int(argv[1]))
    arena_fd = int(argv[2]) if len(argv) > 2 else -1
    try:
        _serve(chan, _ArenaView(arena_fd) if arena_fd >= 0 else None)
    except (EOFError, BrokenPipeError):
        pass  # the recorder's process is gone before the end of a message: nothing to write
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
