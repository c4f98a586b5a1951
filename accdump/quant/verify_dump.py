"""`accdump verify`: every quantized linear of a checkpoint whose input and output a dump holds in
full, checked against the exact reference (accdump.quant.verify)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from accdump.errors import AccdumpError
from accdump.quant.checkpoint import Checkpoint, Unrecognised
from accdump.quant.layer_check import LayerCheck, verify_linear
from accdump.store.reader import Dump, Record
from accdump.store.schema import Role


@dataclass(frozen=True)
class DumpCheck:
    rank: int
    step: int
    call: int
    record_name: str
    check: LayerCheck


@dataclass
class VerifyRun:
    checks: list[DumpCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # layers that could not be checked, and why
    unrecognised: list[Unrecognised] = field(default_factory=list)

    @property
    def failed(self) -> list[DumpCheck]:
        return [c for c in self.checks if not c.check.passed]

    @property
    def exit_code(self) -> int:
        """0: every checked layer passed; 1: one did not; 2: nothing could be checked."""
        if not self.checks:
            return 2
        return 1 if self.failed else 0


def match_record_name(prefix: str, names: set[str]) -> str | None:
    """The recorded module name of checkpoint layer `prefix`: the same name, or one that differs
    only by leading components (a wrapper module or a missing `model.`)."""
    if prefix in names:
        return prefix
    found = [n for n in names if n.endswith("." + prefix) or prefix.endswith("." + n)]
    return min(found, key=len) if len(found) == 1 else None


def _io_pairs(
    dump: Dump, name: str, step: int | None, rank: int | None
) -> dict[tuple[int, int, int], dict[Role, Record]]:
    pairs: dict[tuple[int, int, int], dict[Role, Record]] = {}
    for rec in dump.records(rank=rank, step=step, name=name):
        if rec.name == name and rec.arg == "0" and rec.role in (Role.INPUT, Role.OUTPUT):
            pairs.setdefault((rec.rank, rec.step, rec.call), {})[rec.role] = rec
    return pairs


def verify_dump(
    checkpoint: str | Path | Checkpoint,
    dump: str | Path | Dump,
    layer: str = "*",
    step: int | None = None,
    rank: int | None = None,
    device: str | None = None,
    diagnose: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyRun:
    """Verifies every quantized layer matching the glob `layer`, for every recorded call."""
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
    d = dump if isinstance(dump, Dump) else Dump(dump)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    layers, unknown = ck.quantized_layers()
    run = VerifyRun(unrecognised=[u for u in unknown if fnmatch.fnmatchcase(u.name, layer)])
    wanted = {p: q for p, q in layers.items() if fnmatch.fnmatchcase(p, layer)}
    if not wanted:
        run.notes.append(f"no quantized layer of {ck.path} matches {layer!r}")
        return run
    names = {r.name for r in d.records(rank=rank, step=step, role=Role.OUTPUT)}
    for i, (prefix, qlayer) in enumerate(sorted(wanted.items())):
        if progress:
            progress(i, len(wanted))
        rec_name = match_record_name(prefix, names)
        if rec_name is None:
            run.notes.append(f"{prefix}: not in the dump")
            continue
        pairs = _io_pairs(d, rec_name, step, rank)
        dev_layer = qlayer.to(dev)
        for (r, s, call), io in sorted(pairs.items()):
            if Role.INPUT not in io or Role.OUTPUT not in io:
                run.notes.append(f"{prefix} (step {s}): input or output not recorded")
                continue
            if not (io[Role.INPUT].has_tensor and io[Role.OUTPUT].has_tensor):
                run.notes.append(f"{prefix} (step {s}): recorded without tensors (record with --mode tensor)")
                continue
            x = d.tensor(io[Role.INPUT]).to(dev)
            y = d.tensor(io[Role.OUTPUT]).to(dev)
            try:
                check = verify_linear(x, y, dev_layer, diagnose=diagnose)
            except AccdumpError as exc:
                run.notes.append(f"{prefix} (step {s}): {exc}")
                continue
            run.checks.append(DumpCheck(r, s, call, rec_name, check))
    if progress:
        progress(len(wanted), len(wanted))
    return run
