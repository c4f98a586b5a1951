"""SGLang's dumper (python/sglang/srt/debug_utils/dumper.py).

As read in sgl-project/sglang: `dumper.dump(name, value, **tags)` writes one .pt file per call into
`DIR/EXP_NAME/` (default DIR /tmp/dumper), named by its tags `key=value` joined by `___`:
`step`, `rank`, `dump_index` (a per-process counter in call order), `name`, `recompute_status`,
then the call's own tags and the context set with `set_ctx` (e.g. `layer_id`) (_Dumper._dump_single,
_format_tags). The file holds `{"value": value, "meta": {...}}`. Older versions named the step
`forward_pass_id` (counted from 1, files under `sglang_dump_*`) and saved the bare value; the
dump loader accepted both (`curr_step` in between; debug_utils/dump_loader.py, read_meta).
The non-intrusive mode hooks every module and names its dumps
`non_intrusive__{module}.inputs.{i or kwarg}` and `non_intrusive__{module}.output[.{i}]`
(_NonIntrusiveDumper._dump_value).

Mapping: non-intrusive dumps become module records (name = the module path, role input/output,
arg = position or keyword); other dumps become probes named by `name`, with any tags other than
the bookkeeping ones appended as `@k=v,...` (so `hidden_states@layer_id=3`). The call counts
repeated names within a step in dump_index order; records are in dump_index order. Values that
hold no tensor (ints, strings) are listed and left out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from accdump.capture.flatten import find_tensors
from accdump.errors import SourceFormatError
from accdump.importers.records import ForeignRecord, relative
from accdump.importers.source import ImportSource, Progress, SourceOptions
from accdump.importers.tensorfiles import load_pt, settle_dtype
from accdump.store.dtypes import dtype_name
from accdump.store.schema import Role

_PREFIX = "non_intrusive__"
_INPUT = re.compile(r"(?:(?P<mod>.+)\.)?inputs\.(?P<arg>[^.]+)(?:\.(?P<key>[^.]+))?")
_OUTPUT = re.compile(r"(?:(?P<mod>.+)\.)?output(?:\.(?P<key>[^.]+))?")
_STEP_KEYS = ("step", "forward_pass_id", "curr_step")
_BOOKKEEPING = {
    *_STEP_KEYS, "rank", "dump_index", "name", "recompute_status", "world_rank", "world_size",
    "pp_rank", "tp_rank", "cp_rank", "ep_rank", "etp_rank",
}  # fmt: skip


def parse_tags(stem: str) -> dict[str, str] | None:
    """The tags of a dumper file name, or None if it is not one."""
    tags = {}
    for part in stem.split("___"):
        k, sep, v = part.partition("=")
        if not sep or not k:
            return None
        tags[k] = v
    return tags if "name" in tags and "dump_index" in tags else None


def record_identity(tags: dict[str, str]) -> tuple[str, Role, str]:
    """(name, role, arg) of a dump."""
    name = tags["name"]
    if name.startswith(_PREFIX):
        rest = name[len(_PREFIX) :]
        m = _INPUT.fullmatch(rest)
        if m:
            arg = m.group("arg") + (f".{m.group('key')}" if m.group("key") else "")
            return m.group("mod") or "", Role.INPUT, arg
        m = _OUTPUT.fullmatch(rest)
        if m:
            return m.group("mod") or "", Role.OUTPUT, m.group("key") or "0"
    extra = [f"{k}={v}" for k, v in tags.items() if k not in _BOOKKEEPING]
    return name + ("@" + ",".join(extra) if extra else ""), Role.PROBE, "0"


@dataclass
class _File:
    rank: int
    step: int
    index: int
    name: str
    role: Role
    arg: str
    path: Path


class SglangSource(ImportSource):
    name = "sglang"

    def __init__(self, root: Path, opts: SourceOptions):
        super().__init__(root, opts)
        self.files: list[_File] = []
        folders: set[Path] = set()
        one_based = False
        for path in self.walk():
            tags = parse_tags(path.stem) if path.suffix == ".pt" else None
            if tags is None:
                self.notes.unmatched.append(relative(path, root))
                continue
            step_key = next((k for k in _STEP_KEYS if k in tags), None)
            try:
                r, index = int(tags.get("rank", "0")), int(tags["dump_index"])
                step = int(tags[step_key]) if step_key else 0
            except ValueError:
                self.notes.unmatched.append(relative(path, root))
                continue
            if tags.get("recompute_status") == "recompute":
                self.notes.note("activation-recompute dumps (recompute_status=recompute) are not imported")
                continue
            if step_key == "forward_pass_id":  # counted from 1 by on_forward_pass_start
                step, one_based = step - 1, True
            if self.wants_rank(r):
                folders.add(path.parent)
                self.files.append(_File(r, step, index, *record_identity(tags), path))
        if not self.files:
            raise SourceFormatError(f"{root}: no SGLang dumper files (name=...___dump_index=....pt)")
        if len(folders) > 1:
            shown = ", ".join(sorted(relative(f, root) for f in folders)[:4])
            raise SourceFormatError(
                f"{root}: holds {len(folders)} SGLang dump folders ({shown}): import one at a time"
            )
        if one_based:
            self.notes.note("old dumper files count forward_pass_id from 1: step = forward_pass_id - 1")
        self.check_strict()
        self.files.sort(key=lambda f: (f.rank, f.step, f.index))
        self.world_size = max(f.rank for f in self.files) + 1
        self.units = len(self.files)

    def records(self, progress: Progress | None = None) -> Iterator[ForeignRecord]:
        calls: Counter[tuple[int, int, str, Role, str]] = Counter()
        for i, f in enumerate(self.files):
            obj = load_pt(f.path)
            value = obj["value"] if isinstance(obj, dict) and set(obj) >= {"value", "meta"} else obj
            items = find_tensors(value)
            if not items:
                self.skip(str(f.path), f"holds no tensor (a {type(value).__name__})")
            key = (f.rank, f.step, f.name, f.role, f.arg)
            call = calls[key]
            calls[key] += 1
            for k, t in items:
                t = settle_dtype(t.detach(), f"{dtype_name(t.dtype)} (torch)", self.dtype, self.notes)
                arg = f.arg if len(items) == 1 else f"{f.arg}.{k}"
                yield ForeignRecord(f.rank, f.step, f.name, call, f.role, arg, tensor=t, source=str(f.path))
            if progress is not None:
                progress(i + 1, self.units)
