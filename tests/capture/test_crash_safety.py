"""A killed run, a full disk or an unwritable directory never corrupts what was recorded, and never
stops the user's program (unless strict=True asks for it)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest
import torch
from torch import nn

import accdump
import accdump.store.writer as store_writer
from accdump import ops
from accdump.capture import writer_thread
from accdump.store import Role

SEED = 1234
REPO = Path(accdump.__file__).resolve().parents[1]

# Records a model step after step, forever, printing how many steps the writer has completed.
_FOREVER = """
import sys, torch, accdump
from torch import nn
torch.manual_seed(1234)
model = nn.Sequential(*[nn.Linear(128, 128) for _ in range(4)])
x = torch.linspace(-1, 1, 64 * 128).reshape(64, 128)
rec = accdump.record(model, sys.argv[1], mode="tensor").start()
i = 0
with torch.no_grad():
    while True:
        model(x + i)
        i += 1
        print(len(rec.steps_written), flush=True)
"""
_RECORDS_PER_STEP = 2 + 4 * 2  # the root's input and output, then each Linear's


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ACCDUMP_RECORD"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def _run_and_kill(path: Path, min_steps: int, delay: float) -> int:
    """Starts the recording loop, SIGKILLs it `delay` s after it reports `min_steps` complete steps;
    returns the most steps it reported complete."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _FOREVER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    reported = 0
    try:
        deadline = time.monotonic() + 60
        while reported < min_steps:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"recording loop died: {proc.stderr.read()}"
            reported = max(reported, int(line))
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=30)
    while (line := lines.get_nowait() if not lines.empty() else None) is not None:
        reported = max(reported, int(line))
    assert proc.returncode == -signal.SIGKILL
    return reported


@pytest.mark.parametrize("delay", [0.0, 0.011, 0.07])
def test_sigkill_keeps_every_completed_step_readable(tmp_path, delay):
    path = tmp_path / "d"
    reported = _run_and_kill(path, min_steps=3, delay=delay)
    assert reported >= 3

    dump = accdump.load(path)
    steps = dump.steps()
    assert steps == list(range(len(steps))), "steps must be complete and in order"
    assert len(steps) >= reported, f"{reported} steps were reported complete, the dump holds {steps}"
    x = torch.linspace(-1, 1, 64 * 128).reshape(64, 128)
    for s in steps:
        recs = list(dump.records(step=s))
        assert len(recs) == _RECORDS_PER_STEP, f"step {s} is incomplete"
        for r in recs:  # every tensor reads back and agrees with its own statistics
            t = dump.tensor(r)
            assert t.shape == r.shape and t.dtype == torch.float32
            want = ops.tensor_stats(t)
            assert (r.stats.count, r.stats.nan, r.stats.min, r.stats.max) == (
                want.count,
                0,
                want.min,
                want.max,
            )
        (root_in,) = [r for r in recs if r.name == "" and r.role == Role.INPUT]
        assert torch.equal(dump.tensor(root_in), x + s)

    # the killed writer's lock died with it: the directory can be recorded into again
    with accdump.record(None, path, overwrite=True):
        accdump.probe("again", torch.ones(2))
    assert [r.name for r in accdump.load(path).records()] == ["again"]


# --- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def disk_full_from_third_segment(monkeypatch):
    """h5py.File raises ENOSPC for the writer's third and later segments (one step each); reading
    still works."""
    monkeypatch.setenv("ACCDUMP_WRITER", "thread")  # faults injected here: segments written here
    monkeypatch.setattr(writer_thread, "MAX_BATCH_STEPS", 1)
    real = store_writer.h5py.File
    opened = {"w": 0}

    def file(name, mode="r", *args, **kwargs):
        if mode != "r":
            opened["w"] += 1
            if opened["w"] >= 3:
                raise OSError(28, "No space left on device")
        return real(name, mode, *args, **kwargs)

    monkeypatch.setattr(store_writer.h5py, "File", file)
    return opened


def _mlp():
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)), torch.randn(4, 8)


def test_full_disk_never_stops_the_run(tmp_path, capfd, disk_full_from_third_segment):
    model, x = _mlp()
    with torch.no_grad():
        plain = [model(x + i) for i in range(6)]
        with accdump.record(model, tmp_path / "d", mode="tensor") as rec:
            recorded = [model(x + i) for i in range(6)]  # no exception reaches the user's loop
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded, strict=True))
    assert isinstance(rec.error, accdump.RecordWriteError)
    assert "No space left on device" in str(rec.error)
    assert rec.steps_written == [0, 1]

    err = capfd.readouterr().err
    msgs = [line for line in err.splitlines() if "No space left on device" in line]
    assert len(msgs) == 1, err  # said once, on one line
    assert msgs[0].startswith("accdump:") and str(tmp_path / "d") in msgs[0]

    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [0, 1]
    for r in dump.records():
        dump.tensor(r)
    (root_in,) = list(dump.records(step=1, name="", role=Role.INPUT))
    assert torch.equal(dump.tensor(root_in), x + 1)
    assert not list((tmp_path / "d" / "rank00000").glob("*.tmp"))
    # the recorder let go of the process slot and of the directory
    with accdump.record(None, tmp_path / "other"):
        accdump.probe("p", torch.ones(1))


def test_full_disk_with_strict_raises(tmp_path, disk_full_from_third_segment):
    model, x = _mlp()
    ran = 0
    with pytest.raises(accdump.RecordWriteError, match="No space left on device"):
        with torch.no_grad(), accdump.record(model, tmp_path / "d", mode="tensor", strict=True):
            for i in range(6):
                model(x + i)
                ran += 1
    assert ran >= 2  # the failure surfaces at a later step or at stop, never before it happened
    dump = accdump.load(tmp_path / "d")
    assert dump.steps() == [0, 1]
    for r in dump.records():
        dump.tensor(r)
    with accdump.record(None, tmp_path / "other"):  # stopped cleanly despite raising
        accdump.probe("p", torch.ones(1))


# --- an unwritable place ----------------------------------------------------------------------


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_directory(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(accdump.RecordWriteError) as exc:
            with accdump.record(None, parent / "dump"):
                accdump.probe("p", torch.ones(1))
        assert str(parent / "dump") in str(exc.value)
        assert "ermission" in str(exc.value)
    finally:
        parent.chmod(0o700)
    with accdump.record(None, tmp_path / "other"):  # the failed start holds nothing
        accdump.probe("p", torch.ones(1))


def test_output_path_under_a_file(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    with pytest.raises(accdump.RecordWriteError) as exc:
        with accdump.record(None, blocker / "dump"):
            accdump.probe("p", torch.ones(1))
    assert str(blocker / "dump") in str(exc.value)
    assert blocker.read_text() == "not a directory"
    with accdump.record(None, tmp_path / "other"):
        accdump.probe("p", torch.ones(1))


def test_segments_are_complete_files_after_each_step(tmp_path):
    """While recording, every visible segment is already a complete, closed HDF5 file."""
    model, x = _mlp()
    seen = []
    with torch.no_grad(), accdump.record(model, tmp_path / "d", mode="tensor") as rec:
        for i in range(4):
            model(x + i)
            deadline = time.monotonic() + 30
            while len(rec.steps_written) < i + 1 and time.monotonic() < deadline:
                time.sleep(0.002)
            for seg in sorted((tmp_path / "d" / "rank00000").glob("seg*.h5")):
                with h5py.File(seg, "r") as f:
                    seen.append((seg.name, len(f["records"])))
            # readable by the reader while the writer is still active
            assert accdump.load(tmp_path / "d").steps() == list(range(i + 1))
    assert ("seg00000003.h5", 8) in seen  # root, 3 modules: input and output each
