"""compare's read-ahead (accdump/diff/prefetch.py): the results of a serial comparison, reads on
worker threads with a bounded number of chunks in flight, read errors raised as before."""

from __future__ import annotations

import json
import shutil
import threading
import time

import h5py
import pytest
import torch

import accdump
from accdump.diff import comparison, streaming
from accdump.diff.prefetch import Job, Prefetcher
from accdump.diff.streaming import Staging, streamable, streamed_metrics
from accdump.store import Dump

from ._tiny import golden_model, prompt, target_copy

CHUNK = 16 << 10  # small chunks: the big tensor streams in 192 of them
BIG = (1024, 768)  # 3 MiB of float32: spans several 1 MiB chunks of the HDF5 heap


def record_run(model, path, ids, big: torch.Tensor) -> Dump:
    with torch.no_grad(), accdump.record(model, path, mode="tensor"):
        model(ids)
        accdump.probe("big", big)
    return Dump(path)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """A tiny decoder's forward and a big probe, golden and with layers.2.mlp.down_proj perturbed."""
    tmp = tmp_path_factory.mktemp("prefetch")
    golden = golden_model()
    target = target_copy(golden)
    w = target.layers[2].mlp.down_proj.weight
    with torch.no_grad():
        w.add_(w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(99)))
    gen = torch.Generator().manual_seed(5)
    big = torch.randn(BIG, generator=gen)
    ids = prompt()
    gd = record_run(golden, tmp / "golden", ids, big)
    td = record_run(target, tmp / "target", ids, big + 1e-4 * torch.randn(BIG, generator=gen))
    return gd.path, td.path


def as_json(result) -> str:
    return json.dumps(result.to_dict(), sort_keys=True)


def test_read_ahead_gives_the_serial_result(dumps, device, monkeypatch):
    monkeypatch.setattr(streaming, "CHUNK_BYTES", CHUNK)
    threads: set[str] = set()
    read_into = Dump.read_into

    def logged(self, *args):
        threads.add(threading.current_thread().name)
        return read_into(self, *args)

    monkeypatch.setattr(Dump, "read_into", logged)
    ahead = comparison.compare(*dumps, device=device)
    assert any(name.startswith("accdump-compare") for name in threads), threads
    monkeypatch.setattr(comparison, "WORKERS", 0)
    threads.clear()
    serial = comparison.compare(*dumps, device=device)
    assert threads == {threading.current_thread().name}
    assert as_json(ahead) == as_json(serial)
    d = ahead.first_divergence
    assert d is not None and d.pair.target.name == "layers.2.mlp.down_proj"
    assert d.pair.metrics.rows_cosine_worst  # the second, per-row pass ran while reads went on
    # and each streamed pair measures what streamed_metrics gives, field by field
    gd, td = Dump(dumps[0]), Dump(dumps[1])
    staging = Staging(torch.device(device), CHUNK)
    streamed = [p for p in ahead.pairs if streamable(p.golden, p.target)]
    assert 20 < len(streamed) < len(ahead.pairs)  # token ids are measured whole, in the caller's thread
    fields = ("cosine", "rel_l2", "norm_ratio", "sqnr_db", "max_abs_diff", "allclose_fail_fraction")
    for p in streamed:
        want = streamed_metrics(gd, p.golden, td, p.target, 1e-3, 1e-2, staging)
        got = [getattr(p.metrics, f) for f in fields]
        assert got == [getattr(want, f) for f in fields], p.target.name


def jobs_of(gd: Dump, td: Dump, name: str, copies: int) -> list[Job | None]:
    (g,) = gd.records(name=name)
    (t,) = td.records(name=name)
    return [Job(g, t, 1e-3, 1e-2) if i % 3 else None for i in range(copies)]


def test_chunks_in_flight_are_bounded_and_results_come_in_order(dumps, device, monkeypatch):
    gd, td = Dump(dumps[0]), Dump(dumps[1])
    reads = []
    read_into = Dump.read_into

    def counted(self, record, start, out):
        reads.append(out.ctypes.data)
        return read_into(self, record, start, out)

    monkeypatch.setattr(Dump, "read_into", counted)
    jobs = jobs_of(gd, td, "big", 7)  # None, job, job, None, job, job, None
    chunks = -(-BIG[0] * BIG[1] * 4 // CHUNK)
    with Prefetcher(gd, td, torch.device(device), CHUNK, workers=2, depth=3) as ahead:
        results = ahead.metrics(jobs)
        assert next(results) is None
        first = next(results)
        time.sleep(0.5)  # the workers read ahead while the caller holds the first result
        assert 2 * chunks < len(reads) <= 2 * (chunks + 3)
        rest = list(results)
    assert len(set(reads)) <= 2 * 2  # each worker reads each side into its own reused buffer
    staging = Staging(torch.device(device), CHUNK)
    for job, got in zip(jobs, [None, first, *rest], strict=True):
        if job is None:
            assert got is None
            continue
        want = streamed_metrics(gd, job.golden, td, job.target, 1e-3, 1e-2, staging)
        assert got == want


def corrupt_chunk_of(dump: Dump, name: str) -> None:
    """Flips bytes of the HDF5 heap chunk holding the middle of `name`'s tensor (its checksum fails)."""
    (rec,) = dump.records(name=name)
    dump.close()
    with h5py.File(rec.segment, "r") as f:
        heap = f["heap"]
        middle = rec.heap_offset + rec.heap_nbytes // 2
        info = heap.id.get_chunk_info_by_coord((middle - middle % heap.chunks[0],))
    data = bytearray(rec.segment.read_bytes())
    for i in range(info.byte_offset + 100, info.byte_offset + 108):
        data[i] ^= 0x5A
    rec.segment.write_bytes(bytes(data))


def compare_error(golden, target) -> str:
    """compare's DumpFormatError message, from a thread that must end within a minute (no hang)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            comparison.compare(golden, target, device="cpu")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "compare hangs after a read error"
    assert len(errors) == 1 and isinstance(errors[0], accdump.DumpFormatError), errors
    return str(errors[0])


def test_a_corrupt_tensor_raises_the_serial_error_and_stops_the_workers(dumps, tmp_path, monkeypatch):
    golden, target = tmp_path / "golden", tmp_path / "target"
    shutil.copytree(dumps[0], golden)
    shutil.copytree(dumps[1], target)
    corrupt_chunk_of(Dump(target), "big")
    monkeypatch.setattr(streaming, "CHUNK_BYTES", CHUNK)
    ahead = compare_error(golden, target)
    assert "tensor of 'big'" in ahead and "cannot be read" in ahead and str(target) in ahead
    assert not [t for t in threading.enumerate() if t.name.startswith("accdump-compare")]
    monkeypatch.setattr(comparison, "WORKERS", 0)
    assert compare_error(golden, target) == ahead
    # the message streamed_metrics (the serial path) gives
    gd, td = Dump(golden), Dump(target)
    ((g,), (t,)) = gd.records(name="big"), td.records(name="big")
    with pytest.raises(accdump.DumpFormatError) as serial:
        streamed_metrics(gd, g, td, t, 1e-3, 1e-2, Staging(torch.device("cpu"), CHUNK))
    assert str(serial.value) == ahead
