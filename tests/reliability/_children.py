"""What the forked children of _zygote_server run (imported once, in the server)."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import rich.progress  # noqa: F401  (the CLI imports these lazily: import them once, before forking)
import torch
from torch import nn

import accdump
import accdump.cli.show  # noqa: F401
import accdump.cli.verify  # noqa: F401
import accdump.diff.report  # noqa: F401
import accdump.quant.verify_dump  # noqa: F401
from accdump.cli.main import main

DUMP_FORMAT_ERROR = 3  # read_all: the reader raised DumpFormatError (its message is on stderr)


def cli(*argv: str) -> int:
    """`accdump ARGV...` through the CLI entry point; its exit status."""
    sys.argv = ["accdump", *argv]
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def dump_digest(path: str) -> list[list]:
    """Everything a dump holds, as JSON-able rows: every record's fields and its tensor's SHA-256."""
    dump = accdump.load(path)
    out: list[list] = [[sorted((k, repr(v)) for k, v in dump.meta().items()), dump.steps(), len(dump)]]
    for r in dump.records():
        bits = (
            hashlib.sha256(dump.tensor(r).view(-1).view(torch.uint8).numpy()).hexdigest()
            if r.has_tensor
            else None
        )
        out.append(
            [
                r.rank,
                r.step,
                r.order,
                r.name,
                r.call,
                int(r.role),
                r.arg,
                r.kind,
                r.dtype,
                list(r.shape),
                list(r.strides),
                r.storage_offset,
                r.contiguous,
                r.device,
                repr(r.stats),
                r.hash,
                bits,
            ]
        )
    dump.close()
    return out


def read_all(path: str, digest_file: str) -> int:
    """Reads all of a dump through the library; writes its digest. DumpFormatError: its message on
    stderr and DUMP_FORMAT_ERROR; any other exception escapes (a traceback, exit status 70)."""
    try:
        digest = dump_digest(path)
    except accdump.DumpFormatError as exc:
        print(str(exc), file=sys.stderr)
        return DUMP_FORMAT_ERROR
    with open(digest_file, "w") as f:
        json.dump(digest, f)
    return 0


def loop_model(hidden: int, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """The model record_forever runs, and its input at step 0 (step i gets x + i)."""
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(hidden, hidden) for _ in range(4)])
    return model, torch.linspace(-1, 1, 16 * hidden).reshape(16, hidden)


LOOP_RECORDS_PER_STEP = 2 + 4 * 2  # the root's input and output, then each Linear's


def record_forever(path: str, progress: str, mode: str, hidden: int, seed: int) -> int:
    """Records the loop model step after step until killed; after each step, appends the number of
    steps the writer has completed (written, renamed into place and fsynced) to `progress`."""
    model, x = loop_model(hidden, seed)
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    rec = accdump.record(model, path, mode=mode).start()
    i, reported = 0, -1
    with torch.no_grad():
        while True:
            model(x + i)
            i += 1
            done = len(rec.steps_written)
            if done != reported:
                os.write(fd, f"{done}\n".encode())  # one write(2): the line is whole or absent
                reported = done


def noop() -> int:
    return 0
