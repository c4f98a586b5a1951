"""compare's HTML report: the verdict, the first divergence, metric curves along the run, golden vs
target per token at the divergence, the two runs' metadata side by side and a searchable table of
the pairs, in one self-contained file (figures inline, nothing fetched)."""

from __future__ import annotations

import json
import math
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accdump.diff.metrics import Verdict, is_integer
from accdump.diff.report import CONTROLS
from accdump.diff.result import CompareResult, Pair
from accdump.errors import AccdumpError
from accdump.store import Dump, Record, load

MAX_ROWS = 3000  # rows of the pairs table; the CSV and JSON reports hold every pair
CONTEXT = 25  # rows kept on each side of the first divergence in a capped table
MAX_TOKEN_ROWS = 20000  # points per line of the per-token plot; longer records are strided
MAX_ONLY = 200  # names listed of the records found on one side only

_META_FIRST = (
    "accdump_version",
    "torch_version",
    "cuda_version",
    "native",
    "device_name",
    "mode",
    "level",
    "world_size",
    "command_line",
    "created",
    "host",
    "format",
    "format_version",
)

# (column, format): metric columns, shown when some shown pair has the metric
_METRICS = (
    ("cosine", "cosine", ".5f"),
    ("norm ratio", "norm_ratio", ".4f"),
    ("rel L2", "rel_l2", ".3g"),
    ("SQNR dB", "sqnr_db", ".1f"),
    ("max |diff|", "max_abs_diff", ".3g"),
    ("std rel diff", "std_rel_diff", ".3g"),
    ("mean shift", "mean_diff", ".3g"),
    ("absmax rel diff", "absmax_rel_diff", ".3g"),
)


_WRAPPED = ("name", "golden name", "arg", "note")  # table columns whose long text wraps


def _f(v: Any, fmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, fmt)


def _index(pairs: list[Pair], pair: Pair) -> int:
    return next(i for i, p in enumerate(pairs) if p is pair)


def shown_rows(result: CompareResult, cap: int = MAX_ROWS) -> tuple[list[int], str]:
    """Indices of the pairs the table shows (all up to `cap`) and a note when some are left out:
    then the pairs around the first divergence, the failing ones, and the first in execution order."""
    pairs = result.pairs
    if len(pairs) <= cap:
        return list(range(len(pairs))), ""
    chosen: set[int] = set()
    d = result.first_divergence
    if d is not None:
        i = _index(pairs, d.pair)
        chosen.update(range(max(0, i - CONTEXT), min(len(pairs), i + CONTEXT + 1)))
    failing = [i for i, p in enumerate(pairs) if p.verdict >= Verdict.BROKEN]
    room = max(0, cap * 3 // 4 - len(chosen))
    chosen.update(failing[:room])
    head = 0
    while len(chosen) < cap and head < len(pairs):
        chosen.add(head)
        head += 1
    parts = [f"the first {head} in execution order"]
    if d is not None:
        parts.insert(0, f"the {2 * CONTEXT + 1} around the first divergence")
    if failing:
        kept = min(len(failing), room)
        parts.insert(
            -1, f"all {kept} failing" if kept == len(failing) else f"{kept} of the {len(failing)} failing"
        )
    note = (
        f"Showing {len(chosen)} of {len(pairs)} pairs: {', '.join(parts)}. "
        "The complete list is in the --csv and --json reports."
    )
    return sorted(chosen), note


def _table(result: CompareResult, indices: list[int]) -> tuple[list[tuple[str, bool]], list[dict[str, Any]]]:
    """Column headers (label, numeric) and rows (cells, verdict class, divergent) of the pairs table."""
    pairs = [result.pairs[i] for i in indices]
    d = result.first_divergence
    multi_rank = len({p.target.rank for p in pairs}) > 1
    renamed = any(p.golden.name != p.target.name for p in pairs)
    metrics = [
        (label, key, fmt)
        for label, key, fmt in _METRICS
        if any(p.metrics is not None and getattr(p.metrics, key) is not None for p in pairs)
    ]
    new_bad = any(p.metrics is not None and (p.metrics.new_nan or p.metrics.new_inf) for p in pairs)
    notes = any(p.note for p in pairs)
    columns = [("#", True), *([("rank", True)] if multi_rank else []), ("step", True), ("order", True)]
    columns += [("name", False), *([("golden name", False)] if renamed else [])]
    columns += [("call", True), ("role", False), ("arg", False), ("dtype g/t", False), ("shape", False)]
    columns += [(label, True) for label, _, _ in metrics]
    columns += [*([("new NaN/Inf", True)] if new_bad else []), ("verdict", False)]
    columns += [("note", False)] if notes else []
    rows = []
    for i, p in zip(indices, pairs, strict=True):
        g, t, m = p.golden, p.target, p.metrics
        is_div = d is not None and p is d.pair
        cells: list[Any] = [i, *([t.rank] if multi_rank else []), t.step, t.order]
        cells += [(t.name or "<root>") + (" ◀ first divergence" if is_div else "")]
        cells += [g.name or "<root>"] if renamed else []
        dtypes = g.dtype if g.dtype == t.dtype else f"{g.dtype}/{t.dtype}"
        shape = "x".join(map(str, t.shape)) or "scalar"
        if g.shape != t.shape:
            shape = f"{'x'.join(map(str, g.shape))}/{shape}"
        cells += [t.call, t.role.name.lower(), t.arg, dtypes, shape]
        cells += [_f(getattr(m, key) if m else None, fmt) for _, key, fmt in metrics]
        cells += [f"{m.new_nan}/{m.new_inf}" if m else "-"] if new_bad else []
        cells += [p.verdict.label, *([p.note] if notes else [])]
        rows.append({"cells": cells, "verdict": p.verdict.label, "div": is_div})
    return columns, rows


def _dump_of(record: Record) -> Dump:
    """The dump a record was read from (its segment lies in DUMP/rankNNNNN/)."""
    return load(record.segment.parent.parent)


def _stored(record: Record) -> torch.Tensor:
    """The tensor of `record`, only when it is stored as it is described: a record put together
    from the shards of several ranks (unsharded) is not, and is refused."""
    dump = _dump_of(record)
    if record.rank not in dump.ranks or not any(
        r.segment == record.segment
        and (r.heap_offset, r.heap_nbytes, r.shape) == (record.heap_offset, record.heap_nbytes, record.shape)
        for r in dump.records(rank=record.rank, step=record.step)
    ):
        raise AccdumpError(f"{record.name or '<root>'} is not stored as compared (unsharded from ranks)")
    return dump.tensor(record)


def _per_row(a: torch.Tensor, b: torch.Tensor, cosine: list[float]) -> Any:
    """TokenData of two same-shape tensors: rows are over the last dimension, in float64."""
    from accdump.diff.report_plots import TokenData

    width = a.shape[-1] if a.dim() else 1
    ra, rb = a.reshape(-1, max(width, 1)), b.reshape(-1, max(width, 1))
    stride = max(1, math.ceil(ra.shape[0] / MAX_TOKEN_ROWS))
    ra, rb = ra[::stride], rb[::stride]
    norms, cos = [], []
    for start in range(0, ra.shape[0], 4096):  # float64 a block of rows at a time
        x, y = ra[start : start + 4096].double(), rb[start : start + 4096].double()
        fin = torch.isfinite(x) & torch.isfinite(y)
        x0, y0 = torch.where(fin, x, 0.0), torch.where(fin, y, 0.0)
        nx, ny = x0.norm(dim=1), y0.norm(dim=1)
        norms.append((nx, ny))
        cos.append((x0 * y0).sum(1) / (nx * ny).clamp_min(1e-300))
    gn = torch.cat([n[0] for n in norms]).numpy()
    tn = torch.cat([n[1] for n in norms]).numpy()
    row_cos = np.asarray(cosine[::stride]) if cosine else torch.cat(cos).numpy()
    channels = (ra[:, :3].double().numpy(), rb[:, :3].double().numpy())
    return TokenData("", tuple(a.shape), row_cos, (gn, tn), channels, stride)


def token_section(result: CompareResult) -> tuple[str | None, str]:
    """The per-token figure of the first divergence (base64 PNG, or None) and its caption."""
    from accdump.diff.report_plots import TokenData, token_plot

    d = result.first_divergence
    if d is None:
        return None, ""
    g, t = d.pair.golden, d.pair.target
    name = t.name or "<root>"
    where = f"{name} ({t.role.name.lower()} {t.arg}, step {t.step})"
    if g.shape != t.shape or not t.shape or is_integer(g.dtype) or is_integer(t.dtype):
        shapes = f"shapes {list(g.shape)} and {list(t.shape)}, dtypes {g.dtype} and {t.dtype}"
        return None, f"No per-token view of {where}: {shapes}."
    data, why = None, ""
    if g.has_tensor and t.has_tensor:
        try:
            data = _per_row(_stored(g), _stored(t), d.token_cosine)
        except (AccdumpError, OSError) as exc:
            why = f"The stored tensors cannot be read back ({exc})."
    else:
        why = (
            "The tensors were not stored (statistics only): record with --mode tensor to see "
            "golden and target values per token."
        )
    if data is None and d.token_cosine:
        data = TokenData(name, t.shape, np.asarray(d.token_cosine))
    if data is None:
        return None, f"No per-token view of {where}. {why}"
    data.name = name
    shows = (
        "the L2 norm and the first channels of each row (token), golden solid and target dashed, "
        "then the cosine per row"
        if data.norms is not None
        else "the cosine per row (token) between golden and target"
    )
    caption = f"{where}: {shows}; the worst row in red. {why}"
    if data.stride > 1:
        caption += f" Every {data.stride}th row is shown."
    return token_plot(data), caption.strip()


def _text(v: Any) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def _flat_meta(meta: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, v in meta.items():
        if key == "rank":
            continue  # the rank whose copy was read, not a property of the run
        if key == "command_line" and isinstance(v, list):
            out[key] = shlex.join(map(str, v))
        elif isinstance(v, dict):
            out.update({f"{key}.{k}": _text(x) for k, x in v.items()} or {key: "{}"})
        else:
            out[key] = _text(v)
    return out


def _side_meta(path: str, pairs: list[Pair], side: str) -> tuple[dict[str, str] | None, str]:
    """A side's metadata, read from the dump its records came from (else from the path shown)."""
    where = [getattr(pairs[0], side).segment.parent.parent] if pairs else []
    errors = []
    for p in [*where, Path(path)]:
        try:
            return _flat_meta(load(p).meta()), ""
        except (AccdumpError, OSError) as exc:
            errors.append(str(exc))
    return None, f"The {side}'s metadata cannot be read ({errors[-1]})."


def _dtypes(records: list[Record]) -> str:
    return ", ".join(f"{dt} ×{n}" for dt, n in Counter(r.dtype for r in records).most_common())


def meta_rows(result: CompareResult) -> tuple[list[dict[str, Any]], list[str]]:
    """Both runs' metadata side by side, differences marked, and notes on what could not be read."""
    gm, gnote = _side_meta(result.golden, result.pairs, "golden")
    tm, tnote = _side_meta(result.target, result.pairs, "target")
    notes = [n for n in (gnote, tnote) if n]
    g, t = gm or {}, tm or {}
    g["dtypes of compared records"] = _dtypes([p.golden for p in result.pairs])
    t["dtypes of compared records"] = _dtypes([p.target for p in result.pairs])
    g["records compared / only here"] = f"{len(result.pairs)} / {len(result.only_golden)}"
    t["records compared / only here"] = f"{len(result.pairs)} / {len(result.only_target)}"
    keys = [k for k in _META_FIRST if k in g or k in t]
    keys += sorted((set(g) | set(t)) - set(keys), key=lambda k: (k.count(".") > 0, "records" in k, k))
    rows = []
    for k in keys:
        a = g.get(k, "(absent)" if gm is not None else "(not readable)")
        b = t.get(k, "(absent)" if tm is not None else "(not readable)")
        rows.append({"key": k, "golden": a, "target": b, "differs": a != b})
    return rows, notes


def _divergence(result: CompareResult) -> dict[str, Any] | None:
    d = result.first_divergence
    if d is None:
        return None
    t, m = d.pair.target, d.pair.metrics
    shown = []
    if m is not None:
        for label, key, fmt in _METRICS:
            v = getattr(m, key)
            if v is not None:
                shown.append(f"{label} {_f(v, fmt)}")
        if m.new_nan or m.new_inf:
            shown.append(f"{m.new_nan} new NaN, {m.new_inf} new Inf")
    if d.pair.note:
        shown.append(d.pair.note)
    worst = ", ".join(f"row {r}: cosine {c:.4f}" for r, c in (m.rows_cosine_worst if m else []))
    propagates = {
        True: "The error propagates to the end of the step.",
        False: "Later records recover: the error is isolated.",
        None: "",
    }[result.propagates]
    return {
        "name": t.name or "<root>",
        "golden_name": d.pair.golden.name or "<root>",
        "rank": t.rank,
        "step": t.step,
        "call": t.call,
        "role": t.role.name.lower(),
        "arg": t.arg,
        "verdict": d.pair.verdict.label,
        "metrics": "; ".join(shown),
        "attributed_to": d.attributed_to,
        "explanation": d.explanation,
        "inputs": [(f"{p.target.name or '<root>'} input {p.target.arg}", p.verdict.label) for p in d.inputs],
        "last_passing": (d.last_passing.target.name or "<root>") if d.last_passing else "none in this step",
        "worst_rows": worst,
        "propagates": propagates,
    }


def _curves(result: CompareResult) -> list[dict[str, str]]:
    from accdump.diff.report_plots import curve_metrics, execution_curves, layer_curves

    if not result.pairs:
        return []
    sim, err = curve_metrics(result.pairs)
    png, note = execution_curves(result, result.pairs)
    caption = (
        f"{sim[0]} (top) and {err[0]} (bottom, symlog) of every compared record, one line per step; "
        f"the dashed red line marks the first divergence. {note}"
    )
    curves = [{"title": "Record by record, in execution order", "png": png, "caption": caption.strip()}]
    layers = layer_curves(result)
    if layers:
        caption = "The output of each decoder layer (layers.N), one line per step."
        curves.append({"title": "Layer by layer", "png": layers, "caption": caption})
    return curves


def render(result: CompareResult) -> str:
    """The report page as a string."""
    import jinja2

    from accdump.diff.report_page import FILTER_JS, PAGE, SORT_JS

    indices, table_note = shown_rows(result)
    columns, rows = _table(result, indices)
    metadata, meta_notes = meta_rows(result)
    token_png, token_note = token_section(result)
    counts = Counter(p.verdict for p in result.pairs)
    only = [
        (
            f"Only in {side} ({len(recs)} records)",
            [_label(r) for r in recs[:MAX_ONLY]],
            max(0, len(recs) - MAX_ONLY),
        )
        for side, recs in (("golden", result.only_golden), ("target", result.only_target))
    ]
    # control characters in a name are shown as \xNN, as in the terminal; autoescape does the rest
    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=lambda v: v.translate(CONTROLS) if isinstance(v, str) else v,
    )
    return env.from_string(PAGE).render(
        golden=result.golden,
        target=result.target,
        verdict=result.verdict_line(),
        diverged=result.exit_code != 0,
        counts=[(v.label, counts[v]) for v in Verdict if counts[v]],
        n_pairs=len(result.pairs),
        only_g=len(result.only_golden),
        only_t=len(result.only_target),
        steps=result.steps_note,
        findings=result.findings,
        token=result.first_token_diff,
        div=_divergence(result),
        curves=_curves(result),
        token_png=token_png,
        token_note=token_note,
        meta_rows=metadata,
        n_meta_diff=sum(r["differs"] for r in metadata),
        meta_notes=meta_notes,
        columns=columns,
        left_columns=[i + 1 for i, (label, num) in enumerate(columns) if not num],
        wrapped_columns=[i + 1 for i, (label, _) in enumerate(columns) if label in _WRAPPED],
        name_columns=[i + 1 for i, (label, _) in enumerate(columns) if label.endswith("name")],
        rows=rows,
        table_note=table_note,
        filter_js=FILTER_JS,
        sort_js=SORT_JS,
        only=only,
    )


def _label(r: Record) -> str:
    return f"step {r.step} rank {r.rank}: {r.name or '<root>'} {r.role.name.lower()} {r.arg} (call {r.call})"


def write_html(result: CompareResult, path: str | Path) -> None:
    """Writes the self-contained HTML report of `result` to `path`."""
    Path(path).write_text(render(result), encoding="utf-8")
