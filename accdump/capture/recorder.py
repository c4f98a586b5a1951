"""The Recorder: module hooks (and an op-level dispatch mode) that capture what a run computed.

Statistics are computed on each tensor's own device at capture time (one kernel, no sync), into
per-step buffers that are copied to the host asynchronously and written by a background thread
when the step ends. Recording never changes what the model computes.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import socket
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import accdump
from accdump import ops
from accdump.capture.filters import FILTER_KEYS, Filters
from accdump.capture.flatten import iter_tensors
from accdump.capture.rank import rank_and_world
from accdump.capture.step_buffer import Capture, Seen, StepBuffer, StepPayload
from accdump.capture.writer_thread import WriterThread
from accdump.errors import AccdumpError, RecordWriteError
from accdump.store.dtypes import dtype_name
from accdump.store.schema import FORMAT_NAME, FORMAT_VERSION, Role
from accdump.store.writer import SegmentWriter, json_attr

Mode = Literal["stats", "tensor", "hash"]
Level = Literal["module", "op", "all"]
MODES = ("stats", "tensor", "hash")
LEVELS = ("module", "op", "all")

_DTYPE_NAMES = {dt: dtype_name(dt) for dt in ops.STATS_DTYPES}
_ROLE_NAMES = {r: r.name.lower() for r in Role}
_INDEX = [str(i) for i in range(64)]
_DEVICE_NAMES: dict[torch.device, str] = {}


def _device_str(dev: torch.device) -> str:
    s = _DEVICE_NAMES.get(dev)
    if s is None:
        s = _DEVICE_NAMES[dev] = str(dev)
    return s


def _stats_into_function() -> Any:
    """The statistics op the hot path calls: the native op itself when built (no wrapper)."""
    if not ops.native_available("cpu"):
        return ops.tensor_stats_into
    native = torch.ops.accdump.tensor_stats_into.default
    if ops.native_available("cuda") or not torch.cuda.is_available():
        return native

    def by_device(t: torch.Tensor, out: torch.Tensor, row: int) -> None:
        (native if t.device.type == "cpu" else ops.tensor_stats_into)(t, out, row)

    return by_device


_active: Recorder | None = None
_active_lock = threading.Lock()


def active_recorder() -> Recorder | None:
    """The recorder currently started in this process, if any."""
    return _active


class _Frame:
    """A module call in progress: its name, its call index and how many times each op ran inside it."""

    __slots__ = ("call", "kwargs_pending", "name", "op_counts")

    def __init__(self, name: str, call: int):
        self.name = name
        self.call = call
        self.op_counts: dict[str, int] = {}
        self.kwargs_pending = False  # entered by the global hook, which sees no keyword inputs


class Recorder:
    """Records a run into a dump directory; use as a context manager or start()/step()/stop()."""

    def __init__(
        self,
        model: nn.Module | None,
        path: str | os.PathLike[str],
        *,
        mode: Mode = "stats",
        level: Level = "module",
        filters: Filters | None = None,
        params: bool = False,
        auto_step: bool = True,
        overwrite: bool = False,
        strict: bool = False,
        metadata: dict[str, Any] | None = None,
    ):
        if mode not in MODES:
            raise AccdumpError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
        if level not in LEVELS:
            raise AccdumpError(f"unknown level {level!r}: choose from {', '.join(LEVELS)}")
        self.model = model
        self.path = Path(path)
        self.mode, self.level = mode, level
        self.filters = filters or Filters()
        self.params, self.auto_step, self.overwrite, self.strict = params, auto_step, overwrite, strict
        self.metadata = metadata or {}
        self.rank, self.world_size = rank_and_world()
        self.enabled = False
        self.skipped: dict[str, int] = {}
        self._step = 0
        self._order = 0
        self._buf: StepBuffer | None = None
        self._stack: list[_Frame] = []
        self._names: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        self._handles: list[Any] = []
        self._stats_into = _stats_into_function()
        self._writer: WriterThread | None = None
        self._op_mode: Any = None
        self._in_capture = False
        self._error_reported = False
        self._roots_seen = 0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Recorder:
        global _active
        if not self.filters.wants_rank(self.rank):
            return self  # this rank is filtered out: record nothing
        with _active_lock:
            if _active is not None:
                raise AccdumpError(
                    "another accdump recorder is already active in this process; stop it first"
                )
            writer = SegmentWriter(self.path, self.rank, self._run_attrs(), overwrite=self.overwrite)
            self._writer = WriterThread(writer)
            _active = self
        self.enabled = True
        if self.model is not None:
            self._install(self.model, "")
            if self.params:
                self._record_parameters(self.model)
        else:
            self._handles.append(nn.modules.module.register_module_forward_pre_hook(self._global_pre))
        if self.level in ("op", "all"):
            from accdump.capture.opmode import OpCaptureMode

            self._op_mode = OpCaptureMode(self)
            self._op_mode.__enter__()
        return self

    def stop(self) -> None:
        """Flushes the open step, waits for the writer and removes every hook."""
        global _active
        if self._writer is None:
            return
        if self._op_mode is not None:
            self._op_mode.__exit__(None, None, None)
            self._op_mode = None
        for h in self._handles:
            h.remove()
        self._handles.clear()
        try:
            if self.enabled:
                self._end_step()
        finally:
            self._writer.close()
            with _active_lock:
                if _active is self:
                    _active = None
            self.enabled = False
        self._check_writer()
        if self.skipped:
            listed = ", ".join(f"{k} ({v})" for k, v in sorted(self.skipped.items()))
            print(f"accdump: skipped tensors it cannot record: {listed}", file=sys.stderr)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def step(self) -> None:
        """Ends the current step (writing it) and starts the next one."""
        if self.enabled:
            self._end_step()

    @property
    def steps_written(self) -> list[int]:
        return list(self._writer.steps_written) if self._writer else []

    @property
    def error(self) -> AccdumpError | None:
        return self._writer.error if self._writer else None

    # --- capture ----------------------------------------------------------------------------

    def probe(self, name: str, value: Any) -> None:
        """Records every tensor in `value` under `name` with role 'probe'."""
        if not self.enabled or "probe" not in self.filters.roles or not self.filters.wants_name(name):
            return
        buf = self._open_step()
        if buf is None:
            return
        call = self._next_call(buf, name)
        for arg, t in iter_tensors(value):
            self._capture(buf, t, name, call, Role.PROBE, arg, "probe")

    def _open_step(self) -> StepBuffer | None:
        if self._buf is None:
            if not self.filters.wants_step(self._step):
                return None
            self._buf = StepBuffer(self._step)
        return self._buf

    @staticmethod
    def _next_call(buf: StepBuffer, name: str) -> int:
        call = buf.calls.get(name, 0)
        buf.calls[name] = call + 1
        return call

    def _capture(
        self, buf: StepBuffer, t: torch.Tensor, name: str, call: int, role: Role, arg: str, kind: str
    ) -> None:
        dtype = t.dtype
        dtype_str = _DTYPE_NAMES.get(dtype)
        dev = t.device
        if dtype_str is None or t.layout != torch.strided or dev.type not in ("cpu", "cuda"):
            why = f"{dev.type} {dtype} {t.layout}".replace("torch.", "")
            self.skipped[why] = self.skipped.get(why, 0) + 1
            return
        self._in_capture = True
        try:
            wants_tensor = self.mode == "tensor" or role == Role.TOKENS
            seen = buf.seen.get(id(t))
            if seen is not None and (seen.ref() is not t or seen.version != t._version):
                seen = None
            if seen is None:
                chunk, row, index = buf.stats_rows(dev).take()
                self._stats_into(t, chunk, row)
                seen = buf.seen[id(t)] = Seen(weakref.ref(t), t._version, index)
                if self.mode == "hash":
                    hchunk, hrow, seen.hash_index = buf.hash_rows(dev).take()
                    ops.tensor_fingerprint_into(t, hchunk, hrow)
            # else: the same tensor, unchanged since captured (a layer's output is the next layer's
            # input): its statistics, host copy and fingerprint are reused
            if wants_tensor and seen.host is None:
                seen.host = self._host_copy(t)
            buf.captures.append(
                Capture(
                    self._order,
                    name,
                    call,
                    int(role),
                    arg,
                    kind,
                    dtype_str,
                    tuple(t.shape),
                    t.stride(),
                    int(t.storage_offset()),
                    t.is_contiguous(),
                    _device_str(dev),
                    seen.stats_index,
                    seen.host if wants_tensor else None,
                    seen.hash_index,
                )
            )
            self._order += 1
        finally:
            self._in_capture = False

    def _host_copy(self, t: torch.Tensor) -> torch.Tensor | None:
        """A host copy of `t` made without blocking (pinned for CUDA), unless it is over the size limit."""
        max_bytes = self.filters.max_tensor_bytes
        if max_bytes is not None and t.numel() * t.element_size() > max_bytes:
            return None
        with torch.no_grad():
            if t.device.type == "cpu":
                return t.clone(memory_format=torch.contiguous_format)
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            return host

    def _capture_all(
        self, buf: StepBuffer, value: Any, name: str, call: int, role: Role, kind: str, prefix: str = ""
    ) -> None:
        if _ROLE_NAMES[role] not in self.filters.roles:
            return
        # fast paths for the common shapes of arguments: a tensor, a tuple of tensors, no kwargs
        if isinstance(value, torch.Tensor):
            self._capture(buf, value, name, call, role, prefix or "0", kind)
            return
        if isinstance(value, (tuple, list, dict)) and not value:
            return
        if type(value) is tuple and not prefix and all(type(v) is torch.Tensor for v in value):
            for i, t in enumerate(value):
                self._capture(buf, t, name, call, role, _INDEX[i] if i < len(_INDEX) else str(i), kind)
            return
        for arg, t in iter_tensors(value, prefix):
            self._capture(buf, t, name, call, role, arg, kind)

    # --- steps ------------------------------------------------------------------------------

    def _end_step(self) -> None:
        buf, self._buf = self._buf, None
        self._step += 1
        self._order = 0
        if buf is not None:
            self._submit(buf)

    def _submit(self, buf: StepBuffer) -> None:
        if not buf.captures or self._writer is None:
            return
        events = []
        stats_host = {str(d): rows.to_host() for d, rows in buf.stats.items()}
        hashes_host = {str(d): rows.to_host() for d, rows in buf.hashes.items()}
        for d in {*buf.stats, *buf.hashes}:
            if d.type == "cuda":
                ev = torch.cuda.Event()
                ev.record(torch.cuda.current_stream(d))
                events.append(ev)
        self._writer.submit(StepPayload(buf.step, buf.captures, stats_host, hashes_host, events))
        self._check_writer()

    def _check_writer(self) -> None:
        err = self.error
        if err is None:
            return
        self.enabled = False
        if not self._error_reported:
            self._error_reported = True
            done = self.steps_written
            kept = f"steps {done[0]}..{done[-1]} are complete" if done else "no step was completed"
            print(f"accdump: recording stopped: {err}. {kept} in {self.path}", file=sys.stderr)
        if self.strict:
            raise err if isinstance(err, RecordWriteError) else RecordWriteError(str(err))

    # --- module hooks -----------------------------------------------------------------------

    def _install(self, root: nn.Module, prefix: str) -> None:
        for sub_name, mod in root.named_modules():
            if mod in self._names:
                continue
            name = f"{prefix}.{sub_name}" if prefix and sub_name else (sub_name or prefix)
            self._names[mod] = name
            self._handles.append(
                mod.register_forward_pre_hook(functools.partial(self._pre_hook, name), with_kwargs=True)
            )
            self._handles.append(
                mod.register_forward_hook(
                    functools.partial(self._post_hook, name), with_kwargs=True, always_call=True
                )
            )

    def _global_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        # Discovers modules when recording without a model: installs their own hooks, which
        # take over from the next call on; this first call is entered here (positional inputs only).
        if not self.enabled or module in self._names:
            return
        if self._stack:
            prefix = f"{self._stack[-1].name}.{type(module).__name__}"
        else:
            prefix = "" if self._roots_seen == 0 else f"<{type(module).__name__}#{self._roots_seen}>"
            self._roots_seen += 1
        self._install(module, prefix)
        if self.params:
            self._record_parameters(module)
        self._pre_hook(self._names[module], module, args, {})
        if self._stack and self._stack[-1].name == self._names[module]:
            self._stack[-1].kwargs_pending = True

    def _pre_hook(self, name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.enabled or self._in_capture:
            return
        buf = self._open_step()
        self._stack.append(_Frame(name, buf.calls.get(name, 0) if buf is not None else 0))
        if buf is None:
            return
        is_root = len(self._stack) == 1
        if is_root:
            self._capture_tokens(buf, name, args, kwargs)
        if self.level == "op" or not self.filters.wants_name(name):
            return
        kind = type(module).__name__
        if not self.filters.wants_module_type(kind):
            return
        call = buf.calls.get(name, 0)  # the call index is taken by the post-hook
        self._capture_all(buf, args, name, call, Role.INPUT, kind)
        self._capture_all(buf, kwargs, name, call, Role.INPUT, kind)

    def _post_hook(
        self, name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not self.enabled or self._in_capture or not self._stack or self._stack[-1].name != name:
            return
        frame = self._stack.pop()
        buf = self._buf
        if buf is not None:
            if not self._stack and not buf.has_tokens:
                self._capture_tokens(buf, name, (), kwargs)  # a root first seen by the global hook
            kind = type(module).__name__
            wanted = (
                self.level != "op" and self.filters.wants_name(name) and self.filters.wants_module_type(kind)
            )
            call = self._next_call(buf, name)
            if wanted:
                if (
                    frame.kwargs_pending
                ):  # keyword inputs only visible now (never mutated by the call in practice)
                    self._capture_all(buf, kwargs, name, call, Role.INPUT, kind)
                self._capture_all(buf, output, name, call, Role.OUTPUT, kind)
        if not self._stack and self.auto_step:
            self._end_step()

    def _capture_tokens(
        self, buf: StepBuffer, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if "tokens" not in self.filters.roles:
            return
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor):
            ids = args[0]
        if isinstance(ids, torch.Tensor) and not ids.is_floating_point() and ids.dtype != torch.bool:
            self._capture(buf, ids, name, 0, Role.TOKENS, "input_ids", "tokens")
            buf.has_tokens = True

    def _record_parameters(self, root: nn.Module) -> None:
        buf = StepBuffer(-1)
        for mod_name, mod in root.named_modules():
            name = self._names.get(mod, mod_name)
            if not self.filters.wants_name(name):
                continue
            for pname, p in mod.named_parameters(recurse=False):
                self._capture(buf, p, name, 0, Role.PARAMETER, pname, type(mod).__name__)
        self._submit(buf)

    # --- op level ---------------------------------------------------------------------------

    def op_name(self, op: str) -> tuple[str, int]:
        """('module.path/op.index', the module's call index) for the op now running; ops are
        counted per enclosing module call."""
        frame = self._stack[-1] if self._stack else None
        counts = frame.op_counts if frame else self._root_op_counts()
        idx = counts.get(op, 0)
        counts[op] = idx + 1
        return f"{frame.name if frame else ''}/{op}.{idx}", frame.call if frame else 0

    def _root_op_counts(self) -> dict[str, int]:
        buf = self._open_step()
        return buf.root_op_counts if buf is not None else {}

    # --- metadata ---------------------------------------------------------------------------

    def _run_attrs(self) -> dict[str, Any]:
        device_name = "cpu"
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            device_name = torch.cuda.get_device_name()
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "accdump_version": accdump.__version__,
            "torch_version": str(torch.__version__),
            "cuda_version": torch.version.cuda or "",
            "device_name": device_name,
            "command_line": json.dumps(sys.argv),
            "world_size": self.world_size,
            "rank": self.rank,
            "mode": self.mode,
            "level": self.level,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "host": socket.gethostname(),
            "user_metadata": json_attr(self.metadata),
            "native": ops.backend_reason(),
        }


def record(model: nn.Module | None, path: str | os.PathLike[str], **kwargs: Any) -> Recorder:
    """`with accdump.record(model, "dumps/golden", mode="stats") as rec: model(x)` — see Recorder.

    Filter keywords (include, exclude, module_types, op_names, steps, ranks, roles,
    max_tensor_bytes) may be given directly instead of a `filters=Filters(...)`."""
    filters = kwargs.pop("filters", None)
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in FILTER_KEYS}
    if given:
        filters = Filters.from_options(**given)
    return Recorder(model, path, filters=filters, **kwargs)


def probe(name: str, value: Any) -> None:
    """Records `value` (a tensor or nested tensors) under `name` if a recorder is active; else nothing."""
    rec = _active
    if rec is not None:
        rec.probe(name, value)
