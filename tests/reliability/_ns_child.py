"""Real disk faults, run in a private user + mount namespace (`unshare --user --map-root-user
--mount python -m tests.reliability._ns_child SCENARIO DIR`): a tiny tmpfs that fills up, and
read-only bind mounts, at the start and in the middle of a recording. Prints one JSON object:
what each scenario saw. The mounts vanish with the process; the dumps are copied out.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import accdump
from accdump.capture import writer_thread

SCRIPT = "print('the script ran')\nraise SystemExit(3)\n"


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _read_only(path: Path) -> None:
    """Makes `path` read-only from now on (a read-only bind mount of itself; files opened for
    writing before, like the writer's lock, are not affected)."""
    _mount("--bind", str(path), str(path))
    _mount("-o", "remount,bind,ro", str(path))


def model_and_input(hidden: int = 64) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1234)
    return nn.Sequential(*[nn.Linear(hidden, hidden) for _ in range(4)]), torch.randn(64, hidden)


def _run(path: Path, steps: int, strict: bool, on_step=None) -> dict:
    """Records `steps` forward passes in tensor mode; what happened, as JSON-able data."""
    model, x = model_and_input()
    with torch.no_grad():
        plain = [model(x + i) for i in range(steps)]
    err = io.StringIO()
    ran, outputs, raised = 0, [], None
    rec = accdump.record(model, path, mode="tensor", strict=strict)
    try:
        with contextlib.redirect_stderr(err), torch.no_grad(), rec:
            for i in range(steps):
                outputs.append(model(x + i))
                ran += 1
                if on_step is not None:
                    on_step(i, rec)
    except Exception as exc:  # strict=True: the failure reaches the program
        raised = [type(exc).__name__, str(exc)]
    rank = path / "rank00000"
    return {
        "ran": ran,
        # with strict=True the program stops early: fewer outputs than planned
        "outputs_equal": all(torch.equal(a, b) for a, b in zip(plain, outputs, strict=False)),
        "steps_written": rec.steps_written,
        "error": None if rec.error is None else [type(rec.error).__name__, str(rec.error)],
        "raised": raised,
        "stderr": err.getvalue(),
        "files": sorted(os.listdir(rank)) if rank.is_dir() else None,
    }


def tiny_filesystem(mnt: Path, out: Path, strict: bool) -> dict:
    mnt.mkdir(parents=True)
    _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt))
    # One step per segment: steps that queue up while the segment writer process starts would
    # otherwise share the first segment, which then may not fit at all (nothing written is also
    # correct, but tells less about which steps survive a full disk).
    writer_thread.MAX_BATCH_STEPS = 1
    res = _run(mnt / "dump", steps=8, strict=strict)
    shutil.copytree(mnt / "dump", out)
    return res


def read_only_at_start(base: Path) -> dict:
    ro = base / "ro"
    ro.mkdir(parents=True)
    (base / "script.py").write_text(SCRIPT)
    _read_only(ro)
    res: dict = {}
    try:
        accdump.record(None, ro / "lib").start()
        res["library"] = None
    except Exception as exc:
        res["library"] = [type(exc).__name__, str(exc)]
    # `accdump record -- script.py`: the script runs in the CLI's own process
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["accdump", "record", "-o", str(ro / "cli"), "--", str(base / "script.py")]
    from accdump.cli.main import main

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    res["cli_in_process"] = {"rc": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    # `accdump record -- python script.py`: a child Python starts recording by itself
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accdump",
            "record",
            "-o",
            str(ro / "child"),
            "--",
            sys.executable,
            str(base / "script.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    res["cli_child"] = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
    res["created"] = sorted(os.listdir(ro))
    return res


def read_only_mid_run(path: Path, strict: bool) -> dict:
    def after_step(i: int, rec) -> None:
        if i == 1:  # steps 0 and 1 complete, then the rank directory turns read-only
            deadline = time.monotonic() + 30
            while len(rec.steps_written) < 2 and time.monotonic() < deadline:
                time.sleep(0.002)
            _read_only(path / "rank00000")

    return _run(path, steps=6, strict=strict, on_step=after_step)


SCENARIOS = {
    "tiny": lambda root: tiny_filesystem(root / "mnt", root / "copy", strict=False),
    "tiny_strict": lambda root: tiny_filesystem(root / "mnt", root / "copy", strict=True),
    "read_only": lambda root: {
        "start": read_only_at_start(root / "start"),
        "mid": read_only_mid_run(root / "mid", strict=False),
        "mid_strict": read_only_mid_run(root / "mid_strict", strict=True),
    },
}


def main() -> None:
    scenario, root = sys.argv[1], Path(sys.argv[2])
    if scenario.startswith("tiny"):
        # after a real ENOSPC, libhdf5 crashes when the objects of the failed file are freed (see
        # test_disk_faults.py): no automatic collection before the report is out
        gc.disable()
    print(json.dumps(SCENARIOS[scenario](root)), flush=True)


if __name__ == "__main__":
    main()
