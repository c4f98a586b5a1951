"""Deferred statistics of the native capture (accdump._C.StepCapture, defer="cuda" by default):
tensors are measured in batches at the next flush, with the same bits as at capture; the first
step only watches for in-place writes, a later write is caught by the version counter and
reported, and every flush point (batch limits, chunks, forget, flush, finish) holds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import accdump
from accdump import ops
from accdump.capture.recorder import active_recorder
from accdump.capture.step_buffer import CHUNK_ROWS, NATIVE_DTYPES
from accdump.store.schema import Role

pytestmark = pytest.mark.skipif(not ops.native_available("cpu"), reason="accdump._C is not built")

CUDA = torch.cuda.is_available() and ops.native_available("cuda")
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
MEAN = ops.STATS_FIELDS.index("mean")


def _capture(defer: str) -> object:
    from accdump import _C

    return _C.StepCapture(NATIVE_DTYPES, defer=defer)


def _rows(finished: tuple) -> torch.Tensor:
    return torch.cat(finished[6][0]).cpu()


def _stats_by_record(finished: tuple) -> list[torch.Tensor]:
    rows = _rows(finished)
    return [rows[i] for i in finished[0][:, 7].tolist()]


def _watched(cap: object, device: str) -> None:
    """Runs one step, so that the next one defers."""
    cap.capture(torch.ones(3, device=device), "warm", 0, 1, "K")
    cap.finish()


def _tensors(device: str, n: int = 40, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    return [(torch.randn(7 + 13 * i, generator=g) * (i + 1)).to(device, dtypes[i % 4]) for i in range(n)]


@pytest.mark.parametrize("device", DEVICES)
def test_deferred_statistics_are_the_bits_measured_at_capture(device: str) -> None:
    xs = _tensors(device)
    results = {}
    for defer in ("none", "all"):
        cap = _capture(defer)
        _watched(cap, device)
        calls = cap.stats_calls
        for i, x in enumerate(xs):
            cap.capture(x, f"m{i}", 0, 1, "K")
        pending = cap.pending
        finished = cap.finish()
        results[defer] = (_stats_by_record(finished), cap.stats_calls - calls, pending)
    now, later = results["none"], results["all"]
    for a, b in zip(now[0], later[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert now[1] == len(xs) and now[2] == 0
    assert later[1] == 1 and later[2] == len(xs)  # one call for the whole batch, at finish


@pytest.mark.parametrize("device", DEVICES)
def test_the_first_step_measures_at_capture_and_learns_in_place_writes(device: str) -> None:
    cap = _capture("all")
    for step in range(3):
        x = torch.full((64,), 2.0, device=device)
        y = torch.full((64,), 5.0, device=device)
        cap.capture(x, "act", 0, 1, "K")
        cap.capture(y, "other", 0, 1, "K")
        x.mul_(10)  # the model writes the captured output in place (every step)
        rows = _stats_by_record(cap.finish())
        assert rows[0][MEAN].item() == 2.0, f"step {step}"  # the value when captured
        assert rows[1][MEAN].item() == 5.0
        assert cap.take_late() == []


@pytest.mark.parametrize("device", DEVICES)
def test_a_write_the_first_step_did_not_show_is_caught_and_reported(device: str) -> None:
    cap = _capture("all")
    _watched(cap, device)
    x = torch.full((64,), 2.0, device=device)
    cap.capture(x, "layer.act", 0, 1, "K")
    assert cap.pending == 1
    x.add_(1)
    rows = _stats_by_record(cap.finish())
    assert rows[0][MEAN].item() == 3.0  # measured after the write ...
    assert cap.take_late() == [("layer.act", 1, "0")]  # ... and said so
    assert cap.take_late() == []
    x = torch.full((64,), 2.0, device=device)
    cap.capture(x, "layer.act", 0, 1, "K")
    assert cap.pending == 0  # measured at capture from now on
    x.add_(1)
    assert _stats_by_record(cap.finish())[0][MEAN].item() == 2.0


@pytest.mark.parametrize("device", DEVICES)
def test_waiting_tensors_are_kept_alive_until_measured(device: str) -> None:
    cap = _capture("all")
    _watched(cap, device)
    for i in range(8):
        cap.capture(torch.full((1000,), float(i), device=device), f"t{i}", 0, 1, "K")  # no other reference
        junk = torch.full((1000,), -1.0, device=device)  # would take a freed tensor's memory
        del junk
    assert cap.pending == 8
    means = [r[MEAN].item() for r in _stats_by_record(cap.finish())]
    assert means == [float(i) for i in range(8)]


def test_flush_points() -> None:
    cap = _capture("all")
    _watched(cap, "cpu")
    xs = _tensors("cpu", 3)
    for i, x in enumerate(xs):
        cap.capture(x, f"m{i}", 0, 1, "K")
    assert cap.pending == 3
    cap.flush()
    assert cap.pending == 0
    cap.capture(torch.randn(5), "a", 0, 1, "K")
    cap.forget(xs[0])  # a write without a version bump is coming: what waits is measured first
    assert cap.pending == 0
    for i in range(70):  # the batch holds at most 64 tensors
        cap.capture(torch.randn(3), f"b{i}", 0, 1, "K")
    assert cap.pending == 70 - 64
    big = [torch.randn(4 << 20) for _ in range(4)]  # 16 MiB each: the batch holds 64 MiB
    for i, x in enumerate(big):
        cap.capture(x, f"big{i}", 0, 1, "K")
    assert cap.pending == 0
    cap.capture(torch.randn((16 << 20) // 4 + 1), "huge", 0, 1, "K")  # past 16 MiB: measured at once
    assert cap.pending == 0
    cap.finish()


def test_a_chunk_boundary_flushes_and_every_row_lands() -> None:
    cap = _capture("all")
    _watched(cap, "cpu")
    with torch.inference_mode():
        first = torch.full((3,), -1.0)  # measured at capture: the batches end off the chunk's end
    cap.capture(first, "first", 0, 1, "K")
    xs = [torch.full((3,), float(i)) for i in range(CHUNK_ROWS + 5)]
    for i, x in enumerate(xs):
        cap.capture(x, f"m{i}", 0, 1, "K")
        if i == CHUNK_ROWS - 2:
            assert cap.pending == 63  # rows 193..255 wait; the next row opens a chunk
        if i == CHUNK_ROWS - 1:
            assert cap.pending == 1
    finished = cap.finish()
    assert [len(c) for c in finished[6][0]] == [CHUNK_ROWS, CHUNK_ROWS]
    means = [r[MEAN].item() for r in _stats_by_record(finished)]
    assert means == [-1.0] + [float(i) for i in range(len(xs))]


def test_a_tensor_whose_data_moved_is_not_read_and_is_reported() -> None:
    cap = _capture("all")
    _watched(cap, "cpu")
    x = torch.full((64,), 2.0)
    cap.capture(x, "m", 0, 1, "K")
    x.set_(torch.full((8,), 9.0))  # new storage: the captured one may be gone
    finished = cap.finish()
    count = ops.STATS_FIELDS.index("count")
    assert _stats_by_record(finished)[0][count].item() == 0  # the row was never written
    assert cap.take_late() == [("m", 1, "0")]


def test_slices_of_a_large_storage_and_repeated_late_records() -> None:
    cap = _capture("all")
    _watched(cap, "cpu")
    big = torch.randn(5 << 20)  # 20 MiB: a slice would keep all of it alive
    cap.capture(big[:10], "slice", 0, 1, "K")
    assert cap.pending == 0
    xs = [torch.ones(4) for _ in range(3)]
    for call, x in enumerate(xs):
        cap.capture(x, "act", call, 1, "K")  # three calls of one module, one key
    for x in xs:
        x.add_(1)
    cap.finish()
    assert cap.take_late() == [("act", 1, "0")]  # said once


def test_inference_tensors_are_never_deferred() -> None:
    cap = _capture("all")
    _watched(cap, "cpu")
    with torch.inference_mode():
        x = torch.full((8,), 4.0)
    cap.capture(x, "m", 0, 1, "K")
    assert cap.pending == 0
    assert _stats_by_record(cap.finish())[0][MEAN].item() == 4.0


def test_the_cpu_is_not_deferred_by_default_and_bad_options_are_named() -> None:
    cap = _capture("cuda")
    _watched(cap, "cpu")
    cap.capture(torch.randn(8), "m", 0, 1, "K")
    assert cap.pending == 0
    with pytest.raises(ValueError, match="defer must be"):
        _capture("sometimes")


@pytest.mark.skipif(not CUDA, reason="needs CUDA and accdump's CUDA kernels")
def test_cuda_defers_by_default_and_a_stream_change_flushes() -> None:
    cap = _capture("cuda")
    _watched(cap, "cuda")
    xs = _tensors("cuda", 6)
    for i, x in enumerate(xs[:3]):
        cap.capture(x, f"m{i}", 0, 1, "K")
    assert cap.pending == 3
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        cap.capture(xs[3], "side", 0, 1, "K")
        assert cap.pending == 1  # the default stream's batch went out first
    torch.cuda.current_stream().wait_stream(side)
    finished = cap.finish()
    for x, row in zip(xs[:4], _stats_by_record(finished), strict=True):
        torch.testing.assert_close(row, ops.tensor_stats_raw(x).cpu(), rtol=0, atol=0, equal_nan=True)


class Glue(nn.Module):
    """A parent whose own code writes a child's output in place, from its third call on."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.proj = nn.Linear(16, 16)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.act(x)
        if self.calls >= 3:
            h.mul_(2)
        return self.proj(h)


def test_the_recorder_warns_of_a_late_record_and_its_numbers_stay_exact_later(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ACCDUMP_DEFER", "all")
    torch.manual_seed(0)
    model = Glue()
    x = torch.randn(4, 16)
    with torch.no_grad(), accdump.record(model, tmp_path / "d"):
        for _ in range(4):
            model(x)
    err = capsys.readouterr().err
    assert "step 2: act output '0' was written in place" in err and "step 3" not in err
    dump = accdump.load(tmp_path / "d")
    want = ops.tensor_stats(torch.relu(x)).mean
    for step, exact in ((0, True), (1, True), (2, False), (3, True)):
        (rec,) = [r for r in dump.records(step=step) if r.name == "act" and r.role == Role.OUTPUT]
        assert (rec.stats.mean == pytest.approx(want, rel=1e-12)) is exact, step


def test_a_bad_defer_setting_is_named(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCDUMP_DEFER", "later")
    with pytest.raises(accdump.AccdumpError, match="ACCDUMP_DEFER"):
        accdump.record(nn.Linear(2, 2), tmp_path / "d").start()
    assert active_recorder() is None  # nothing was left started


class WritesAfterCollective(nn.Module):
    """A parent whose child's output is then written by a 'collective' (no version bump)."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(x)
        rec = active_recorder()
        assert rec is not None
        rec.collective("all_reduce", (h,), lambda: h.data.mul_(4), lambda: (h,))  # .data: no version bump
        return h


def test_a_collective_first_measures_what_waits(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCDUMP_DEFER", "all")
    model = WritesAfterCollective()
    x = torch.rand(4, 16) + 0.5
    with torch.no_grad(), accdump.record(model, tmp_path / "d"):
        for _ in range(3):
            model(x)
    dump = accdump.load(tmp_path / "d")
    want = x.mean(dtype=torch.float64).item()
    for step in range(3):
        (out,) = [r for r in dump.records(step=step) if r.name == "act" and r.role == Role.OUTPUT]
        (after,) = [r for r in dump.records(step=step) if "all_reduce" in r.name and r.role == Role.OUTPUT]
        assert out.stats.mean == pytest.approx(want, rel=1e-12), step  # measured before the write
        assert after.stats.mean == pytest.approx(4 * want, rel=1e-12), step


def test_timing_adds_up_each_part_and_is_off_by_default() -> None:
    from accdump import _C

    cap = _C.StepCapture(NATIVE_DTYPES, defer="all", timing=True)
    _watched(cap, "cpu")
    start = cap.timings
    xs = _tensors("cpu", n=10)
    cap.capture(tuple(xs[:6]), "a", 0, 0, "K")  # one capture call: 6 records, 6 measures
    for i, x in enumerate(xs[6:]):
        cap.capture(x, "b", i, 1, "K")
    cap.capture(xs[0], "c", 0, 1, "K")  # measured already: a measure that launches nothing
    cap.finish()
    end = cap.timings
    calls = {part: end[part][0] - start[part][0] for part in end}
    assert calls == {
        "capture": 6,
        "walk": 6,
        "measure": 11,
        "flush": 1,  # at the end of the step
        "stats_call": 1,  # one call for the 10 deferred tensors
        "record_stream": 0,  # the CPU has no streams
        "new_chunk": 1,
        "finish": 1,
    }
    assert all(end[p][1] >= start[p][1] for p in end) and end["measure"][1] > start["measure"][1]
    assert end["capture"][1] >= end["measure"][1] - start["measure"][1]  # parts nest
    untimed = _capture("all")
    untimed.capture(xs[0], "a", 0, 0, "K")
    untimed.finish()
    assert all(v == (0, 0.0) for v in untimed.timings.values())
