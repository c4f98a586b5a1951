"""accdump.probe() inside torch.compile: a custom op with side effects, so a probe traces into
the compiled graph (no graph break, never removed as dead code) and, when the compiled code runs,
hands the computed tensor to the active recorder, if any."""

from __future__ import annotations

from typing import Any

import torch


@torch.library.custom_op("accdump::probe_tensor", mutates_args=())
def probe_tensor(x: torch.Tensor, name: str, arg: str, position: int) -> None:
    """Records `x` as argument `arg` (the `position`-th tensor) of probe `name` in the active
    recorder (runs eagerly, inside compiled code as well)."""
    from accdump.capture.recorder import active_recorder

    rec = active_recorder()
    if rec is not None:
        rec.probe_one(name, arg, position == 0, x)


@probe_tensor.register_fake
def _probe_tensor_fake(x: torch.Tensor, name: str, arg: str, position: int) -> None:
    return None


torch.fx.node.has_side_effect(torch.ops.accdump.probe_tensor.default)


def probe_traced(name: str, value: Any) -> None:
    """The probe as torch.compile traces it: one probe_tensor op per tensor of `value` (a tensor,
    or a list / tuple / dict of tensors)."""
    if isinstance(value, torch.Tensor):
        items = [("0", value)]
    elif isinstance(value, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    else:
        items = []
    tensors = [(arg, v) for arg, v in items if isinstance(v, torch.Tensor)]
    for position, (arg, t) in enumerate(tensors):
        torch.ops.accdump.probe_tensor(t, name, arg, position)
