"""Entering and leaving every call of a module, by wrapping its forward in place.

Hooks registered with `register_forward_pre_hook` / `register_forward_hook` send every call of
the module down nn.Module's slow path (hook dictionaries, result checks): about 2-5 µs per call,
as much as the recording itself on a decoder of small layers. A wrapped `forward` keeps the fast
path and costs one Python call. The wrapper is a method bound to the module, so a deep copy of
the module calls its own forward; the original is looked up on the class at each call, so a
forward patched on the class later is still the one that runs.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Enter = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]
Leave = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]

_compiling = torch.compiler.is_compiling


class ForwardWrap:
    """A module's forward wrapped by wrap_forward(); remove() puts back what was there."""

    __slots__ = ("_module", "_saved", "_wrapper")

    def __init__(self, module: nn.Module, wrapper: Any, saved: Any):
        self._module = weakref.ref(module)
        self._wrapper, self._saved = wrapper, saved

    def remove(self) -> None:
        module = self._module()
        if module is None or module.__dict__.get("forward") is not self._wrapper:
            return  # gone, or wrapped again by someone else since: theirs stays (ours then does nothing)
        if self._saved is None:
            del module.__dict__["forward"]
        else:
            module.__dict__["forward"] = self._saved


def can_wrap(module: nn.Module) -> bool:
    """Whether wrap_forward() applies (TorchScript modules keep their compiled forward)."""
    return not isinstance(module, torch.jit.ScriptModule)


def wrap_forward(module: nn.Module, enter: Enter, leave: Leave) -> ForwardWrap:
    """Makes each call of `module`'s forward run enter(module, args, kwargs) first and
    leave(module, args, kwargs, output) after it (output None when the forward raised; the error
    then propagates). Nothing runs while torch.compile traces the module."""
    saved = module.__dict__.get("forward")  # a forward set on the instance (accelerate's, say)
    if saved is None:

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            inner = type(self).forward
            if _compiling():
                return inner(self, *args, **kwargs)
            enter(self, args, kwargs)
            try:
                output = inner(self, *args, **kwargs)
            except BaseException:
                leave(self, args, kwargs, None)
                raise
            leave(self, args, kwargs, output)
            return output

        functools.update_wrapper(forward, type(module).forward)  # signature, name, docs
        wrapper: Any = types.MethodType(forward, module)
    else:

        def forward_saved(*args: Any, **kwargs: Any) -> Any:
            if _compiling():
                return saved(*args, **kwargs)
            enter(module, args, kwargs)
            try:
                output = saved(*args, **kwargs)
            except BaseException:
                leave(module, args, kwargs, None)
                raise
            leave(module, args, kwargs, output)
            return output

        functools.update_wrapper(forward_saved, saved)
        wrapper = forward_saved
    module.__dict__["forward"] = wrapper
    return ForwardWrap(module, wrapper, saved)
