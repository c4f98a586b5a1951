"""A folder of tensor files whose relative paths a pattern maps onto record fields.

`--pattern "PP_{pp}/TP_{rank}/iteration_{step}/{name}.npy"`: `{step}`, `{rank}` and `{call}` match
digits, `{role}` input / output / parameter (and their short forms), `{name}` and `{arg}` any text
within one path component, any other `{field}` likewise (and is ignored), `*` any text within a
component. `{name}` is required. Without `{step}` the step is 0, without `{rank}` it is --rank (or
0), without `{role}` records are outputs, without `{call}` repeated names count up in path order.
A pattern without a file suffix matches paths with any tensor suffix. A file holding several
tensors (a tuple / list / dict in a .pt, an .npz, a safetensors file) gives one record per tensor,
its position or key becoming the argument.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from accdump.errors import SourceFormatError
from accdump.importers.records import ForeignRecord, natural_key, relative, tree_order_key
from accdump.importers.source import NO_ORDER, ImportSource, Progress, SourceOptions
from accdump.importers.tensorfiles import SUFFIXES, load_tensors
from accdump.store.schema import Role

_TOKEN = re.compile(r"\{([^{}]*)\}|\*|[{}]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ROLES = {
    "input": Role.INPUT, "inputs": Role.INPUT, "in": Role.INPUT,
    "output": Role.OUTPUT, "outputs": Role.OUTPUT, "out": Role.OUTPUT,
    "param": Role.PARAMETER, "parameter": Role.PARAMETER, "parameters": Role.PARAMETER,
    "weight": Role.PARAMETER,
}  # fmt: skip
_FIELD_RE = {
    "step": r"\d+",
    "rank": r"\d+",
    "call": r"\d+",
    "role": "|".join(sorted(_ROLES, key=len, reverse=True)),
}


def compile_pattern(pattern: str) -> tuple[re.Pattern[str], set[str], bool]:
    """(regex over relative paths, field names, whether the pattern names a file suffix)."""
    parts, fields, pos = [], set(), 0
    for m in _TOKEN.finditer(pattern):
        parts.append(re.escape(pattern[pos : m.start()]))
        pos = m.end()
        token = m.group(0)
        if token == "*":
            parts.append(r"[^/]*")
            continue
        field = m.group(1)
        if field is None or not _IDENT.fullmatch(field):
            raise SourceFormatError(
                f"--pattern {pattern!r}: malformed field {token!r} at position {m.start()} "
                "(fields look like {step}, {rank}, {name})"
            )
        if field in fields:
            parts.append(f"(?P={field})")
            continue
        fields.add(field)
        parts.append(f"(?P<{field}>{_FIELD_RE.get(field, r'[^/]+?')})")
    parts.append(re.escape(pattern[pos:]))
    if "name" not in fields:
        raise SourceFormatError(
            f"--pattern {pattern!r}: pattern field missing: {{name}} must appear (the record name, "
            "e.g. 'iteration_{step}/{name}.npy')"
        )
    suffix = Path(pattern).suffix.lower()
    if suffix and "{" not in suffix and "*" not in suffix and suffix not in SUFFIXES:
        raise SourceFormatError(
            f"--pattern {pattern!r}: names {suffix} files; tensor files are {', '.join(SUFFIXES)}"
        )
    return re.compile("".join(parts)), fields, suffix in SUFFIXES


@dataclass
class _Entry:
    rank: int
    step: int
    name: str
    call: int | None
    role: Role
    arg: str
    path: Path


class PatternSource(ImportSource):
    name = "pattern"
    ordered = False

    def __init__(self, root: Path, pattern: str, opts: SourceOptions):
        super().__init__(root, opts)
        regex, fields, with_suffix = compile_pattern(pattern)
        self.pattern = pattern
        self.entries: list[_Entry] = []
        for path in self.walk():
            rel = relative(path, root).replace("\\", "/")
            if path.suffix.lower() not in SUFFIXES:
                self.notes.unmatched.append(rel)
                continue
            m = regex.fullmatch(rel if with_suffix else rel[: -len(path.suffix)])
            if m is None:
                self.notes.unmatched.append(rel)
                continue
            g = m.groupdict()
            rank = int(g["rank"]) if "rank" in fields else (self.rank or 0)
            if not self.wants_rank(rank):
                continue
            self.entries.append(
                _Entry(
                    rank,
                    int(g.get("step") or 0),
                    g["name"],
                    int(g["call"]) if "call" in fields else None,
                    _ROLES[g["role"].lower()] if "role" in fields else Role.OUTPUT,
                    g.get("arg") or "",
                    path,
                )
            )
        if not self.entries:
            raise SourceFormatError(
                f"{root}: no file matches --pattern {pattern!r}"
                + (f" (e.g. {self.notes.unmatched[0]!r} does not)" if self.notes.unmatched else "")
            )
        self.check_strict()
        self.entries.sort(
            key=lambda e: (e.rank, e.step, tree_order_key(e.name, e.role, e.arg), natural_key(str(e.path)))
        )
        self.notes.note(NO_ORDER.format(tool="A pattern folder"))
        self.world_size = max(e.rank for e in self.entries) + 1
        self.units = len(self.entries)
        if "rank" not in fields:
            self.notes.note(f"the pattern names no rank: all files are rank {self.rank or 0}")
        if "step" not in fields:
            self.notes.note("the pattern names no step: all files are step 0")

    def reorder(self, position: Callable[[str, Role], float], origin: str = "--order-like") -> None:
        self.entries.sort(
            key=lambda e: (
                e.rank,
                e.step,
                position(e.name, e.role),
                tree_order_key(e.name, e.role, e.arg),
                natural_key(str(e.path)),
            )
        )
        self.notes.notes = [n for n in self.notes.notes if "--order-like" not in n]
        self.notes.note(f"execution order taken from {origin}")

    def records(self, progress: Progress | None = None) -> Iterator[ForeignRecord]:
        calls: Counter[tuple[int, int, str, Role, str]] = Counter()
        for i, e in enumerate(self.entries):
            key = (e.rank, e.step, e.name, e.role, e.arg)
            call = e.call if e.call is not None else calls[key]
            calls[key] += 1
            items = load_tensors(e.path, self.dtype, self.notes)
            for k, t in items:
                if len(items) == 1 and k == "0":
                    arg = e.arg or "0"
                else:
                    arg = f"{e.arg}.{k}" if e.arg else k
                yield ForeignRecord(e.rank, e.step, e.name, call, e.role, arg, tensor=t, source=str(e.path))
            if progress is not None:
                progress(i + 1, self.units)
