"""Chunked comparison of stored tensors: equal to whole-tensor metrics, bounded in memory."""

from __future__ import annotations

import math

import pytest
import torch

import accdump
from accdump import ops
from accdump.diff import streaming
from accdump.diff.streaming import (
    Staging,
    merge_metric_vectors,
    streamable,
    streamed_metrics,
    streamed_row_cosine,
)
from accdump.store import Dump


def record_pair(tmp_path, golden: torch.Tensor, target: torch.Tensor) -> tuple[Dump, Dump]:
    for label, t in (("golden", golden), ("target", target)):
        with accdump.record(None, tmp_path / label, mode="tensor"):
            accdump.probe("x", t)
    return Dump(tmp_path / "golden"), Dump(tmp_path / "target")


def only(d: Dump):
    (rec,) = [r for r in d.records() if r.name == "x"]
    return rec


def data(gen, shape, nonfinite=True):
    a = torch.randn(shape, generator=gen) * 3
    b = a + 0.05 * torch.randn(shape, generator=gen)
    flat_b = b.view(-1)
    flat_b[-7] += 40.0  # the largest difference, in the last chunk
    if nonfinite:
        flat_b[5] = float("nan")
        flat_b[123] = float("inf")
        a.view(-1)[200] = float("-inf")
    return a, b


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 1 << 20])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16)])
def test_streamed_equals_whole_tensor_metrics(tmp_path, gen, device, chunk_bytes, dtypes):
    a, b = data(gen, (37, 61))
    a, b = a.to(dtypes[0]), b.to(dtypes[1])
    gd, td = record_pair(tmp_path, a, b)
    g, t = only(gd), only(td)
    assert streamable(g, t)
    got = streamed_metrics(gd, g, td, t, 1e-3, 1e-2, Staging(torch.device(device), chunk_bytes))
    want = ops.compare_metrics(a, b, 1e-3, 1e-2)
    for name in ops.METRICS_FIELDS:
        x, y = getattr(got, name), getattr(want, name)
        assert x == pytest.approx(y, rel=1e-12, abs=1e-9), name
    assert got.argmax_abs_diff == 37 * 61 - 7


def test_streamed_row_cosine_and_rows_longer_than_a_chunk(tmp_path, gen, device):
    a, b = data(gen, (9, 50), nonfinite=False)
    gd, td = record_pair(tmp_path, a, b)
    g, t = only(gd), only(td)
    want = ops.rowwise_metrics(a, b).cosine
    for chunk in (4 * 50 * 2, 4 * 50 * 9, 4 * 7):  # whole rows per chunk, all rows, 7 values (< a row)
        got = streamed_row_cosine(gd, g, td, t, Staging(torch.device(device), chunk))
        assert torch.allclose(got, want.double().cpu(), atol=1e-12), chunk


def test_merge_takes_the_first_chunk_reaching_the_maximum():
    v = torch.zeros(3, len(ops.METRICS_FIELDS), dtype=torch.float64)
    v[:, 0] = 10  # counts add up
    v[:, 4] = torch.tensor([2.0, 5.0, 5.0])  # max |a-b|
    v[:, 5] = torch.tensor([3.0, 4.0, 1.0])  # its index inside each chunk
    v[:, 8] = torch.tensor([0.5, 0.1, 0.7], dtype=torch.float64)
    out = merge_metric_vectors(v, [0, 10, 20])
    assert out[0] == 30 and out[4] == 5.0 and out[5] == 14.0 and out[8] == 0.7
    v[:, 5] = -1  # no finite position anywhere
    assert merge_metric_vectors(v, [0, 10, 20])[5] == -1


def test_compare_never_loads_a_streamable_tensor_whole(tmp_path, gen, monkeypatch):
    """With small chunks, compare reads every tensor piece by piece (Dump.tensor is never called)
    and still finds the divergence and its worst rows."""
    a = torch.randn(64, 32, generator=gen)
    b = a.clone()
    b[17] *= -1.0  # one row flipped: the pair fails, row 17 is the worst
    gd, td = record_pair(tmp_path, a, b)
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 4 * 32 * 3)
    monkeypatch.setattr(Dump, "tensor", lambda *a, **k: pytest.fail("a whole tensor was loaded"))
    result = accdump.compare(gd, td, device="cpu")
    d = result.first_divergence
    assert d is not None and d.pair.target.name == "x"
    assert d.pair.metrics.rows_cosine_worst[0][0] == 17
    assert math.isclose(d.token_cosine[17], -1.0, abs_tol=1e-9)
    assert len(d.token_cosine) == 64


def test_shapes_differing_by_unit_dims_stream_and_others_do_not(tmp_path, gen):
    a = torch.randn(1, 8, 4, generator=gen)
    gd, td = record_pair(tmp_path, a, a.reshape(8, 4))
    assert streamable(only(gd), only(td))
    res = accdump.compare(gd, td, device="cpu")
    assert res.first_divergence is None and res.pairs[0].metrics.cosine == pytest.approx(1.0)
    gd2, td2 = record_pair(tmp_path / "b", a, torch.randn(8, 5, generator=gen))
    assert not streamable(only(gd2), only(td2))


def test_read_into_refuses_bytes_that_are_not_stored(tmp_path, gen):
    import numpy as np

    from accdump.errors import DumpFormatError

    gd, _ = record_pair(tmp_path, torch.randn(4, 4, generator=gen), torch.randn(4, 4, generator=gen))
    g = only(gd)
    out = np.empty(16, dtype=np.uint8)
    gd.read_into(g, 48, out)  # the last 16 of 64 bytes
    assert out.tobytes() == gd.tensor(g).reshape(-1)[12:].numpy().tobytes()
    with pytest.raises(DumpFormatError, match="not stored"):
        gd.read_into(g, 56, out)


def test_stats_metrics_leave_unknown_statistics_out():
    """Imported statistics may lack a norm (NaN) or counts (-1): no verdict comes from them."""
    import dataclasses

    from accdump.diff.metrics import Thresholds, Verdict, stats_metrics, verdict_of

    stats = ops.tensor_stats(torch.arange(6.0))
    unknown = dataclasses.replace(stats, l2norm=math.nan, nan=-1, posinf=-1, neginf=-1)
    rec = type("R", (), {})
    g, t = rec(), rec()
    g.stats, t.stats = stats, unknown
    m = stats_metrics(g, t)
    assert m.norm_ratio is None and m.new_nan == 0 and m.new_inf == 0
    assert verdict_of(m, Thresholds()) == Verdict.PASS
