"""Recording inside CUDA graphs: statistics, fingerprints and filtered full tensors come from each
replay, named as at capture time; a bug that lives only in the graph path is named at the replay
where it first shows; captured probes leave the model's outputs bit-identical.

The CPU tests check the bookkeeping (how a replay's rows join a step, pausing); the others need
a GPU and run on the device machine."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import accdump
from accdump import ops, reference
from accdump.capture.cuda_graphs import GraphProbes, PendingStats, _MutationGuard, merge_replay
from accdump.capture.step_buffer import CHUNK_ROWS, Capture, StepBuffer
from accdump.demo.graphs import GraphDecoder
from accdump.demo.model import Config, build_model, prompt
from accdump.store import Role

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CFG = Config(layers=3, hidden=128, heads=4, intermediate=256, vocab=128, prompt_len=8)
TOKENS = 6  # prefill, then the first replay (right) and four more (stale with the bug)
MAX_LEN = 32


def _capture(name: str, call: int, stats_index: int, hash_index: int = -1, order: int = 0) -> Capture:
    return Capture(
        order,
        name,
        call,
        int(Role.OUTPUT),
        "0",
        "Linear",
        "float32",
        (2,),
        (1,),
        0,
        True,
        "cpu",
        stats_index,
        None,
        hash_index,
    )


def test_a_replay_joins_the_open_step_after_its_rows():
    step = StepBuffer(3)
    eager = step.stats_rows(torch.device("cpu"))
    for _ in range(CHUNK_ROWS + 5):  # two chunks, the second partly used
        eager.take()
    step.captures.append(_capture("eager", 0, 0))
    step.calls["shared"] = 2
    graph = StepBuffer(-1)
    rows = graph.stats_rows(torch.device("cpu"))
    for i in range(3):
        chunk, row, _ = rows.take()
        chunk[row] = float(i + 1)
    graph.captures += [
        _capture("shared", 0, 0, order=0),
        _capture("shared", 1, 2, order=1),
        _capture("only", 0, 1, order=2),
    ]
    graph.calls.update(shared=2, only=1)
    merge_replay(step, GraphProbes(graph, torch.device("cpu")))

    merged = step.captures[1:]
    assert [c.order for c in merged] == [1, 2, 3]
    assert [(c.name, c.call) for c in merged] == [("shared", 2), ("shared", 3), ("only", 0)]
    assert step.calls == {"shared": 4, "only": 1}
    table = torch.cat(eager.chunks)
    assert [float(table[c.stats_index, 0]) for c in merged] == [1.0, 3.0, 2.0]
    rows.chunks[0][0] = -7.0  # the graph's next replay: the step keeps the numbers of this one
    assert float(torch.cat(eager.chunks)[merged[0].stats_index, 0]) == 1.0
    assert eager.take()[2] == len(eager.chunks) * CHUNK_ROWS - CHUNK_ROWS  # a fresh chunk after the copies


def test_held_statistics_are_taken_before_an_op_writes_into_the_tensor():
    rows = torch.zeros(4, len(ops.STATS_FIELDS), dtype=torch.float64)
    pending = PendingStats(ops.stats_workspace("cpu"))
    x, y, other = torch.randn(64), torch.randn(3, 5), torch.randn(8)
    before_x, before_y = ops.tensor_stats_raw(x), ops.tensor_stats_raw(y[1:])
    with _MutationGuard(pending):
        pending.add(x, rows, 0)
        pending.add(y[1:], rows, 2)  # a view: a write to any view of its storage counts
        other.mul_(3)  # unrelated: nothing enqueued
        assert len(pending.items) == 2 and not rows.any()
        torch.add(y, 1, out=y)  # an out= write into the held storage
        assert not pending.items and pending.launches == 1
        x.mul_(2)  # no longer held
    assert torch.equal(rows[0], before_x) and torch.equal(rows[2], before_y)  # the values before the writes


def test_held_statistics_are_taken_in_batches():
    rows = torch.zeros(300, len(ops.STATS_FIELDS), dtype=torch.float64)
    pending = PendingStats(ops.stats_workspace("cpu"))
    xs = [torch.randn(i + 1) for i in range(250)]
    for i, x in enumerate(xs):
        pending.add(x, rows, i)
    assert len(pending.items) == 250 - 192  # one batch of 192 went when it filled
    pending.flush()
    want = torch.stack([ops.tensor_stats_raw(x) for x in xs])
    assert torch.equal(rows[:250], want) and not rows[250:].any()
    fps = torch.zeros(3, 2, dtype=torch.int64)
    pending.add_fingerprint(xs[7], fps, 2)
    pending.add(xs[7], rows, 299)
    pending.add_fingerprint(xs[9].view(2, 5).t(), fps, 0)
    assert not fps.any()
    pending.flush()
    assert fps[2].tolist() == reference.fingerprint(xs[7]).tolist()
    assert fps[0].tolist() == reference.fingerprint(xs[9].view(2, 5).t()).tolist() and not fps[1].any()
    assert torch.equal(rows[299], want[7])


def test_a_replay_step_is_written_as_the_same_table_as_its_captures():
    from accdump.capture.cuda_graphs import ReplayTemplate
    from accdump.capture.step_buffer import StepPayload
    from accdump.capture.writer_thread import payload_rows

    a, b = torch.randn(3, 4), torch.arange(6).reshape(2, 3)
    caps = [
        _capture("x", 0, 2, hash_index=1, order=0)._replace(tensor=a, shape=(3, 4), strides=(4, 1)),
        _capture("y.long_name", 1, 0, hash_index=0, order=1)._replace(tensor=a, shape=(3, 4), strides=(4, 1)),
        _capture("z", 0, 1, order=2)._replace(tensor=b, dtype="int64", shape=(2, 3), strides=(3, 1), arg="k"),
        _capture("w", 2, 3, order=3),
    ]
    stats = {"cpu": [torch.randn(4, len(ops.STATS_FIELDS), dtype=torch.float64)]}
    hashes = {"cpu": [torch.randint(-(2**62), 2**62, (2, 2))]}
    want_rows, want_heap = payload_rows(StepPayload(7, caps, stats, hashes, []))
    template = ReplayTemplate(caps)
    assert template.buffer_of.tolist() == [0, 0, 1, -1]
    got_rows, got_heap = payload_rows(StepPayload(7, [], stats, hashes, [], replay=(template, [a, b])))
    assert got_rows.tobytes() == want_rows.tobytes() and got_rows.dtype == want_rows.dtype
    assert [h.tobytes() for h in got_heap] == [h.tobytes() for h in want_heap]
    stats["cpu"][0][2, 0] = 99.0  # the next replay: new numbers in the same table
    again, _ = payload_rows(StepPayload(8, [], stats, hashes, [], replay=(template, [a, b])))
    assert again["step"].tolist() == [8] * 4 and again["count"][0] == 99.0 and want_rows["count"][0] != 99.0


def test_hex_digests_match_hex_digest():
    from accdump.capture.fingerprint import hex_digest, hex_digests

    table = torch.randint(-(2**63), 2**63 - 1, (50, 2), dtype=torch.int64).numpy()
    table[0] = (-1, 0)
    got = hex_digests(table)
    assert got.dtype == np.dtype("S32")
    assert [g.decode() for g in got] == [hex_digest((int(a), int(b))) for a, b in table]
    assert got[0] == b"f" * 16 + b"0" * 16


def test_paused_records_nothing_and_resumes(tmp_path):
    lin = torch.nn.Linear(4, 4)
    with accdump.record(lin, tmp_path / "d") as rec:
        lin(torch.randn(2, 4))
        with accdump.paused():
            lin(torch.randn(2, 4))
        lin(torch.randn(2, 4))
        assert rec.enabled
    assert accdump.load(tmp_path / "d").steps() == [0, 1]
    with accdump.paused():  # no recorder: nothing to pause
        lin(torch.randn(2, 4))


# --- on a GPU -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return build_model(CFG).cuda()


def _run(model, path, *, use_graph: bool, stale: bool = False, **kw) -> list[int]:
    dec = GraphDecoder(model, MAX_LEN, use_graph=use_graph, stale_slots=stale)
    with accdump.record(model, path, **kw):
        return dec.generate(prompt(CFG), TOKENS)


@cuda
def test_graph_replays_record_what_eager_decoding_records(model, tmp_path):
    eager = _run(model, tmp_path / "eager", use_graph=False)
    graph = _run(model, tmp_path / "graph", use_graph=True)
    assert graph == eager
    g, t = accdump.load(tmp_path / "eager"), accdump.load(tmp_path / "graph")
    assert t.steps() == g.steps() == list(range(TOKENS))
    golden = {r.key: r for r in g.records()}
    target = {r.key: r for r in t.records()}
    assert target.keys() == golden.keys()
    assert any(k[2] == "model.layers.2.self_attn.kv_cache" and k[1] == TOKENS - 1 for k in target)
    for key, r in target.items():
        assert r.shape == golden[key].shape, key
        s, e = dataclasses.asdict(r.stats), dataclasses.asdict(golden[key].stats)
        assert s == pytest.approx(e, rel=1e-5, abs=1e-6, nan_ok=True), key
    decode = [
        r for r in t.records(step=2) if r.name == "model.layers.0.self_attn.q_proj" and r.role == Role.OUTPUT
    ]
    assert decode and decode[0].shape == (1, 1, CFG.hidden)
    result = accdump.compare(tmp_path / "eager", tmp_path / "graph")
    assert result.first_divergence is None, result.verdict_line()


@cuda
def test_a_stale_slot_in_the_graph_path_is_named_at_the_second_replay(model, tmp_path):
    _run(model, tmp_path / "eager", use_graph=False)
    _run(model, tmp_path / "graph", use_graph=True, stale=True)
    eager_bugged = _run(model, tmp_path / "eager-stale", use_graph=False, stale=True)
    result = accdump.compare(tmp_path / "eager", tmp_path / "graph")
    d = result.first_divergence
    assert d is not None, result.verdict_line()
    assert (d.attributed_to, d.pair.target.step) == ("model.layers.0.self_attn.kv_cache", 2), (
        result.verdict_line()
    )
    assert d.pair.target.role == Role.OUTPUT and not any(p.failing for p in d.inputs)
    # the same runner decoding eagerly is right: the bug lives only in the graph
    assert eager_bugged == _run(model, tmp_path / "eager2", use_graph=False)
    assert accdump.compare(tmp_path / "eager", tmp_path / "eager-stale").first_divergence is None


@cuda
def test_hashes_from_replays_match_eager_bit_for_bit(model, tmp_path):
    _run(model, tmp_path / "eager", use_graph=False, mode="hash")
    _run(model, tmp_path / "graph", use_graph=True, mode="hash")
    _run(model, tmp_path / "stale", use_graph=True, stale=True, mode="hash")
    g = {r.key: r.hash for r in accdump.load(tmp_path / "eager").records()}
    t = {r.key: r.hash for r in accdump.load(tmp_path / "graph").records()}
    assert t == g and all(len(h) == 32 for h in t.values())
    s = {r.key: r.hash for r in accdump.load(tmp_path / "stale").records()}
    differ = sorted(k[1] for k in s if s[k] != g[k])  # the steps whose fingerprints differ
    assert differ and differ[0] == 2


@cuda
def test_full_tensors_from_replays_for_a_filtered_set_within_the_budget(model, tmp_path, capfd):
    kw = dict(mode="tensor", include=["model.layers.1.mlp*"])
    _run(model, tmp_path / "eager", use_graph=False, **kw)
    _run(model, tmp_path / "graph", use_graph=True, **kw)
    assert "CUDA graph captured with" in capfd.readouterr().err
    g, t = accdump.load(tmp_path / "eager"), accdump.load(tmp_path / "graph")
    golden = {r.key: r for r in g.records()}
    stored = [r for r in t.records() if r.has_tensor and r.role != Role.TOKENS]
    assert {r.name for r in stored} == {
        "model.layers.1.mlp",
        *(f"model.layers.1.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")),
    }
    assert {r.step for r in stored} == set(range(TOKENS))
    for r in stored:
        assert torch.equal(t.tensor(r), g.tensor(golden[r.key])), r.key
    tokens = [t.tensor(r) for r in t.records(role=Role.TOKENS)]
    assert [tuple(x.shape) for x in tokens] == [(1, CFG.prompt_len)] + [(1, 1)] * (TOKENS - 1)

    _run(model, tmp_path / "tight", use_graph=True, graph_tensor_bytes=16, **kw)
    assert "left out (over the graph tensor budget)" in capfd.readouterr().err
    tight = accdump.load(tmp_path / "tight")
    replayed = [r for r in tight.records() if r.step > 0 and r.role != Role.TOKENS]
    assert replayed and not any(r.has_tensor for r in replayed)  # statistics only, and said so
    assert all(r.stats.count > 0 for r in replayed)


@cuda
def test_captured_probes_leave_the_outputs_bit_identical(model, tmp_path):
    def logits_per_replay(record: bool) -> list[torch.Tensor]:
        dec = GraphDecoder(model, MAX_LEN)
        out: list[torch.Tensor] = []
        orig = dec._decode

        def keep(token, pos):
            y = orig(token, pos)
            out.append(y.clone())
            return y

        dec._decode = keep
        if record:
            with accdump.record(model, tmp_path / "rec", level="all", mode="hash"):
                dec.generate(prompt(CFG), TOKENS)
        else:
            dec.generate(prompt(CFG), TOKENS)
        return out

    plain, probed = logits_per_replay(False), logits_per_replay(True)
    assert len(plain) == TOKENS - 1
    assert all(torch.equal(a, b) for a, b in zip(plain, probed, strict=True))
    ops = [r for r in accdump.load(tmp_path / "rec").records(step=3) if "/" in r.name]
    assert any(r.name.endswith("/index_copy_.0") or "index_copy" in r.name for r in ops)


@cuda
def test_a_graph_captured_before_recording_replays_unrecorded(model, tmp_path):
    dec = GraphDecoder(model, MAX_LEN)
    expected = dec.generate(prompt(CFG), TOKENS)  # captured here, with no recorder
    with accdump.record(model, tmp_path / "d"):
        assert dec.generate(prompt(CFG), TOKENS) == expected
    assert accdump.load(tmp_path / "d").steps() == [0]  # the eager prefill; replays carry no probes


def test_the_static_cache_decoder_decodes_as_the_demo_model_does():
    from accdump.demo.model import generate

    model = build_model(CFG)
    expected = generate(model, prompt(CFG), TOKENS)
    assert GraphDecoder(model, MAX_LEN, use_graph=False).generate(prompt(CFG), TOKENS) == expected
    with pytest.raises(ValueError, match="do not fit"):
        GraphDecoder(model, 8, use_graph=False).generate(prompt(CFG), TOKENS)


class _WritesInPlace(torch.nn.Module):
    """Parent code writes into a child's output in place, between two recorded calls."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(64, 64)
        self.b = torch.nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.mul_(2.0)
        return self.b(h)


@cuda
@pytest.mark.parametrize("inference", [False, True], ids=["no_grad", "inference_mode"])
def test_in_place_writes_after_a_capture_do_not_change_what_was_recorded(tmp_path, inference):
    torch.manual_seed(0)
    model = _WritesInPlace().cuda()
    x = torch.randn(4, 64, device="cuda")
    ctx = torch.inference_mode if inference else torch.no_grad
    with ctx():
        with accdump.record(model, tmp_path / "eager"):
            model(x)
            model(x)
        with accdump.record(model, tmp_path / "graph"):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(x)
            graph.replay()
            graph.replay()
    g = {r.key: r for r in accdump.load(tmp_path / "eager").records()}
    t = {r.key: r for r in accdump.load(tmp_path / "graph").records()}
    assert t.keys() == g.keys() and len(t) == 2 * 6  # a, b, root: input and output, two steps
    for key, r in t.items():
        assert dataclasses.asdict(r.stats) == dataclasses.asdict(g[key].stats), key
    a_out = next(r for r in t.values() if r.name == "a" and r.role == Role.OUTPUT)
    b_in = next(r for r in t.values() if r.name == "b" and r.role == Role.INPUT and r.step == a_out.step)
    assert b_in.stats.l2norm == pytest.approx(2 * a_out.stats.l2norm, rel=1e-6)


def test_the_graph_tensor_budget_reaches_the_recorder_from_the_cli(tmp_path):
    from accdump.cli.record import options_from_cli

    opts = options_from_cli(
        "tensor", "module", [], [], [], [], None, None, [], None, False, False, False, [], graph_tensor_mb=2.5
    )
    assert opts["graph_tensor_bytes"] == int(2.5 * 2**20)
    rec = accdump.record(None, tmp_path / "d", **opts)
    assert rec.graph_tensor_bytes == int(2.5 * 2**20)


def _steps_recorded_by(script: str, path) -> tuple[str, list[int]]:
    """Runs `script` (which records into `path` and prints its steps) in a process of its own:
    torch's failed or broken captures leave the CUDA generator expecting a capture, which would
    break random numbers on the device in every later test of this process. (stderr, steps)"""
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr, json.loads(done.stdout.strip().splitlines()[-1])


_FAILED_START = """
import sys, torch, accdump
lin = torch.nn.Linear(8, 8).cuda()
x = torch.randn(2, 8).cuda()
with torch.no_grad(), accdump.record(lin, sys.argv[1]) as rec:
    graph = torch.cuda.CUDAGraph()
    try:
        graph.capture_begin()  # on the default stream: refused by torch
    except RuntimeError:
        pass
    else:
        raise SystemExit("capture_begin on the default stream was accepted")
    assert rec._graph is None
    lin(x)
print(accdump.load(sys.argv[1]).steps())
"""


@cuda
def test_a_capture_that_fails_to_start_leaves_recording_eager(tmp_path):
    stderr, steps = _steps_recorded_by(_FAILED_START, tmp_path / "d")
    assert "capture not recorded" in stderr
    assert steps == [0]


_BROKEN_CAPTURE = """
import sys, torch, accdump
lin = torch.nn.Linear(8, 8).cuda()
x = torch.randn(2, 8).cuda()
with torch.no_grad(), accdump.record(lin, sys.argv[1]) as rec:
    lin(x)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            lin(x)
            torch.cuda.synchronize()  # not allowed while capturing: the capture is invalidated
    except RuntimeError:
        pass
    else:
        raise SystemExit("a synchronize inside the capture was accepted")
    assert rec._graph is None and not torch.cuda.is_current_stream_capturing()
    lin(x)
print(accdump.load(sys.argv[1]).steps())
"""


@cuda
def test_a_capture_broken_by_the_users_code_is_closed_and_recording_goes_on(tmp_path):
    _, steps = _steps_recorded_by(_BROKEN_CAPTURE, tmp_path / "d")
    assert steps[0] == 0 and len(steps) == 2  # the eager steps before and after
