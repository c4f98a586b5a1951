"""SIGKILL at random moments, many times: whatever the moment, the dump opens, `accdump show` reads
it, and it holds every step the recording process had reported complete, each step whole.

A forked child records a small model step after step (the mode and the tensor size drawn per run),
appending after each step how many steps the writer has completed; the zygote SIGKILLs it after a
random delay: before recording started, while a segment is half written, between fsync and rename,
anywhere. (Its segment writer process then writes what it was handed and exits: the dump is read
once the directory's lock is free.)
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import time
from pathlib import Path

import torch

import accdump
from accdump import ops
from accdump.store import Role
from accdump.store.writer import LOCK_NAME
from tests.reliability._children import LOOP_RECORDS_PER_STEP, loop_model

SEED = 1234
MIN_KILLS = 24
TIME_BUDGET_S = 15.0  # the loop stops after this (having done MIN_KILLS at least)
MAX_KILLS = 60


def _reported(progress: Path) -> int:
    """The most steps the child said were complete before it died."""
    if not progress.exists():
        return 0
    return max((int(v) for v in progress.read_text().split()), default=0)


def _wait_for_writer(rank_dir: Path, timeout: float = 20.0) -> None:
    """Waits until no process holds the rank directory's lock: the segment writer process of a
    killed recorder finishes the segments it was handed, then exits."""
    lock = rank_dir / LOCK_NAME
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{lock} still held {timeout} s after the kill"
                time.sleep(0.01)
    finally:
        os.close(fd)


def _check_dump(path: Path, reported: int, mode: str, hidden: int, seed: int) -> int:
    """Asserts the killed run's dump is whole; returns how many steps it holds."""
    if not path.exists():  # killed before the recorder created its directory
        assert reported == 0
        return 0
    _wait_for_writer(path / "rank00000")
    dump = accdump.load(path)
    steps = dump.steps()
    assert steps == list(range(len(steps))), f"steps must be complete and in order, got {steps}"
    assert len(steps) >= reported, f"{reported} steps were reported complete, the dump holds {steps}"
    assert dump.meta().get("mode", mode) == mode
    _, x = loop_model(hidden, seed)
    segments = dump.segment_paths(0)
    # whole steps per segment (steps that queued up share one), nothing else under a segment name
    assert 0 < len(segments) <= len(steps) or not steps
    per_segment = [sorted({int(v) for v in seg.rows["step"]}) for seg in dump._segments[0]]
    assert sorted(s for segment_steps in per_segment for s in segment_steps) == steps  # no step split
    for s in steps:
        recs = list(dump.records(step=s))
        assert len(recs) == LOOP_RECORDS_PER_STEP, f"step {s} holds {len(recs)} records"
        (root_in,) = [r for r in recs if r.name == "" and r.role == Role.INPUT]
        want = ops.tensor_stats(x + s)
        got = root_in.stats
        assert (got.count, got.min, got.max, got.sum) == (want.count, want.min, want.max, want.sum)
        if mode == "tensor":
            for r in recs:
                assert dump.tensor(r).shape == r.shape
            assert torch.equal(dump.tensor(root_in), x + s)
        if mode == "hash":
            assert all(len(r.hash) == 32 for r in recs)
    dump.close()
    return len(steps)


def test_sigkill_at_random_moments_never_loses_a_reported_step(zygote, tmp_path):
    rnd = random.Random(SEED)
    kills, early, leftover_tmp, steps_seen = 0, 0, 0, 0
    t0 = time.monotonic()
    while kills < MAX_KILLS and (kills < MIN_KILLS or time.monotonic() - t0 < TIME_BUDGET_S):
        mode = rnd.choice(["stats", "tensor", "tensor", "hash"])
        hidden = rnd.choice([32, 128, 512])
        seed = rnd.randrange(1000)
        # one kill in six lands while the recorder starts, the others anywhere in the first steps
        delay = rnd.uniform(0.0, 0.02) if rnd.random() < 1 / 6 else rnd.uniform(0.02, 0.35)
        path, progress = tmp_path / f"d{kills}", tmp_path / f"p{kills}"
        res = zygote.run("record_forever", path, progress, mode, hidden, seed, kill_after=delay)
        assert res.rc == -signal.SIGKILL, f"the recording child died on its own: {res.rc}\n{res.err}"
        kills += 1
        reported = _reported(progress)
        what = f"kill {kills}: {mode}, hidden {hidden}, after {delay:.3f} s, {reported} steps reported"
        held = _check_dump(path, reported, mode, hidden, seed)
        early += reported == 0
        steps_seen += held
        if path.exists():
            leftover_tmp += len(list((path / "rank00000").glob(".seg*.tmp")))
            show = zygote.cli("show", path)
            assert show.rc == 0 and "Traceback" not in show.err, f"{what}: show failed\n{show.err}"
            assert f"{held * LOOP_RECORDS_PER_STEP} records" in show.out, (what, show.out)
    print(
        f"\n{kills} SIGKILLs survived in {time.monotonic() - t0:.1f} s ({early} before the first step "
        f"completed); {steps_seen} complete steps read back; {leftover_tmp} half-written temporary "
        "segment(s) left behind and ignored"
    )
    assert kills >= MIN_KILLS

    # a killed writer's lock dies with it: the last directory can be recorded into again
    last = tmp_path / f"d{kills - 1}"
    with accdump.record(None, last, overwrite=True):
        accdump.probe("again", torch.ones(2))
    assert [r.name for r in accdump.load(last).records()] == ["again"]
