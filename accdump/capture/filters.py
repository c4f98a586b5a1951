"""What to record: name globs, module types, op names, steps, ranks, roles, sizes."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from accdump.errors import AccdumpError


class FilterError(AccdumpError, ValueError):
    """A filter specification (steps, ranks, roles) could not be parsed."""


def parse_int_set(spec: str | Iterable[int] | None, what: str) -> frozenset[int] | None:
    """'0,3-5' -> {0, 3, 4, 5}; None means everything."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return frozenset(int(v) for v in spec)
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                out.update(range(lo_i, hi_i + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise FilterError(f"bad {what} specification {spec!r}: use e.g. '0,3-5'") from None
    return frozenset(out)


ROLE_CHOICES = ("input", "output", "parameter", "probe", "tokens")
FILTER_KEYS = frozenset(
    {"include", "exclude", "module_types", "op_names", "steps", "ranks", "roles", "max_tensor_bytes"}
)


def _strings(v: str | Iterable[str]) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(v)


@dataclass(frozen=True)
class Filters:
    include: tuple[str, ...] = ()  # name globs; empty: everything
    exclude: tuple[str, ...] = ()
    module_types: tuple[str, ...] = ()  # class names; empty: every module
    op_names: tuple[str, ...] = ()  # ATen op globs (op level); empty: every op
    steps: frozenset[int] | None = None
    ranks: frozenset[int] | None = None
    roles: frozenset[str] = field(default_factory=lambda: frozenset(ROLE_CHOICES))
    max_tensor_bytes: int | None = None  # larger tensors keep statistics only

    def __post_init__(self) -> None:
        bad = set(self.roles) - set(ROLE_CHOICES)
        if bad:
            raise FilterError(f"unknown role(s) {sorted(bad)}: choose from {', '.join(ROLE_CHOICES)}")

    @classmethod
    def from_options(cls, **opts: Any) -> Filters:
        """From user-facing values: globs as a string or a list, steps / ranks as '0,3-5' or ints."""
        kw: dict[str, Any] = {}
        for key, value in opts.items():
            if key in ("include", "exclude", "module_types", "op_names"):
                kw[key] = _strings(value)
            elif key in ("steps", "ranks"):
                kw[key] = parse_int_set(value, key)
            elif key == "roles":
                kw[key] = frozenset(_strings(value))
            elif key == "max_tensor_bytes":
                kw[key] = value
            else:
                raise FilterError(f"unknown filter {key!r}: choose from {', '.join(sorted(FILTER_KEYS))}")
        return cls(**kw)

    def wants_name(self, name: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(name, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, g) for g in self.exclude)

    def wants_module_type(self, type_name: str) -> bool:
        return not self.module_types or type_name in self.module_types

    def wants_op(self, op_name: str) -> bool:
        return not self.op_names or any(fnmatch.fnmatchcase(op_name, g) for g in self.op_names)

    def wants_step(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def wants_rank(self, rank: int) -> bool:
        return self.ranks is None or rank in self.ranks
