"""msProbe (MindStudio Probe, `pip install mindstudio-probe`) dumps.

Layout, as read in Ascend/msprobe and run with mindstudio-probe 26.2.0 on CPU:
* `DUMP/step{N}/rank{R}/dump.json`, or `proc{pid}` instead of `rank{R}` when torch.distributed
  is not initialised (python/msprobe/core/dump/service.py, _create_default_dirs); beside it
  `construct.json` (each node's parent module), `stack.json`, and for task "tensor" the folder
  `dump_tensor_data/` (service.py, _configure_dump_paths).
* dump.json holds `task`, `level`, `framework`, `dump_data_dir` and `data`: one entry per
  module or API call with `input_args` (list), `input_kwargs` (dict), `output` and, for modules,
  `parameters`. A tensor is `{type, dtype, shape, Max, Min, Mean, Norm, requires_grad}` plus
  `data_name` (its file in dump_tensor_data/, e.g. `Functional.linear.0.forward.input.0.pt`) in
  tensor dumps (core/dump/data_dump/json_writer.py, _replace_stat_placeholders). Max / Min are
  torch.max / torch.min (NaN propagates); Mean / Norm are left null for integer, bool and float64
  tensors, all four for float8 / float4 (data_processor/pytorch_processor.py, get_stat_info).
* Module entries are named `Module.{path}.{Class}.forward.{call}` (`Cell.` under MindSpore), the
  path from named_modules() of the model given to start(), which itself is not hooked; with a
  list of models the path starts with its index (pytorch/dump/module_dump/module_processor.py,
  register_module_hook). API entries are `{Prefix}.{api}.{count}.forward`
  (core/dump/hook_manager.py), e.g. `Functional.softmax.3.forward`.

Mapping: `Module.model.layers.2.self_attn.LlamaAttention.forward.0` -> name
`model.layers.2.self_attn`, kind `LlamaAttention`, call 0. API calls become name `Functional.softmax`
(prefix and API), call = msProbe's count, kind the same; where construct.json names the module the
call ran in (level "mix"), the name is `{module}/Functional.softmax`, like accdump's op paths.
Parameters go to step -1 (as `accdump record --params`), taken from each rank's first step.
Backward entries are left out. Statistics-only tensors keep Max, Min, Mean and Norm (absmax from
Max/Min, sum from Mean, no NaN/Inf where Max and Min are finite); those without a Norm (integer,
bool, float8 tensors) are left out, since compare judges stats-only pairs by their norms.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accdump.errors import SourceFormatError
from accdump.importers.paths import safe_child
from accdump.importers.records import ForeignRecord, natural_key
from accdump.importers.source import ImportSource, Progress, SourceOptions
from accdump.importers.tensorfiles import load_tensors
from accdump.store.schema import Role

_MODULE = re.compile(
    r"(?:Module|Cell)\.(?P<path>.+)\.(?P<cls>[^.]+)\.(?P<dir>forward|backward)\.(?P<call>\d+)"
)
_API = re.compile(r"(?P<api>[A-Za-z_]\w*\..+)\.(?P<call>\d+)\.(?P<dir>forward|backward)")
_RANK_DIR = re.compile(r"(rank|proc)(\d*)")
_STEP_DIR = re.compile(r"step(\d+)")
_LEVELS = {"L0": "module", "L1": "op", "mix": "all"}


def find_dump_jsons(root: Path) -> list[Path]:
    """dump.json files of an msProbe dump rooted at `root` (the dump path, a step or a rank folder)."""
    if (root / "dump.json").is_file():
        return [root / "dump.json"]
    for glob in ("step*/*/dump.json", "*/dump.json"):
        found = [p for p in root.glob(glob) if _RANK_DIR.fullmatch(p.parent.name)]
        if found:
            return sorted(found, key=lambda p: natural_key(str(p)))
    return []


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, (dict, list)):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def stats_of(leaf: dict[str, Any]) -> dict[str, float] | None:
    """accdump statistics from msProbe's Max / Min / Mean / Norm; None when too little is known
    (no Norm and no NaN / Inf to report)."""
    mx, mn, mean, norm = (_num(leaf.get(k)) for k in ("Max", "Min", "Mean", "Norm"))
    count = float(math.prod(int(s) for s in leaf.get("shape") or []))
    stats: dict[str, float] = {"count": count}
    if any(v is not None and math.isnan(v) for v in (mx, mn)):
        stats["nan"] = 1.0  # at least one: torch.max / min propagate NaN
        return stats
    if mx is not None and mx == math.inf:
        stats["posinf"] = 1.0
    if mn is not None and mn == -math.inf:
        stats["neginf"] = 1.0
    if "posinf" in stats or "neginf" in stats:
        return stats
    if norm is None or not math.isfinite(norm):
        return None
    stats["l2norm"] = norm
    if mx is not None and mn is not None:
        stats.update(min=mn, max=mx, absmax=max(abs(mn), abs(mx)))
        if mn > 0 or mx < 0:
            stats["zeros"] = 0.0
    if mean is not None and math.isfinite(mean):
        stats.update(mean=mean, sum=mean * count)
    return stats


def _is_tensor(v: Any) -> bool:
    kind = str(v.get("type", "")) if isinstance(v, dict) else ""
    return "shape" in v and "dtype" in v and any(t in kind for t in ("Tensor", "Parameter", "ndarray"))


def _leaves(v: Any, key: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(v, dict) and _is_tensor(v):
        yield key or "0", v
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            yield from _leaves(x, f"{key}.{i}" if key else str(i))
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _leaves(x, f"{key}.{k}" if key else str(k))


def _dtype(name: str) -> str:
    """'torch.bfloat16' / MindSpore 'BFloat16' -> 'bfloat16'."""
    return str(name).removeprefix("torch.").removeprefix("mindspore.").lower()


class MsprobeSource(ImportSource):
    name = "msprobe"

    def __init__(self, root: Path, opts: SourceOptions):
        super().__init__(root, opts)
        jsons = find_dump_jsons(root)
        if not jsons:
            raise SourceFormatError(f"{root}: no msProbe dump.json (expected step*/rank*/dump.json)")
        procs = sorted(
            {
                int(m.group(2))
                for p in jsons
                if (m := _RANK_DIR.fullmatch(p.parent.name)) and m.group(1) == "proc"
            }
        )
        if procs:
            self.notes.note(
                "msProbe wrote proc<pid> folders (torch.distributed not initialised): "
                + ("rank " + str(self.rank or 0) if len(procs) == 1 else "ranks numbered in process id order")
            )
        self.files: list[tuple[int, int, Path]] = []  # (rank, step, dump.json)
        self._head: dict[str, Any] = {}
        for p in jsons:
            kind, num = _RANK_DIR.fullmatch(p.parent.name).groups()  # type: ignore[union-attr]
            if kind == "proc":
                r = (self.rank or 0) if len(procs) == 1 else procs.index(int(num))
            else:
                r = int(num or 0)
            sm = _STEP_DIR.fullmatch(p.parent.parent.name)
            if self.wants_rank(r):
                self.files.append((r, int(sm.group(1)) if sm else 0, p))
        if not self.files:
            raise SourceFormatError(f"{root}: msProbe dump has no rank {self.rank}")
        self.files.sort(key=lambda f: (f[0], f[1]))
        self.world_size = max(f[0] for f in self.files) + 1
        self.units = len(self.files)
        head = self._head = self._load(self.files[0][2])
        self.mode = "stats" if head.get("task") == "statistics" else "tensor"
        self.level = _LEVELS.get(str(head.get("level")), "module")
        self.check_strict()

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise SourceFormatError(f"{path}: unreadable msProbe dump.json: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            raise SourceFormatError(f"{path}: not an msProbe dump.json (no 'data' mapping)")
        return data

    def records(self, progress: Progress | None = None) -> Iterator[ForeignRecord]:
        first_step_seen: set[int] = set()
        for i, (rank, step, path) in enumerate(self.files):
            data, self._head = self._head or self._load(path), {}
            construct = self._construct(path.parent / "construct.json")
            params, calls = self._entries(rank, step, data["data"], construct, path)
            if rank not in first_step_seen:
                first_step_seen.add(rank)
            else:
                params = []
            for spec in params + calls:
                rec = self._record(spec, path.parent)
                if rec is not None:
                    yield rec
            if progress is not None:
                progress(i + 1, self.units)

    def _construct(self, path: Path) -> dict[str, Any]:
        try:
            with open(path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _entries(
        self, rank: int, step: int, data: dict[str, Any], construct: dict[str, Any], where: Path
    ) -> tuple[list[ForeignRecord], list[ForeignRecord]]:
        """Record specs (statistics, tensor file in `source`) of one dump.json: parameters, calls."""
        params: dict[tuple[str, str], ForeignRecord] = {}
        calls: list[ForeignRecord] = []
        backward = 0
        for key, entry in data.items():
            m = _MODULE.fullmatch(key)
            if m:
                name, kind = m.group("path"), m.group("cls")
            else:
                m = _API.fullmatch(key)
                if m is None:
                    self.notes.unmatched.append(f"{where}: entry {key!r}")
                    continue
                name = kind = m.group("api")
                parent = construct.get(key)
                parent = parent[0] if isinstance(parent, list) and parent else parent
                pm = _MODULE.fullmatch(parent) if isinstance(parent, str) else None
                if pm:
                    name = f"{pm.group('path')}/{name}"
            if m.group("dir") == "backward":
                backward += 1
                continue
            if not isinstance(entry, dict):
                continue
            call = int(m.group("call"))
            for part, role in (
                ("input_args", Role.INPUT),
                ("input_kwargs", Role.INPUT),
                ("output", Role.OUTPUT),
            ):
                for arg, leaf in _leaves(entry.get(part), ""):
                    calls.append(self._spec(rank, step, name, call, role, arg, kind, leaf))
            for arg, leaf in _leaves(entry.get("parameters"), ""):
                params.setdefault((name, arg), self._spec(rank, -1, name, 0, Role.PARAMETER, arg, kind, leaf))
        if backward:
            self.notes.note(f"backward entries are not imported ({backward} in {where})")
        return list(params.values()), calls

    @staticmethod
    def _spec(
        rank: int, step: int, name: str, call: int, role: Role, arg: str, kind: str, leaf: dict[str, Any]
    ) -> ForeignRecord:
        rec = ForeignRecord(rank, step, name, call, role, arg, kind=kind, dtype=_dtype(leaf.get("dtype", "")))
        rec.shape = tuple(int(s) for s in leaf.get("shape") or [])
        rec.stats = stats_of(leaf)
        rec.source = str(leaf.get("data_name") or "")
        return rec

    def _record(self, spec: ForeignRecord, rank_dir: Path) -> ForeignRecord | None:
        """`spec` with its tensor loaded from dump_tensor_data/ when dumped, else its statistics."""
        what = f"{rank_dir / 'dump.json'}: {spec.name} {spec.role.name.lower()} {spec.arg}"
        if spec.source:
            path = safe_child(rank_dir / "dump_tensor_data", spec.source, what)
            if path.is_file():
                items = load_tensors(path, self.dtype, self.notes)
                if len(items) != 1:
                    raise SourceFormatError(f"{path}: holds {len(items)} tensors, msProbe saves one per file")
                spec.tensor, spec.stats = items[0][1], None
                spec.source = str(path)
                return spec
            self.notes.note("some tensors named in dump.json have no file: their statistics were imported")
        spec.source = what
        if spec.stats is None:
            self.notes.skipped.append(
                (what, f"statistics only and no Norm ({spec.dtype}): compare could not judge it")
            )
            return None
        return spec
