"""The Recorder: module hooks (and an op-level dispatch mode) that capture what a run computed.

Statistics are computed on each tensor's own device at capture time (one kernel, no sync), into
per-step buffers that are copied to the host asynchronously and written by a background thread
when the step ends. Recording never changes what the model computes.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import accdump
from accdump import ops
from accdump.capture.cuda_graphs import (
    DEFAULT_TENSOR_BUDGET,
    GraphHooks,
    GraphProbes,
    end_capture,
    finish_capture,
    merge_replay,
    replay_payload,
    start_capture,
)
from accdump.capture.filters import FILTER_KEYS, Filters
from accdump.capture.flatten import find_tensors
from accdump.capture.module_calls import Enter, Leave, can_wrap, wrap_forward
from accdump.capture.rank import rank_and_world
from accdump.capture.step_buffer import (
    NATIVE_DTYPES,
    Capture,
    NativeStep,
    Seen,
    StepBuffer,
    StepPayload,
    host_chunks,
)
from accdump.capture.writer_thread import WriterThread
from accdump.errors import AccdumpError, RecordWriteError
from accdump.store.dtypes import dtype_name
from accdump.store.schema import FORMAT_NAME, FORMAT_VERSION, Role
from accdump.store.writer import SegmentWriter, json_attr
from accdump.store.writer_process import LocalSegments, SegmentProcess

Mode = Literal["stats", "tensor", "hash"]
Level = Literal["module", "op", "all"]
MODES = ("stats", "tensor", "hash")
LEVELS = ("module", "op", "all")

_DTYPE_NAMES = {dt: dtype_name(dt) for dt in ops.STATS_DTYPES}
_INDEX = [str(i) for i in range(64)]
_new_capture = tuple.__new__  # builds a Capture from a tuple, skipping its Python __new__
_INPUT, _OUTPUT, _TOKENS, _PROBE = (
    Role.INPUT,
    Role.OUTPUT,
    Role.TOKENS,
    Role.PROBE,
)  # enum attribute lookups are slow
_DEVICE_NAMES: dict[torch.device, str] = {}


def _device_name(dev: torch.device) -> str:
    """'cpu' / 'cuda:0' for a device whose tensors can be recorded, else ''; cached per device
    (`device.type` and `str(device)` each build a new string, a cost on the hot path)."""
    s = _DEVICE_NAMES.get(dev)
    if s is None:
        s = _DEVICE_NAMES[dev] = str(dev) if dev.type in ("cpu", "cuda") else ""
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


def _native_capture(mode: str, level: str) -> Any:
    """An accdump._C.StepCapture for the hot path when it applies (module level, stats mode,
    extension built), else None. ACCDUMP_CAPTURE=python keeps every capture in Python;
    ACCDUMP_DEFER (cuda, all or none) picks the devices whose statistics are taken in batches."""
    if mode != "stats" or level != "module" or os.environ.get("ACCDUMP_CAPTURE", "native") == "python":
        return None
    if not ops.native_available("cpu"):
        return None
    from accdump import _C

    defer = os.environ.get("ACCDUMP_DEFER", "cuda")
    if defer not in ("cuda", "all", "none"):
        raise AccdumpError(f"ACCDUMP_DEFER must be cuda, all or none, not {defer!r}")
    return _C.StepCapture(NATIVE_DTYPES, defer=defer)


def _native_call_types() -> tuple[Any, Any] | None:
    """accdump._C's (CallSite, CallFrame): module calls entered and left in C (any mode and
    level), when the extension is built and ACCDUMP_CAPTURE is not "python"."""
    if os.environ.get("ACCDUMP_CAPTURE", "native") == "python" or not ops.native_available("cpu"):
        return None
    from accdump import _C

    return _C.CallSite, _C.CallFrame


def _segment_sink(writer: SegmentWriter) -> SegmentProcess | LocalSegments:
    """Where segments are written: a child process (HDF5 work then holds no lock of this
    interpreter's), unless ACCDUMP_WRITER=thread."""
    if os.environ.get("ACCDUMP_WRITER", "process") == "thread":
        return LocalSegments(writer)
    return SegmentProcess(writer)


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
        self.op_counts: dict[str, int] | None = None  # made by the first op (level op or all)
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
        graph_tensor_bytes: int = DEFAULT_TENSOR_BUDGET,
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
        self.graph_tensor_bytes = graph_tensor_bytes  # device copies one CUDA graph may hold (tensor mode)
        self.rank, self.world_size = rank_and_world()
        self.enabled = False
        self.skipped: dict[str, int] = {}
        self._step = 0
        self._buf: StepBuffer | None = None
        self._stack: list[_Frame] = []
        self._names: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        self._handles: list[Any] = []
        self._stats_into = _stats_into_function()
        self._tensor_mode, self._hash_mode = mode == "tensor", mode == "hash"
        self._roles = frozenset(r for r in Role if r.name.lower() in self.filters.roles)
        self._want_inputs, self._want_outputs = _INPUT in self._roles, _OUTPUT in self._roles
        self._writer: WriterThread | None = None
        self._op_mode: Any = None
        self._collectives: Any = None
        self._in_capture = False
        self._graph: GraphProbes | None = None  # the CUDA graph being captured, if any
        self._graph_hooks: GraphHooks | None = None
        self._warned_uncaptured_graph = False
        self._error_reported = False
        self._roots_seen = 0
        self._native: Any = None  # accdump._C.StepCapture, when the native hot path applies
        self._call_site: Any = None  # accdump._C.CallSite, when module calls are entered in C
        self._frame: Any = _Frame  # the type of the stack's frames (accdump._C.CallFrame with CallSite)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Recorder:
        global _active
        if not self.filters.wants_rank(self.rank):
            return self  # this rank is filtered out: record nothing
        native = _native_capture(self.mode, self.level)  # may raise: before anything starts
        call_types = _native_call_types()
        with _active_lock:
            if _active is not None:
                raise AccdumpError(
                    "another accdump recorder is already active in this process; stop it first"
                )
            writer = SegmentWriter(self.path, self.rank, self._run_attrs(), overwrite=self.overwrite)
            # strict: at most two steps queued, so that a failed write stops the program promptly
            self._writer = WriterThread(_segment_sink(writer), max_pending_steps=2 if self.strict else 32)
            _active = self
        self._native = native
        self._call_site, self._frame = call_types or (None, _Frame)
        self.enabled = True
        if self.model is not None:
            if type(self.model).__name__ == "OptimizedModule":
                _warn_compiled(self.model)
            self._install(self.model, "")
            if self.params:
                self._record_parameters(self.model)
        else:
            self._handles.append(nn.modules.module.register_module_forward_pre_hook(self._global_pre))
        if self.level in ("op", "all"):
            from accdump.capture.opmode import OpCaptureMode

            self._op_mode = OpCaptureMode(self)
            self._op_mode.__enter__()
        if self.level in ("module", "all"):
            from accdump.capture.collectives import CollectiveHooks

            self._collectives = CollectiveHooks(self)
            self._collectives.install()
        if torch.cuda.is_available():
            self._graph_hooks = GraphHooks(self)
            self._graph_hooks.install()
        return self

    def stop(self) -> None:
        """Flushes the open step, waits for the writer and removes every hook."""
        global _active
        if self._writer is None:
            return
        if self._op_mode is not None:
            self._op_mode.__exit__(None, None, None)
            self._op_mode = None
        if self._collectives is not None:
            self._collectives.remove()
            self._collectives = None
        if self._graph_hooks is not None:
            self._graph_hooks.remove()
            self._graph_hooks = None
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

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Records nothing inside the block (warm-up runs before a CUDA graph capture, say)."""
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was and self._writer is not None

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
        for arg, t in find_tensors(value):
            self._capture(buf, t, name, call, Role.PROBE, arg, "probe")

    def probe_one(self, name: str, arg: str, first: bool, t: torch.Tensor) -> None:
        """Records one tensor of probe `name` (the compiled path: one op call per tensor; the
        first tensor of a probe call opens its call index, the others share it)."""
        if not self.enabled or _PROBE not in self._roles or not self.filters.wants_name(name):
            return
        buf = self._open_step()
        if buf is None:
            return
        call = self._next_call(buf, name) if first or name not in buf.calls else buf.calls[name] - 1
        self._capture(buf, t, name, call, _PROBE, arg, "probe")

    def _open_step(self) -> StepBuffer | None:
        if self._graph is not None:
            return self._graph.buf
        if self._buf is None:
            if not self.filters.wants_step(self._step):
                return None
            self._buf = StepBuffer(self._step, native=self._native)
        return self._buf

    @staticmethod
    def _next_call(buf: StepBuffer, name: str) -> int:
        call = buf.calls.get(name, 0)
        buf.calls[name] = call + 1
        return call

    def _capture(
        self, buf: StepBuffer, t: torch.Tensor, name: str, call: int, role: Role, arg: str, kind: str
    ) -> None:
        native = buf.native
        if native is not None:
            order = native.capture_one(t, name, call, role, arg, kind)
            if order >= 0:
                if role is _TOKENS:  # kept whole in every mode
                    host = self._host_copy(t)
                    if host is not None:
                        buf.native_tensors[order] = host
                return
        try:
            version = t._version
        except RuntimeError:  # an inference tensor has no version counter: never reuse its numbers
            version = -1
        seen = buf.seen.get(id(t))
        if seen is None or seen.version != version or version < 0 or seen.ref() is not t:
            seen = self._measure(buf, t, version)
            if seen is None:
                return
        # else: the same tensor, unchanged since captured (a layer's output is the next layer's
        # input): its statistics, host copy and fingerprint are reused
        host = None
        if self._tensor_mode or role is _TOKENS:
            if seen.host is None:
                seen.host = self._host_copy(t)
            host = seen.host
        buf.captures.append(
            _new_capture(
                Capture,
                (
                    len(buf.captures) if native is None else native.take_order(),
                    name,
                    call,
                    role,
                    arg,
                    kind,
                    seen.dtype,
                    t.shape,
                    t.stride(),
                    t.storage_offset(),
                    t.is_contiguous(),
                    seen.device,
                    seen.stats_index,
                    host,
                    seen.hash_index,
                ),
            )
        )

    def _measure(self, buf: StepBuffer, t: torch.Tensor, version: int) -> Seen | None:
        """Launches the statistics (and fingerprint) of `t` into the step's rows on its device;
        None, with the tensor counted in `skipped`, if it cannot be recorded."""
        dev = t.device
        device = _device_name(dev)
        dtype = _DTYPE_NAMES.get(t.dtype)
        if not device or dtype is None or t.layout is not torch.strided:
            why = f"{dev.type} {t.dtype} {t.layout}".replace("torch.", "")
            self.skipped[why] = self.skipped.get(why, 0) + 1
            return None
        graph = self._graph
        if graph is not None and dev.type != "cuda":
            why = f"{dev.type} tensor during CUDA graph capture (not part of the graph)"
            self.skipped[why] = self.skipped.get(why, 0) + 1
            return None
        self._in_capture = True  # a row chunk's allocation is no op of the model's
        try:
            chunk, row, index = buf.stats_rows(dev).take()
            if graph is None:
                self._stats_into(t, chunk, row)
            elif dev == graph.device and graph.pending is not None:
                graph.pending.add(t, chunk, row)  # measured in a batch, before anything overwrites it
            else:
                ops.tensor_stats_into(t, chunk, row)
            seen = buf.seen[id(t)] = Seen(weakref.ref(t), version, dtype, device, index)
            if self._hash_mode:
                hchunk, hrow, seen.hash_index = buf.hash_rows(dev).take()
                if graph is not None and dev == graph.device and graph.pending is not None:
                    graph.pending.add_fingerprint(t, hchunk, hrow)
                else:
                    ops.tensor_fingerprint_into(t, hchunk, hrow)
        finally:
            self._in_capture = False
        return seen

    def _host_copy(self, t: torch.Tensor) -> torch.Tensor | None:
        """A host copy of `t` made without blocking (pinned for CUDA), unless it is over the size limit."""
        max_bytes = self.filters.max_tensor_bytes
        if max_bytes is not None and t.numel() * t.element_size() > max_bytes:
            return None
        if self._graph is not None:
            return self._graph_copy(t)
        self._in_capture = True
        try:
            with torch.no_grad():
                if t.device.type == "cpu":
                    return t.clone(memory_format=torch.contiguous_format)
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                return host
        finally:
            self._in_capture = False

    def _graph_copy(self, t: torch.Tensor) -> torch.Tensor | None:
        """A device buffer that the graph being captured copies `t` into on every replay, within
        the graph's tensor budget."""
        graph = self._graph
        assert graph is not None
        nbytes = t.numel() * t.element_size()
        if graph.tensor_bytes + nbytes > self.graph_tensor_bytes:
            graph.tensors_skipped += 1
            return None
        self._in_capture = True
        try:
            with torch.no_grad():
                copy = torch.empty(t.shape, dtype=t.dtype, device=t.device)
                copy.copy_(t)
        finally:
            self._in_capture = False
        graph.tensor_bytes += nbytes
        return copy

    def _capture_all(self, buf: StepBuffer, value: Any, name: str, call: int, role: Role, kind: str) -> None:
        """Captures every tensor in `value` (a tensor, or nested args / kwargs / outputs)."""
        if role not in self._roles:
            return
        native = buf.native
        if native is None or native.capture(value, name, call, role, kind) < 0:
            self._capture_python(buf, value, name, call, role, kind)

    def _capture_python(
        self, buf: StepBuffer, value: Any, name: str, call: int, role: Role, kind: str
    ) -> None:
        """_capture_all's Python walk: for what the native capture left (or all, without it)."""
        if isinstance(value, torch.Tensor):
            self._capture(buf, value, name, call, role, "0", kind)
            return
        if type(value) is tuple:  # positional arguments: inline, keyed as find_tensors keys them
            for i, v in enumerate(value):
                key = _INDEX[i] if i < len(_INDEX) else str(i)
                if isinstance(v, torch.Tensor):
                    self._capture(buf, v, name, call, role, key, kind)
                elif v is not None:
                    for arg, t in find_tensors(v, key, 1):
                        self._capture(buf, t, name, call, role, arg, kind)
            return
        for arg, t in find_tensors(value):
            self._capture(buf, t, name, call, role, arg, kind)

    # --- steps ------------------------------------------------------------------------------

    def _end_step(self) -> None:
        if self._graph is not None:
            return  # a capture computes nothing: its replays are the steps
        buf, self._buf = self._buf, None
        self._step += 1
        if buf is not None:
            self._submit(buf)

    def _submit(self, buf: StepBuffer) -> None:
        finished = buf.native.finish() if buf.native is not None else None
        if buf.native is not None:
            _warn_late(buf.step, buf.native.take_late())
        if (not buf.captures and finished is None) or self._writer is None:
            return
        events = []
        stats_host = {str(d): rows.to_host() for d, rows in buf.stats.items()}
        hashes_host = {str(d): rows.to_host() for d, rows in buf.hashes.items()}
        devices = {*buf.stats, *buf.hashes}
        native = None
        if finished is not None:
            ints, ndims, shapes, strides, strings, device_names, chunks = finished
            rows = [host_chunks(c) for c in chunks]
            native = NativeStep(ints, ndims, shapes, strides, strings, device_names, rows, buf.native_tensors)
            devices.update(torch.device(d) for d in device_names)
        for d in devices:
            if d.type == "cuda":
                ev = torch.cuda.Event()
                ev.record(torch.cuda.current_stream(d))
                events.append(ev)
        payload = StepPayload(buf.step, buf.captures, stats_host, hashes_host, events, native=native)
        self._writer.submit(payload)
        self._check_writer()

    # --- CUDA graphs --------------------------------------------------------------------------

    def _graph_capture_begin(self, graph: Any) -> None:
        if self._graph is not None:
            return  # a capture inside a capture: the outer one collects the probes
        if self._writer is not None:
            self._writer.drain()  # no CUDA call from the writer thread while the capture runs
        if self._buf is not None and self._buf.native is not None:
            self._buf.native.flush()  # statistics waiting for a launch are launched outside it
        probes = start_capture(self, graph)
        probes.saved_buf, self._buf = self._buf, probes.buf
        self._graph = probes

    def _graph_capture_end(self, graph: Any, failed: bool = False) -> None:
        probes = self._graph
        if probes is None or id(getattr(graph, "_accdump_probes", None)) != id(probes):
            return
        self._graph = None
        self._buf = probes.saved_buf
        probes.saved_buf = None
        if failed or probes.failed:
            if failed:
                end_capture(probes)  # stops watching ops (nothing was held)
            graph._accdump_probes = None  # its replays are not recorded
            why = probes.failed or "the capture did not start"
            print(
                f"accdump: CUDA graph capture not recorded ({why}); its replays are not recorded",
                file=sys.stderr,
            )
            return
        finish_capture(probes)

    def _graph_replayed(self, probes: GraphProbes) -> None:
        """One replay of a captured graph: its rows and copies join the open step, which ends
        here unless the user marks steps."""
        probes.replays += 1
        if self._buf is None and self.auto_step and probes.template is not None:
            # the usual case, a replay between steps: its rows go to the writer as they are
            if self.filters.wants_step(self._step) and probes.buf.captures and self._writer is not None:
                self._in_capture = True
                try:
                    payload = replay_payload(self._step, probes)
                finally:
                    self._in_capture = False
                self._writer.submit(payload)
                self._check_writer()
            self._step += 1
            return
        buf = self._open_step()
        if buf is not None:
            self._in_capture = True
            try:
                merge_replay(buf, probes)
            finally:
                self._in_capture = False
        if self.auto_step:
            self._end_step()

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

    def _install(self, root: nn.Module, prefix: str, wrap: bool = True) -> None:
        """Names every module under `root` and intercepts its calls: by wrapping its forward
        (module_calls: no slow path in nn.Module.__call__) or with forward hooks: with `wrap`
        False, for `root` itself (torch.compile of the root still enters and leaves it, so steps
        end), where can_wrap() says no, and everywhere when global forward hooks exist or under
        nn.DataParallel (its replicas copy each module's attributes, a wrapper included)."""
        modules = list(root.named_modules())
        wrap = wrap and not any(isinstance(m, nn.DataParallel) for _, m in modules)
        hooked = nn.modules.module  # global hooks: every call takes the slow path anyway
        wrap = wrap and not (hooked._global_forward_hooks or hooked._global_forward_pre_hooks)
        for sub_name, mod in modules:
            if mod in self._names:
                continue
            name = f"{prefix}.{sub_name}" if prefix and sub_name else (sub_name or prefix)
            self._names[mod] = name
            # what a call of this module needs is decided once, here, not per call
            kind = type(mod).__name__
            wanted = self._wants_module(name, kind)
            if wrap and mod is not root and can_wrap(mod):  # the wrapper steps aside under torch.compile
                self._handles.append(wrap_forward(mod, *self._call_functions(name, kind, wanted)))
                continue
            pre = functools.partial(self._pre_hook, name, kind, wanted)
            post = functools.partial(self._post_hook, name, kind, wanted)
            self._handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(mod.register_forward_hook(post, with_kwargs=True, always_call=True))

    def _call_functions(self, name: str, kind: str, wanted: bool) -> tuple[Enter, Leave]:
        """enter / leave for a wrapped module's calls: the common call (a module inside the
        root, in an open step) is handled inline; the rest goes to _enter / _leave. Everything
        they read that is fixed for the recording is bound here, once per module."""
        rec, stack, new_frame = self, self._stack, self._frame
        inputs, outputs = wanted and self._want_inputs, wanted and self._want_outputs
        slow_enter = functools.partial(self._enter, name, kind, wanted)
        slow_leave = functools.partial(self._leave, name, kind, wanted)
        if self._call_site is not None:  # the same, in C
            site = self._call_site(
                self, stack, name, kind, inputs, outputs, _INPUT, _OUTPUT, slow_enter, slow_leave
            )
            return site.enter, site.leave

        def enter(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            buf = rec._buf
            if buf is None or not stack or not rec.enabled:
                return slow_enter(module, args, kwargs)
            call = buf.calls.get(name, 0)  # the call index is taken when leaving
            stack.append(new_frame(name, call))
            if inputs:
                native = buf.native
                if args and (native is None or native.capture(args, name, call, _INPUT, kind) < 0):
                    rec._capture_python(buf, args, name, call, _INPUT, kind)
                if kwargs and (native is None or native.capture(kwargs, name, call, _INPUT, kind) < 0):
                    rec._capture_python(buf, kwargs, name, call, _INPUT, kind)
            return None

        def leave(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            buf = rec._buf
            if buf is None or len(stack) < 2 or not rec.enabled:
                return slow_leave(module, args, kwargs, output)
            frame = stack[-1]
            if frame.name != name or frame.kwargs_pending:
                return slow_leave(module, args, kwargs, output)
            stack.pop()
            calls = buf.calls
            call = calls.get(name, 0)
            calls[name] = call + 1
            if outputs:
                native = buf.native
                if native is None or native.capture(output, name, call, _OUTPUT, kind) < 0:
                    rec._capture_python(buf, output, name, call, _OUTPUT, kind)
            return None

        return enter, leave

    def _wants_module(self, name: str, kind: str) -> bool:
        """Whether the inputs and outputs of this module's calls are recorded."""
        return self.level != "op" and self.filters.wants_name(name) and self.filters.wants_module_type(kind)

    def _global_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        # Discovers modules when recording without a model: installs their own hooks, which
        # take over from the next call on; this first call is entered here (positional inputs only).
        if _compiling():
            return
        if type(module).__name__ == "OptimizedModule":
            _warn_compiled(module)
        if not self.enabled or module in self._names:
            return
        if self._stack:
            prefix = f"{self._stack[-1].name}.{type(module).__name__}"
        else:
            prefix = "" if self._roots_seen == 0 else f"<{type(module).__name__}#{self._roots_seen}>"
            self._roots_seen += 1
        # hooks, not wrapping: this call already has its forward, and runs the new post-hook
        self._install(module, prefix, wrap=False)
        if self.params:
            self._record_parameters(module)
        name, kind = self._names[module], type(module).__name__
        self._enter(name, kind, self._wants_module(name, kind), module, args, {})
        if self._stack and self._stack[-1].name == name:
            self._stack[-1].kwargs_pending = True

    # forward hooks (TorchScript modules, modules met by the global hook): _enter / _leave, which
    # are to stay out of torch.compile's traces
    def _pre_hook(self, *call: Any) -> None:
        if not _compiling():
            self._enter(*call)

    def _post_hook(self, *call: Any) -> None:
        if not _compiling():
            self._leave(*call)

    def _enter(
        self,
        name: str,
        kind: str,
        wanted: bool,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """A module call begins (never while torch.compile traces: the callers check)."""
        if not self.enabled:
            return
        buf = self._buf
        if buf is None:
            buf = self._open_step()
            if buf is None:
                self._stack.append(self._frame(name, 0))
                return
        stack = self._stack
        call = buf.calls.get(name, 0)  # the call index is taken by the post-hook
        stack.append(self._frame(name, call))
        if len(stack) == 1:
            self._capture_tokens(buf, name, args, kwargs)
        if wanted and self._want_inputs:
            # the native capture inline (this runs for every module call), Python for what it leaves
            native = buf.native
            if args and (native is None or native.capture(args, name, call, _INPUT, kind) < 0):
                self._capture_python(buf, args, name, call, _INPUT, kind)
            if kwargs and (native is None or native.capture(kwargs, name, call, _INPUT, kind) < 0):
                self._capture_python(buf, kwargs, name, call, _INPUT, kind)

    def _leave(
        self,
        name: str,
        kind: str,
        wanted: bool,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> None:
        """A module call ends (output None when it raised)."""
        stack = self._stack
        if not self.enabled or not stack or stack[-1].name != name:
            return
        frame = stack.pop()
        buf = self._buf
        if buf is not None:
            if not stack and not buf.has_tokens:
                self._capture_tokens(buf, name, (), kwargs)  # a root first seen by the global hook
            calls = buf.calls
            call = calls.get(name, 0)
            calls[name] = call + 1
            if wanted:
                if frame.kwargs_pending:
                    # keyword inputs only visible now (never mutated by the call in practice)
                    self._capture_all(buf, kwargs, name, call, _INPUT, kind)
                if self._want_outputs:
                    native = buf.native
                    if native is None or native.capture(output, name, call, _OUTPUT, kind) < 0:
                        self._capture_python(buf, output, name, call, _OUTPUT, kind)
        if not stack and self.auto_step:
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

    def collective(
        self,
        op: str,
        inputs: tuple[Any, ...],
        run: Callable[[], Any],
        outputs: Callable[[], tuple[Any, ...]] | None,
    ) -> Any:
        """Records a torch.distributed collective's inputs, runs it, then records its outputs
        (none for an async call), named `module.path/op.index` like level-`op` records."""
        buf = self._open_step()
        if buf is None:
            return run()
        name, call = self.op_name(op)
        wanted = self.filters.wants_name(name.split("/", 1)[0])
        if wanted:
            self._capture_all(buf, inputs, name, call, _INPUT, op)
        if buf.native is not None:
            buf.native.flush()  # the collective may write what waits, with no version bump
        result = run()
        if outputs is not None:
            values = outputs()
            # collectives write their outputs without bumping the version counter: forget what was
            # measured of these tensors so that no later capture reuses the numbers from before
            for _, t in find_tensors(values):
                buf.forget(t)
            if wanted:
                self._capture_all(buf, values, name, call, _OUTPUT, op)
        return result

    def op_name(self, op: str) -> tuple[str, int]:
        """('module.path/op.index', the module's call index) for the op now running; ops are
        counted per enclosing module call."""
        frame = self._stack[-1] if self._stack else None
        if frame is None:
            counts = self._root_op_counts()
        elif frame.op_counts is None:
            counts = frame.op_counts = {}
        else:
            counts = frame.op_counts
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


_compiling = torch.compiler.is_compiling
_warned_compiled: set[int] = set()


def _warn_late(step: int, late: list[tuple[str, int, str]]) -> None:
    """Warns of records whose statistics were taken after an in-place write (native capture's
    deferred statistics, when the first step did not show the write)."""
    for name, role, arg in late:
        print(
            f"accdump: step {step}: {name} {Role(role).name.lower()} {arg!r} was written in place after it "
            "was captured and before its statistics were taken: they describe the tensor after the write "
            "(or, if its data moved, are all zero). It is measured when captured from now on "
            "(ACCDUMP_DEFER=none measures every tensor then).",
            file=sys.stderr,
        )


def _warn_compiled(module: nn.Module) -> None:
    """Says once per compiled module what is recorded inside it: hooks are left out of compiled
    graphs (tracing them would make the graph the recorder's), accdump.probe() calls are traced."""
    if id(module) in _warned_compiled:
        return
    _warned_compiled.add(id(module))
    inner = type(getattr(module, "_orig_mod", module)).__name__
    print(
        f"accdump: {inner} runs under torch.compile: the modules inside it are not recorded (their "
        "hooks are not part of the compiled graph); accdump.probe() calls inside it are, and the "
        "module's own inputs and outputs are",
        file=sys.stderr,
    )


def record(model: nn.Module | None, path: str | os.PathLike[str], **kwargs: Any) -> Recorder:
    """`with accdump.record(model, "dumps/golden", mode="stats") as rec: model(x)` — see Recorder.

    Filter keywords (include, exclude, module_types, op_names, steps, ranks, roles,
    max_tensor_bytes) may be given directly instead of a `filters=Filters(...)`."""
    filters = kwargs.pop("filters", None)
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in FILTER_KEYS}
    if given:
        filters = Filters.from_options(**given)
    return Recorder(model, path, filters=filters, **kwargs)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Pauses the active recorder, if any, inside the block (see Recorder.paused)."""
    rec = _active
    if rec is None:
        yield
        return
    with rec.paused():
        yield


def probe(name: str, value: Any) -> None:
    """Records `value` (a tensor or nested tensors) under `name` if a recorder is active; else nothing.
    Inside torch.compile it traces into the graph as a custom op (no graph break)."""
    if torch.compiler.is_compiling():
        from accdump.capture.compiled import probe_traced

        probe_traced(name, value)
        return
    rec = _active
    if rec is not None:
        rec.probe(name, value)
