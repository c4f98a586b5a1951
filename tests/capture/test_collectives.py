"""torch.distributed collectives are recorded (2 processes on gloo): a missing or doubled
all_reduce shows up as records, each rank writes its own files."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import accdump
from accdump.store import Role

DIM, FF = 8, 16


class RowParallel(nn.Module):
    """The second linear of a tensor-parallel MLP: each rank holds a slice of the input features
    and all-reduces its partial output `reduces` times (1 is right)."""

    def __init__(self, weight: torch.Tensor, rank: int, world: int, reduces: int):
        super().__init__()
        cols = weight.shape[1] // world
        self.weight = nn.Parameter(weight[:, rank * cols : (rank + 1) * cols].clone())
        self.reduces = reduces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.T
        for _ in range(self.reduces):
            dist.all_reduce(y)
        return y


class TPMLP(nn.Module):
    def __init__(self, rank: int, world: int, reduces: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        up, down = torch.randn(FF, DIM, generator=g), torch.randn(DIM, FF, generator=g)
        rows = FF // world
        self.up = nn.Linear(DIM, rows, bias=False)  # column-parallel: a slice of the outputs
        with torch.no_grad():
            self.up.weight.copy_(up[rank * rows : (rank + 1) * rows])
        self.down = RowParallel(down, rank, world, reduces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _worker(rank: int, world: int, port: int, path: str, reduces: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = TPMLP(rank, world, reduces)
        x = torch.randn(3, DIM, generator=torch.Generator().manual_seed(1))
        with torch.no_grad(), accdump.record(model, path, mode="tensor"):
            model(x)
            model(x)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_tp(tmp_path, reduces: int):
    path = tmp_path / f"tp2-reduces{reduces}"
    mp.start_processes(_worker, args=(2, free_port(), str(path), reduces), nprocs=2, start_method="spawn")
    return accdump.load(path)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collectives")
    return {n: record_tp(tmp, n) for n in (0, 1, 2)}


def collective_records(dump, rank=0, step=0):
    return [r for r in dump.records(rank=rank, step=step) if "/all_reduce." in r.name]


def test_each_rank_writes_its_own_files_with_the_world_size(dumps):
    d = dumps[1]
    assert d.ranks == [0, 1]
    for rank in (0, 1):
        assert d.meta(rank)["rank"] == rank and d.meta(rank)["world_size"] == 2
        assert d.steps(rank) == [0, 1]


def test_all_reduce_inputs_and_outputs_are_recorded(dumps):
    d = dumps[1]
    per_rank = {}
    for rank in (0, 1):
        recs = {(r.role, r.arg): r for r in collective_records(d, rank)}
        assert {r.name for r in recs.values()} == {"down/all_reduce.0"}
        assert recs[(Role.INPUT, "0")].kind == "all_reduce"
        per_rank[rank] = (d.tensor(recs[(Role.INPUT, "0")]), d.tensor(recs[(Role.OUTPUT, "0")]))
    partial_sum = per_rank[0][0] + per_rank[1][0]
    for rank in (0, 1):
        torch.testing.assert_close(per_rank[rank][1], partial_sum)  # the reduced result, on each rank
    assert not torch.equal(per_rank[0][0], per_rank[1][0])  # the inputs are partial: they differ
    out = next(r for r in d.records(rank=0, step=0) if r.name == "down" and r.role == Role.OUTPUT)
    torch.testing.assert_close(d.tensor(out), partial_sum)


def test_missing_and_doubled_all_reduce_show_up(dumps):
    assert collective_records(dumps[0]) == []
    doubled = {r.name for r in collective_records(dumps[2])}
    assert doubled == {"down/all_reduce.0", "down/all_reduce.1"}


def test_collectives_are_wrapped_only_while_recording(tmp_path):
    from torch.distributed import distributed_c10d

    originals = (dist.all_reduce, distributed_c10d.all_reduce, dist.all_gather_into_tensor)
    with accdump.record(nn.Linear(2, 2), tmp_path / "d"):
        assert dist.all_reduce is not originals[0] and distributed_c10d.all_reduce is not originals[1]
    assert (dist.all_reduce, distributed_c10d.all_reduce, dist.all_gather_into_tensor) == originals


class FunctionalReduce(nn.Module):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed._functional_collectives as funcol

        return funcol.all_reduce(x * (self.rank + 1), "sum", dist.group.WORLD) + 1


def _functional_worker(rank: int, world: int, port: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = FunctionalReduce(rank)
        with torch.no_grad(), accdump.record(model, path, level="op"):
            model(torch.ones(2, 3))
    finally:
        dist.destroy_process_group()


def test_functional_collectives_are_ops(tmp_path):
    """torch.distributed's functional collectives are ATen ops: level `op` records them."""
    path = tmp_path / "funcol"
    mp.start_processes(_functional_worker, args=(2, free_port(), str(path)), nprocs=2, start_method="spawn")
    d = accdump.load(path)
    for rank in (0, 1):
        recs = {r.role: r for r in d.records(rank=rank) if r.name == "/all_reduce.0"}
        assert recs[Role.INPUT].stats.sum == 6.0 * (rank + 1)
        assert recs[Role.OUTPUT].stats.sum == 18.0  # 6 + 12: reduced over both ranks
