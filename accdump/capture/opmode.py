"""Op-level capture: a TorchDispatchMode that records each ATen op's tensor inputs and outputs,
named by the enclosing module call: 'model.layers.3.self_attn/softmax.0'."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from accdump.capture.flatten import find_tensors
from accdump.store.schema import Role

if TYPE_CHECKING:
    from accdump.capture.recorder import Recorder

# Ops whose output is uninitialised memory or pure metadata: nothing to learn from their values.
_SKIP = frozenset(
    {
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "detach",
        "lift_fresh",
        "_local_scalar_dense",
        "set_",
        "resize_",
        "record_stream",
        "_wrap_tensor_autograd",  # functional collectives' wrapper: runs before the data arrives
        "wait_tensor",
        # dtype casts: a cast that is a no-op in a float32 golden dispatches nothing there but runs
        # in a bfloat16 target, which would shift every later cast's index and mis-pair them; a wrong
        # cast still shows, as the failing input of the op that consumes it
        "_to_copy",
    }
)


class OpCaptureMode(TorchDispatchMode):
    def __init__(self, recorder: Recorder):
        super().__init__()
        self.rec = recorder

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        rec = self.rec
        op = func.overloadpacket.__name__
        if (
            not rec.enabled
            or rec._in_capture
            or func.namespace == "accdump"
            or func.is_view
            or op in _SKIP
            or not rec.filters.wants_op(op)
        ):
            return func(*args, **kwargs)
        if rec.auto_step and not rec._stack and rec._buf is None:
            # outside any call of the model (e.g. generate()'s own argmax): not part of a step
            return func(*args, **kwargs)
        buf = rec._open_step()
        if buf is None:
            return func(*args, **kwargs)
        name, call = rec.op_name(op)
        if not rec.filters.wants_name(name):
            return func(*args, **kwargs)
        # inputs before the op runs (an in-place op would change them), outputs after
        rec._capture_all(buf, args, name, call, Role.INPUT, op)
        rec._capture_all(buf, kwargs, name, call, Role.INPUT, op)
        out = func(*args, **kwargs)
        if func.namespace == "_c10d_functional":
            # a functional collective returns before its data arrives: wait for it (here, rather
            # than where the program would) so that the output is measured complete
            for _, t in find_tensors(out):
                torch.ops._c10d_functional.wait_tensor(t)
        # An in-place op returns its mutated input, whose version counter is only bumped after
        # this handler returns: never reuse what was captured of it before the op ran.
        for _, t in find_tensors(out):
            buf.forget(t)
        rec._capture_all(buf, out, name, call, Role.OUTPUT, op)
        return out


__all__ = ["OpCaptureMode", "torch"]
