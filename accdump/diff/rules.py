"""Renaming rules: regex -> replacement applied to target names before pairing with golden ones.

A rules file is YAML or JSON: a list of {pattern: ..., replacement: ...} (or [pattern, replacement])
pairs, applied in order, e.g.
`transformer\\.layers\\.(\\d+)\\.attention\\.dense` -> `model.layers.\\1.self_attn.o_proj`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accdump.errors import AccdumpError


class RulesError(AccdumpError, ValueError):
    """A renaming rules file could not be read or holds a bad rule."""


def read_structured(p: Path) -> Any:
    """The content of a YAML (.yaml/.yml) or JSON file; RulesError naming the file otherwise."""
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"cannot read {p}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise RulesError(f"{p}: not UTF-8 text: {exc}") from exc
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as exc:
        kind = "YAML" if p.suffix in (".yaml", ".yml") else "JSON"
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:  # PyYAML: say where, without its multi-line source snippet
            problem = getattr(exc, "problem", None) or "syntax error"
            why = f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
        else:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RulesError(f"{p}: not valid {kind}: {why}") from exc


@dataclass(frozen=True)
class RenameRules:
    rules: tuple[tuple[re.Pattern[str], str], ...] = ()

    def apply(self, name: str) -> str:
        for pattern, repl in self.rules:
            name = pattern.sub(repl, name)
        return name

    @classmethod
    def load(cls, path: str | Path) -> RenameRules:
        p = Path(path)
        data = read_structured(p)
        if isinstance(data, dict) and "rename" in data:
            data = data["rename"]
        if not isinstance(data, list):
            raise RulesError(
                f"{p}: expected a list of {{pattern, replacement}} rules, got {type(data).__name__}"
            )
        rules = []
        for i, item in enumerate(data):
            if isinstance(item, dict) and "pattern" in item:
                pat, repl = item["pattern"], item.get("replacement", "")
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                pat, repl = item
            else:
                raise RulesError(f"{p}: rule {i} must be {{pattern: ..., replacement: ...}}, got {item!r}")
            if not isinstance(pat, str) or not isinstance(repl, str):
                raise RulesError(
                    f"{p}: rule {i}: pattern and replacement must be strings (quote them in YAML), "
                    f"got {pat!r} -> {repl!r}"
                )
            try:
                compiled = re.compile(pat)
            except re.error as exc:
                raise RulesError(f"{p}: rule {i}: bad regular expression {pat!r}: {exc}") from exc
            try:  # parses the replacement: a bad group reference fails here, not in mid-compare
                compiled.sub(repl, "")
            except (re.error, IndexError) as exc:
                raise RulesError(f"{p}: rule {i}: bad replacement {repl!r}: {exc}") from exc
            rules.append((compiled, repl))
        return cls(tuple(rules))
