"""Entering and leaving every call of a module, by wrapping its forward in place.

Hooks registered with `register_forward_pre_hook` / `register_forward_hook` send every call of
the module down nn.Module's slow path (hook dictionaries, result checks): about 2-5 µs per call,
as much as the recording itself on a decoder of small layers. A wrapped `forward` keeps the fast
path and costs one Python call. The wrapper is a method bound to the module, so a deep copy of
the module calls its own forward; the original is looked up on the class at each call, so a
forward patched on the class later is still the one that runs. Once removed, a wrapper that
stays reachable (a copy made while recording, another wrapper around it) only passes calls on.
"""

from __future__ import annotations

import copy
import functools
import inspect
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Enter = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]
Leave = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]

_compiling = torch.compiler.is_compiling


class _Switch:
    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True


class ForwardWrap:
    """A module's forward wrapped by wrap_forward(); remove() puts back what was there."""

    __slots__ = ("_module", "_saved", "_switch", "_wrapper")

    def __init__(self, module: nn.Module, wrapper: Any, saved: Any, switch: _Switch):
        self._module = weakref.ref(module)
        self._wrapper, self._saved, self._switch = wrapper, saved, switch

    def remove(self) -> None:
        self._switch.on = False  # wherever the wrapper is still reachable, it only passes calls on
        module = self._module()
        if module is None or module.__dict__.get("forward") is not self._wrapper:
            return  # gone, or wrapped again by someone else since: theirs stays
        if self._saved is None:
            del module.__dict__["forward"]
        else:
            module.__dict__["forward"] = self._saved


def can_wrap(module: nn.Module) -> bool:
    """Whether wrap_forward() applies: a plain function as the class's forward, no forward hooks
    of the user's (they may replace the output, which the module's callers then see) and not
    TorchScript."""
    if isinstance(module, torch.jit.ScriptModule) or module._forward_hooks or module._forward_pre_hooks:
        return False
    return isinstance(inspect.getattr_static(type(module), "forward", None), types.FunctionType)


def _leave_after_error(leave: Leave, module: nn.Module, args: Any, kwargs: Any) -> None:
    """leave() for a forward that raised: a failure of its own must not replace the user's error."""
    try:
        leave(module, args, kwargs, None)
    except Exception as exc:
        warnings.warn(f"accdump: leaving a failed module call also failed: {exc!r}", stacklevel=3)


class _SavedForward:
    """The wrapper of a forward set on the instance (accelerate's, say). Copies and pickles of the
    module get that forward back, not the wrapper (which knows only the original module)."""

    def __init__(self, module: nn.Module, saved: Any, enter: Enter, leave: Leave, switch: _Switch):
        self._module, self._saved, self._switch = module, saved, switch
        self._enter, self._leave = enter, leave
        functools.update_wrapper(self, saved)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self._switch.on or _compiling():
            return self._saved(*args, **kwargs)
        module = self._module
        try:
            self._enter(module, args, kwargs)
            output = self._saved(*args, **kwargs)
        except Exception:
            _leave_after_error(self._leave, module, args, kwargs)
            raise
        self._leave(module, args, kwargs, output)
        return output

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return copy.deepcopy(self._saved, memo)

    def __reduce__(self) -> Any:
        return _same, (self._saved,)


def _same(x: Any) -> Any:
    return x


def wrap_forward(module: nn.Module, enter: Enter, leave: Leave) -> ForwardWrap:
    """Makes each call of `module`'s forward run enter(module, args, kwargs) first and
    leave(module, args, kwargs, output) after it (output None when the forward or enter raised
    an Exception; the error then propagates). Nothing runs while torch.compile traces the module.
    Check can_wrap() first."""
    switch = _Switch()
    saved = module.__dict__.get("forward")  # a forward set on the instance (accelerate's, say)
    if saved is not None:
        wrapper: Any = _SavedForward(module, saved, enter, leave, switch)
    else:

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            inner = type(self).forward
            if not switch.on or _compiling():
                return inner(self, *args, **kwargs)
            try:
                enter(self, args, kwargs)
                output = inner(self, *args, **kwargs)
            except Exception:
                _leave_after_error(leave, self, args, kwargs)
                raise
            leave(self, args, kwargs, output)
            return output

        functools.update_wrapper(forward, type(module).forward)  # signature, name, docs
        wrapper = types.MethodType(forward, module)
    module.__dict__["forward"] = wrapper
    return ForwardWrap(module, wrapper, saved, switch)
