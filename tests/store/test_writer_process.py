"""Segments written by a child process: the same dump as the in-thread writer, and every failure
of the child (a write error, the child killed, the child not starting) reported like a failed write."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import accdump
from accdump.capture import writer_thread
from accdump.store import writer_process
from accdump.store.writer_process import LocalSegments, SegmentProcess

SEED = 1234


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 8))
    return model, torch.randn(4, 8)


def _record(path: Path, mode: str, steps: int = 3) -> list[torch.Tensor]:
    model, x = _model()
    with torch.no_grad(), accdump.record(model, path, mode=mode) as rec:
        outs = [model(x + i) for i in range(steps)]
        accdump.probe("bf16", (x * 3).to(torch.bfloat16))
        accdump.probe("ünï/cödé.名前 [0]", {"k": x.T, "": torch.arange(5)})  # strides, ints, names
    assert rec.error is None
    return outs


@pytest.mark.parametrize("mode", ["stats", "hash", "tensor"])
def test_process_writes_the_same_dump_as_the_thread(tmp_path, monkeypatch, mode):
    _record(tmp_path / "proc", mode)
    monkeypatch.setenv("ACCDUMP_WRITER", "thread")
    _record(tmp_path / "thread", mode)
    a, b = accdump.load(tmp_path / "proc"), accdump.load(tmp_path / "thread")
    assert a.steps() == b.steps() == [0, 1, 2, 3]
    ra, rb = list(a.records()), list(b.records())
    assert len(ra) == len(rb) > 20
    for x, y in zip(ra, rb, strict=True):
        fields = ("step", "order", "name", "call", "role", "arg", "kind", "dtype", "shape", "strides")
        fields += ("storage_offset", "contiguous", "device", "hash", "heap_nbytes")  # offsets: per segment
        assert [getattr(x, f) for f in fields] == [getattr(y, f) for f in fields]
        sx, sy = dataclasses.astuple(x.stats), dataclasses.astuple(y.stats)
        assert np.array_equal(np.asarray(sx), np.asarray(sy), equal_nan=True)
        if mode == "tensor":
            assert torch.equal(a.tensor(x), b.tensor(y))


def test_writer_process_does_not_load_torch(tmp_path):
    with accdump.record(None, tmp_path / "d") as rec:
        accdump.probe("p", torch.randn(3))
        rec.step()
        sink = rec._writer._sink
        assert isinstance(sink, SegmentProcess)
        rec._writer.drain()  # the child has written a segment: its imports are done
        maps = Path(f"/proc/{sink.pid}/maps").read_text()
        assert "hdf5" in maps and "libtorch" not in maps
    assert accdump.load(tmp_path / "d").steps() == [0]


def _wait_for_steps(rec, n: int) -> None:
    rec._writer.drain()
    assert rec.steps_written == list(range(n))


def test_write_error_in_the_child_stops_recording_once(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(writer_thread, "MAX_BATCH_STEPS", 1)  # segment k holds step k
    model, x = _model()
    with torch.no_grad():
        plain = [model(x + i) for i in range(5)]
        with accdump.record(model, tmp_path / "d") as rec:
            got = [model(x), model(x + 1)]
            _wait_for_steps(rec, 2)
            # the next segment's temporary name is taken by a directory: its creation fails
            (tmp_path / "d" / "rank00000" / ".seg00000002.h5.tmp").mkdir()
            got += [model(x + i) for i in range(2, 5)]
    assert all(torch.equal(p, g) for p, g in zip(plain, got, strict=True))  # the run went on
    assert isinstance(rec.error, accdump.RecordWriteError)
    assert "Is a directory" in str(rec.error) and "seg00000002.h5" in str(rec.error)
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("accdump:")]
    assert len(lines) == 1 and "steps 0..1 are complete" in lines[0], lines
    assert accdump.load(tmp_path / "d").steps() == [0, 1]


def test_write_error_in_the_child_with_strict_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_thread, "MAX_BATCH_STEPS", 1)
    model, x = _model()
    with pytest.raises(accdump.RecordWriteError, match="Is a directory"):
        with torch.no_grad(), accdump.record(model, tmp_path / "d", strict=True) as rec:
            model(x)
            _wait_for_steps(rec, 1)
            (tmp_path / "d" / "rank00000" / ".seg00000001.h5.tmp").mkdir()
            for i in range(1, 6):
                model(x + i)
    assert accdump.load(tmp_path / "d").steps() == [0]


def test_killed_writer_process_is_reported_and_the_run_goes_on(tmp_path, capfd):
    model, x = _model()
    with torch.no_grad(), accdump.record(model, tmp_path / "d", mode="tensor") as rec:
        model(x)
        model(x + 1)
        _wait_for_steps(rec, 2)
        pid = rec._writer._sink.pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        outs = [model(x + i) for i in range(2, 5)]
    assert all(o.shape == (4, 8) for o in outs)
    assert isinstance(rec.error, accdump.RecordWriteError)
    assert f"segment writer process (pid {pid}) was killed by signal 9 (SIGKILL)" in str(rec.error)
    err = capfd.readouterr().err
    assert err.count("accdump: recording stopped") == 1, err
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [0, 1]
    for r in dump.records():
        dump.tensor(r)
    # the directory is free again
    with accdump.record(None, tmp_path / "d", overwrite=True):
        accdump.probe("p", torch.ones(2))
    assert accdump.load(tmp_path / "d").steps() == [0]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_falls_back_to_a_thread_when_the_process_cannot_start(tmp_path, monkeypatch, capfd):
    def no_process(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(writer_process.subprocess, "Popen", no_process)
    model, x = _model()
    with torch.no_grad(), accdump.record(model, tmp_path / "d") as rec:
        for i in range(3):
            model(x + i)
        rec._writer.drain()
        assert isinstance(rec._writer._sink._local, LocalSegments)
    assert rec.error is None
    err = capfd.readouterr().err
    assert err.count("cannot start the segment writer process") == 1 and "in a thread instead" in err
    assert accdump.load(tmp_path / "d").steps() == [0, 1, 2]


def test_no_process_for_a_recorder_that_writes_nothing(tmp_path, monkeypatch):
    started = []
    real = writer_process.subprocess.Popen
    monkeypatch.setattr(
        writer_process.subprocess, "Popen", lambda *a, **k: started.append(1) or real(*a, **k)
    )
    with accdump.record(None, tmp_path / "d", steps="5"):
        accdump.probe("p", torch.ones(2))  # step 0: filtered out
    assert not started


def test_parent_killed_child_writes_what_it_was_handed(tmp_path):
    """A recording process killed by SIGKILL: its segment writer process sees the end of its
    pipe and exits, the steps written stay whole and the directory is free."""
    script = f"""
import os, signal, torch, accdump
with accdump.record(None, {str(tmp_path / "d")!r}) as rec:
    for i in range(6):
        accdump.probe("p", torch.full((256,), float(i)))
        rec.step()
    rec._writer.drain()
    print(rec._writer._sink.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 20
    while Path(f"/proc/{child}").exists() and _state(child) not in ("Z", "gone"):
        assert time.monotonic() < deadline, "the writer process did not exit after its parent died"
        time.sleep(0.02)
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == list(range(6))
    for r in dump.records():
        assert r.stats.min == r.stats.max == float(r.step)
    with accdump.record(None, tmp_path / "d", overwrite=True):  # the lock went with both processes
        accdump.probe("p", torch.ones(2))


def test_channel_frames_round_trip_through_a_small_pipe():
    """Frames larger than the pipe, empty frames and many frames at once arrive whole and in order."""
    import threading

    r, w = os.pipe()
    send, recv = writer_process._Channel(-1, w), writer_process._Channel(r, -1)
    rng = np.random.default_rng(SEED)
    frames = [b"", rng.integers(0, 255, 3 << 20, dtype=np.uint8), b"abc", np.arange(7, dtype=np.int64)]
    frames += [rng.integers(0, 255, int(k), dtype=np.uint8) for k in rng.integers(1, 5000, 1500)]
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(bytes(recv.recv()) for _ in frames))
    reader.start()
    send.send(*frames)
    reader.join(timeout=60)
    assert got == [bytes(memoryview(f).cast("B")) for f in frames]
    os.close(r)
    os.close(w)


def _tensor_heavy_run(path: Path, sizes: list[int]) -> list[torch.Tensor]:
    """Records probes of growing sizes (one step each) in tensor mode; returns what was probed."""
    g = torch.Generator().manual_seed(SEED)
    probed = []
    with accdump.record(None, path, mode="tensor") as rec:
        for n in sizes:
            t = torch.randn(n, generator=g)
            probed.append(t)
            accdump.probe("big", (t, t[::3]))  # a strided view is stored contiguous
            rec.step()
    assert rec.error is None
    return probed


def _check_tensors(path: Path, probed: list[torch.Tensor]) -> None:
    dump = accdump.load(path)
    records = [r for r in dump.records() if r.name == "big"]
    assert len(records) == 2 * len(probed)
    for r in records:
        t = probed[r.step]
        assert torch.equal(dump.tensor(r), t if r.arg == "0" else t[::3])


def test_heap_bytes_go_through_shared_memory_that_grows(tmp_path, monkeypatch):
    placed = []
    place = writer_process._HeapArena.place

    def spy(self, pieces):
        placed.append(sum(int(p.size) for p in pieces))
        return place(self, pieces)

    sent = []
    send = writer_process._Channel.send

    def spy_send(self, *frames):
        sent.append(sum(memoryview(f).nbytes for f in frames))
        return send(self, *frames)

    monkeypatch.setattr(writer_process._HeapArena, "place", spy)
    monkeypatch.setattr(writer_process._Channel, "send", spy_send)
    monkeypatch.setattr(writer_thread, "MAX_BATCH_STEPS", 1)  # segment k holds step k
    sizes = [1000, 300_000, 50, 700_000, 250_000]  # floats: heaps of 1.6 and 3.7 MB use the arena
    probed = _tensor_heavy_run(tmp_path / "d", sizes)
    _check_tensors(tmp_path / "d", probed)
    assert placed == [4 * 400_000, 4 * 933_334, 4 * 333_334]  # each step: the tensor and its [::3]
    assert max(sent) < 100_000  # small heaps, tables and headers: the big tensors took the arena


def test_without_shared_memory_heap_bytes_go_through_the_pipe(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_process, "_make_arena", lambda: None)
    probed = _tensor_heavy_run(tmp_path / "d", [1000, 300_000])
    _check_tensors(tmp_path / "d", probed)


def test_no_memory_for_the_shared_heap_falls_back_to_the_pipe(tmp_path, monkeypatch):
    def no_room(fd, offset, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_process.os, "posix_fallocate", no_room)
    probed = _tensor_heavy_run(tmp_path / "d", [1000, 300_000])
    _check_tensors(tmp_path / "d", probed)


def test_a_forked_child_keeps_no_pipe_arena_or_lock_of_the_recorder(tmp_path):
    with accdump.record(None, tmp_path / "earlier", mode="tensor") as earlier:
        accdump.probe("p", torch.randn(1000))
    stale = earlier._writer._sink  # a closed sink still alive: its closed descriptors are skipped
    assert isinstance(stale, SegmentProcess)
    with accdump.record(None, tmp_path / "d", mode="tensor") as rec:
        accdump.probe("p", torch.randn(1000))
        rec.step()
        rec._writer.drain()  # the segment writer process runs, with its pipe and arena
        sink = rec._writer._sink
        fds = [sink._chan.read_fd, sink._chan.write_fd, sink._arena.fd, sink._writer.lock_fd]
        assert all(fd >= 0 for fd in fds)
        pid = os.fork()
        if pid == 0:  # the forked child: every one of those descriptors is closed here
            still_open = 0
            for fd in fds:
                try:
                    os.fstat(fd)
                    still_open += 1
                except OSError:
                    pass
            os._exit(still_open)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for fd in fds:  # and open in the recorder's process
            os.fstat(fd)
        accdump.probe("p", torch.randn(10))
    assert accdump.load(tmp_path / "d").steps() == [0, 1]
