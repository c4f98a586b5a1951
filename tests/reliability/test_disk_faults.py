"""A full disk, a read-only output directory and a second recorder: one clear error, the completed
steps intact, the program going on (unless strict=True).

Faults are injected at every point of a segment's write (tests/capture/test_crash_safety.py covers
the segment file's creation), and produced for real where the system allows it: a tiny tmpfs that
fills up and read-only bind mounts, in a private user + mount namespace (`unshare`, no root needed
where unprivileged user namespaces are enabled; skipped where they are not).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
from torch import nn

import accdump
import accdump.store.writer as store_writer
from accdump.capture import writer_thread
from accdump.store import Role
from tests.reliability._ns_child import model_and_input
from tests.reliability._zygote import REPO, child_env

SEED = 1234
_SEG = re.compile(r"\.seg(\d{8})\.h5\.tmp$")


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)), torch.randn(4, 8)


def _segment_of(path: str | os.PathLike[str]) -> int | None:
    """The sequence number of a temporary segment path, else None."""
    m = _SEG.search(os.fspath(path))
    return int(m.group(1)) if m else None


def _one_stop_message(stderr: str) -> str:
    """The recorder's single stderr line about the failure."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("accdump:")]
    assert len(lines) == 1 and len(stderr.strip().splitlines()) == 1, stderr
    return lines[0]


# --- faults injected at each point of a segment's write ------------------------------------------


def _fail_from_third_segment(monkeypatch, point: str) -> str:
    """Makes the writer fail at `point` for segment 2 and later; returns the expected error text.
    Each step gets its own segment (none are written together), so segment 2 holds step 2."""
    monkeypatch.setenv("ACCDUMP_WRITER", "thread")  # faults injected here: segments written here
    monkeypatch.setattr(writer_thread, "MAX_BATCH_STEPS", 1)
    if point == "heap_write":  # a full disk while the tensor bytes go into the file
        real = h5py.Dataset.__setitem__

        def setitem(self, key, value):
            if (_segment_of(self.file.filename) or 0) >= 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, key, value)

        monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
        return "No space left on device"
    real_fsync, real_replace = os.fsync, os.replace
    dir_syncs = {"n": 0}

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if point == "file_fsync" and (_segment_of(target) or 0) >= 2:  # delayed allocation: ENOSPC here
            raise OSError(errno.ENOSPC, "No space left on device")
        if point == "dir_fsync" and stat.S_ISDIR(os.fstat(fd).st_mode):
            dir_syncs["n"] += 1
            if dir_syncs["n"] >= 3:  # after the rename: the segment is in place, its durability unknown
                raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    def replace(src, dst):
        if point == "rename" and (_segment_of(src) or 0) >= 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(store_writer.os, "fsync", fsync)
    monkeypatch.setattr(store_writer.os, "replace", replace)
    return "No space left on device" if point == "file_fsync" else "Input/output error"


POINTS = ["heap_write", "file_fsync", "rename", "dir_fsync"]


@pytest.mark.parametrize("point", POINTS)
def test_write_fault_stops_recording_and_keeps_completed_steps(tmp_path, capfd, monkeypatch, point):
    text = _fail_from_third_segment(monkeypatch, point)
    model, x = _mlp()
    with torch.no_grad():
        plain = [model(x + i) for i in range(6)]
        with accdump.record(model, tmp_path / "d", mode="tensor") as rec:
            recorded = [model(x + i) for i in range(6)]  # nothing reaches the user's loop
    monkeypatch.undo()
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded, strict=True))
    assert isinstance(rec.error, accdump.RecordWriteError) and text in str(rec.error)
    assert rec.steps_written == [0, 1]
    line = _one_stop_message(capfd.readouterr().err)
    assert text in line and str(tmp_path / "d") in line

    dump = accdump.load(tmp_path / "d")
    # a failed directory fsync comes after the rename: that segment is complete, only unconfirmed
    assert dump.steps() == ([0, 1, 2] if point == "dir_fsync" else [0, 1])
    for s in dump.steps():
        (root_in,) = list(dump.records(step=s, name="", role=Role.INPUT))
        assert torch.equal(dump.tensor(root_in), x + s)
    assert not list((tmp_path / "d" / "rank00000").glob(".seg*"))  # no temporary file left
    with accdump.record(None, tmp_path / "other"):  # the recorder let go of the process slot
        accdump.probe("p", torch.ones(1))


@pytest.mark.parametrize("point", POINTS)
def test_write_fault_with_strict_raises(tmp_path, capfd, monkeypatch, point):
    text = _fail_from_third_segment(monkeypatch, point)
    model, x = _mlp()
    ran = 0
    with pytest.raises(accdump.RecordWriteError, match=text):
        with torch.no_grad(), accdump.record(model, tmp_path / "d", mode="tensor", strict=True):
            for i in range(6):
                model(x + i)
                ran += 1
    monkeypatch.undo()
    assert ran >= 2
    _one_stop_message(capfd.readouterr().err)
    assert accdump.load(tmp_path / "d").steps()[:2] == [0, 1]


# --- real faults: a tiny filesystem and read-only mounts, in a user + mount namespace ------------


def _namespace_works() -> str | None:
    """Why a private user + mount namespace with a tmpfs cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt",
        ],
        capture_output=True,
        text=True,
    )
    return (
        None
        if probe.returncode == 0
        else f"unprivileged mount namespaces unavailable: {probe.stderr.strip()}"
    )


@pytest.fixture(scope="module")
def real_faults(tmp_path_factory):
    """Runs each scenario of _ns_child in its own namespaced process (concurrently): JSON and exit
    status per scenario, and the scenario's directory."""
    why = _namespace_works()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("faults")
    procs = {}
    for scenario in ("tiny", "tiny_strict", "read_only"):
        (root / scenario).mkdir()
        procs[scenario] = subprocess.Popen(
            [
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                sys.executable,
                "-m",
                "tests.reliability._ns_child",
                scenario,
                str(root / scenario),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=child_env(),
        )
    out = {}
    for scenario, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        report = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
        assert report is not None, f"{scenario}: no report (exit status {proc.returncode})\n{stderr[-3000:]}"
        out[scenario] = {"report": report, "rc": proc.returncode, "stderr": stderr, "dir": root / scenario}
    return out


def _assert_steps_intact(path: Path, steps: list[int]) -> None:
    dump = accdump.load(path)
    assert dump.steps() == steps
    model, x = model_and_input()
    for s in steps:
        recs = list(dump.records(step=s))
        assert len(recs) == 2 + 4 * 2
        (root_in,) = [r for r in recs if r.name == "" and r.role == Role.INPUT]
        assert torch.equal(dump.tensor(root_in), x + s)
        for r in recs:
            dump.tensor(r)


def test_tiny_filesystem_fills_up_one_message_steps_intact(real_faults):
    run = real_faults["tiny"]
    r = run["report"]
    assert r["ran"] == 8 and r["outputs_equal"], "the program must run to its end, unchanged"
    assert r["raised"] is None
    assert r["steps_written"] == list(range(len(r["steps_written"]))) and len(r["steps_written"]) >= 1
    assert r["error"][0] == "RecordWriteError" and "No space left on device" in r["error"][1]
    line = _one_stop_message(r["stderr"])
    assert "No space left on device" in line and str(run["dir"] / "mnt" / "dump") in line
    segments = r["files"][:-1]  # whole segments (steps that queued up share one), no .tmp left
    assert r["files"][-1] == "writer.lock" and 1 <= len(segments) <= len(r["steps_written"])
    assert segments == [f"seg{i:08d}.h5" for i in range(len(segments))]
    _assert_steps_intact(run["dir"] / "copy", r["steps_written"])


def test_tiny_filesystem_with_strict_raises_in_the_program(real_faults):
    r = real_faults["tiny_strict"]["report"]
    assert r["raised"][0] == "RecordWriteError" and "No space left on device" in r["raised"][1]
    assert len(r["steps_written"]) <= r["ran"] < 8
    _one_stop_message(r["stderr"])
    _assert_steps_intact(real_faults["tiny_strict"]["dir"] / "copy", r["steps_written"])


@pytest.mark.parametrize("scenario", ["tiny", "tiny_strict"])
def test_tiny_filesystem_the_program_exits_normally(real_faults, scenario):
    run = real_faults[scenario]
    assert run["rc"] == 0, f"exit status {run['rc']}: {run['stderr'][-2000:]}"


def test_read_only_output_at_start_is_one_clear_error(real_faults):
    run = real_faults["read_only"]
    r = run["report"]["start"]
    ro = run["dir"] / "start" / "ro"
    kind, msg = r["library"]
    assert kind == "RecordWriteError" and str(ro / "lib") in msg and "Read-only file system" in msg
    # `accdump record -- script.py` (in process): refused before the script starts
    cli = r["cli_in_process"]
    assert cli["rc"] == 2 and cli["stdout"] == ""
    assert cli["stderr"].startswith("accdump: error: ") and len(cli["stderr"].splitlines()) == 1
    assert str(ro / "cli") in cli["stderr"] and "Traceback" not in cli["stderr"]
    # `accdump record -- python script.py`: the child Python runs unrecorded, with its exit status
    child = r["cli_child"]
    assert child["rc"] == 3 and child["stdout"] == "the script ran\n"
    assert (
        child["stderr"].startswith("accdump: recording not started: ")
        and len(child["stderr"].splitlines()) == 1
    )
    assert str(ro / "child") in child["stderr"]
    assert r["created"] == []


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_output_turning_read_only_mid_run(real_faults, strict):
    run = real_faults["read_only"]
    r = run["report"]["mid_strict" if strict else "mid"]
    assert r["outputs_equal"]
    assert r["steps_written"] == [0, 1]
    assert r["error"][0] == "RecordWriteError" and "Read-only file system" in r["error"][1]
    line = _one_stop_message(r["stderr"])
    assert "Read-only file system" in line
    if strict:
        assert r["raised"][0] == "RecordWriteError" and r["ran"] < 6
    else:
        assert r["raised"] is None and r["ran"] == 6
    # steps 0 and 1 in whole segments (one or two: steps that queue up share one), no .tmp left
    assert r["files"][-1] == "writer.lock" and r["files"][0] == "seg00000000.h5"
    assert all(re.fullmatch(r"seg\d{8}\.h5", f) for f in r["files"][:-1]) and len(r["files"]) <= 3
    _assert_steps_intact(run["dir"] / ("mid_strict" if strict else "mid"), [0, 1])


# --- two recorders, two processes, one directory -------------------------------------------------

_LONG_SCRIPT = """
import sys, time, torch
from pathlib import Path
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
go = Path(sys.argv[1])
with torch.no_grad():
    for i in range(3):
        model(torch.full((2, 8), float(i)))
    print("recorded 3 steps", flush=True)
    while not go.exists():
        time.sleep(0.01)
    for i in range(3, 5):
        model(torch.full((2, 8), float(i)))
print("first done", flush=True)
"""


def test_second_recording_process_is_refused_first_dump_intact(zygote, tmp_path):
    out = tmp_path / "dump"
    first_script, other = tmp_path / "first.py", tmp_path / "other.py"
    first_script.write_text(_LONG_SCRIPT)
    other.write_text("print('the second script ran')\n")
    go = tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-m", "accdump", "record", "-o", out, "--mode", "tensor", "--", first_script, go],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "recorded 3 steps"
        deadline = time.monotonic() + 60
        while len(list(out.glob("rank00000/seg*.h5"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        # without --overwrite: the directory already holds a recording
        second = zygote.cli("record", "-o", out, "--", other)
        assert second.rc == 2 and "Traceback" not in second.err and second.out == ""
        assert second.err.startswith("accdump: error: ") and len(second.err.splitlines()) == 1
        assert "already holds a recording" in second.err and str(out) in second.err
        # with --overwrite: the live recorder's lock refuses it, and nothing of the first is removed
        second = zygote.cli("record", "-o", out, "--overwrite", "--", other)
        assert second.rc == 2 and "Traceback" not in second.err and second.out == ""
        assert second.err.startswith("accdump: error: ") and len(second.err.splitlines()) == 1
        assert "being written by another recorder" in second.err and "rank00000" in second.err
        go.touch()
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0 and stdout.strip() == "first done", stderr
    dump = accdump.load(out)
    assert dump.steps() == [0, 1, 2, 3, 4]
    for r in dump.records(role=Role.INPUT, name=""):
        assert torch.equal(dump.tensor(r), torch.full((2, 8), float(r.step)))
