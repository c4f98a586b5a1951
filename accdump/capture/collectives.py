"""Collectives made visible: while a recorder runs, the tensors entering and leaving
torch.distributed's all_reduce, all_gather(_into_tensor), reduce_scatter(_tensor) and broadcast
are recorded, named by the calling module and counted inside its call
(`model.layers.3.mlp/all_reduce.0`), so a missing or doubled collective shows up as a record.

The functions are wrapped in torch.distributed and its distributed_c10d module for the recorder's
lifetime (the functional collectives are ATen ops: level `op` sees those). With `async_op=True`
only the inputs are recorded: the result is not there until the caller waits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accdump.capture.recorder import Recorder

# name -> (positions of the inputs, positions of the outputs) in the call's arguments
_SIGNATURES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "all_reduce": ((0,), (0,)),
    "broadcast": ((0,), (0,)),
    "all_gather_into_tensor": ((1,), (0,)),
    "reduce_scatter_tensor": ((1,), (0,)),
    "all_gather": ((1,), (0,)),
    "reduce_scatter": ((1,), (0,)),
}
_ARG_NAMES = {
    "all_reduce": ("tensor",),
    "broadcast": ("tensor",),
    "all_gather_into_tensor": ("output_tensor", "input_tensor"),
    "reduce_scatter_tensor": ("output", "input"),
    "all_gather": ("tensor_list", "tensor"),
    "reduce_scatter": ("output", "input_list"),
}


def _arg(name: str, pos: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if pos < len(args):
        return args[pos]
    return kwargs.get(_ARG_NAMES[name][pos])


class CollectiveHooks:
    """Wraps the collectives for one recorder; remove() puts the originals back."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self._saved: list[tuple[Any, str, Callable[..., Any]]] = []

    def install(self) -> None:
        import torch.distributed as dist

        if not dist.is_available():
            return
        from torch.distributed import distributed_c10d

        for name in _SIGNATURES:
            found = getattr(distributed_c10d, name, None)
            if found is None:
                continue
            original: Callable[..., Any] = found
            wrapped = self._wrap(name, original)
            for module in (dist, distributed_c10d):
                if getattr(module, name, None) is original:
                    self._saved.append((module, name, original))
                    setattr(module, name, wrapped)

    def remove(self) -> None:
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved.clear()

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        rec = self.recorder
        ins, outs = _SIGNATURES[name]

        @functools.wraps(original)
        def collective(*args: Any, **kwargs: Any) -> Any:
            if not rec.enabled or rec._in_capture:
                return original(*args, **kwargs)
            inputs = tuple(_arg(name, p, args, kwargs) for p in ins)
            is_async = bool(kwargs.get("async_op", False))
            return rec.collective(
                name,
                inputs,
                lambda: original(*args, **kwargs),
                None if is_async else (lambda: tuple(_arg(name, p, args, kwargs) for p in outs)),
            )

        return collective
