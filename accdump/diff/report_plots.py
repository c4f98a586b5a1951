"""The figures of the HTML report as base64 PNGs: metric curves along the run (one line per step,
the first divergence marked) and golden vs target per token at the first divergence."""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from accdump.diff.metrics import PairMetrics, is_integer
from accdump.diff.report import CONTROLS
from accdump.diff.result import CompareResult, Pair

MAX_STEPS = 12  # lines per plot; more steps are sampled evenly, the divergent step always kept
RED = "#c62828"
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)(?:[./]|$)")

Metric = tuple[str, Callable[[PairMetrics], float | None]]


@dataclass
class TokenData:
    """Golden and target of one record per row (token): L2 norms, a few channels, cosine."""

    name: str
    shape: tuple[int, ...]
    cosine: np.ndarray  # [rows]
    norms: tuple[np.ndarray, np.ndarray] | None = None  # golden, target: [rows]
    channels: tuple[np.ndarray, np.ndarray] | None = None  # golden, target: [rows, channels]
    stride: int = 1  # every stride-th row is kept (a very long record)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _figure(rows: int, height: float) -> tuple[Figure, list[Axes]]:
    # a Figure without pyplot: no global backend switch, no figure registry to leak into
    fig = Figure(figsize=(12, height * rows), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # records, layers, rows
    return fig, list(axes)


def short(name: str, width: int = 70) -> str:
    name = (name or "<root>").translate(CONTROLS)
    return name if len(name) <= width else name[: width - 1] + "…"


def curve_metrics(pairs: list[Pair]) -> tuple[Metric, Metric]:
    """What the curves show: cosine and rel L2 when tensors were compared, else (statistics
    only) the norm ratio and the relative difference of the standard deviations."""
    if any(p.metrics is not None and p.metrics.cosine is not None for p in pairs):
        return ("cosine", lambda m: m.cosine), ("rel L2 error", lambda m: m.rel_l2)
    return ("norm ratio (from stats)", lambda m: m.norm_ratio), (
        "std rel diff (from stats)",
        lambda m: m.std_rel_diff,
    )


def chosen_steps(steps: list[int], keep: int | None) -> list[int]:
    """At most MAX_STEPS of `steps`, evenly spread, always with `keep` (the divergent step)."""
    if len(steps) <= MAX_STEPS:
        return steps
    picked = {steps[round(i * (len(steps) - 1) / (MAX_STEPS - 2))] for i in range(MAX_STEPS - 1)}
    if keep is not None:
        picked.add(keep)
    return sorted(picked)


def _value(m: PairMetrics | None, metric: Metric) -> float:
    v = metric[1](m) if m is not None else None
    return math.nan if v is None or not math.isfinite(v) else float(v)


def _dx(ax: Axes, x: float) -> int:
    """Offset of a label at `x`: towards the side with room, so that it never widens the figure."""
    lo, hi = ax.get_xlim()
    return -5 if x > (lo + hi) / 2 else 5


def _mark(ax: Axes, x: float, y: float | None, label: str | None) -> None:
    ax.axvline(x, color=RED, lw=1.6, ls="--", zorder=1)
    if y is not None and math.isfinite(y):
        ax.plot([x], [y], "o", ms=10, color=RED, zorder=5)
    if label:
        ax.annotate(
            label,
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(_dx(ax, x), -12),
            ha="right" if _dx(ax, x) < 0 else "left",
            textcoords="offset points",
            color=RED,
            fontsize=9,
            fontweight="bold",
            parse_math=False,  # names are text, never mathtext
        )


def _style(n_lines: int, points: int) -> dict[str, Any]:
    return {
        "lw": 1.2,
        "marker": "o" if points <= 120 else None,
        "ms": 3,
        "alpha": 0.9 if n_lines < 4 else 0.75,
    }


def execution_curves(result: CompareResult, pairs: list[Pair]) -> tuple[str, str]:
    """Both metrics over the records of each step in execution order; returns (png, note)."""
    d = result.first_divergence
    rank = d.pair.target.rank if d else min(p.target.rank for p in pairs)
    by_step: dict[int, list[tuple[int, Pair]]] = {}
    for p in pairs:
        if p.target.rank == rank:
            steps = by_step.setdefault(p.target.step, [])
            steps.append((len(steps), p))  # x: position among the step's compared records
    shown = chosen_steps(sorted(by_step), d.pair.target.step if d else None)
    metrics = curve_metrics(pairs)
    fig, axes = _figure(2, 2.9)
    for step in shown:
        pts = [(x, p) for x, p in by_step[step] if not is_integer(p.target.dtype)]
        xs = [x for x, _ in pts]
        for ax, metric in zip(axes, metrics, strict=True):
            ys = [_value(p.metrics, metric) for _, p in pts]
            ax.plot(xs, ys, label=f"step {step}", **_style(len(shown), len(xs)))
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_ylabel(metric[0])
        ax.grid(alpha=0.3)
    axes[1].set_yscale("symlog", linthresh=1e-4)
    axes[1].set_xlabel(f"record in execution order (rank {rank})")
    if d is not None:
        x = next(x for x, p in by_step[d.pair.target.step] if p is d.pair)
        for i, (ax, metric) in enumerate(zip(axes, metrics, strict=True)):
            label = f"first divergence: {short(d.pair.target.name)} (step {d.pair.target.step})"
            _mark(ax, x, _value(d.pair.metrics, metric), label if i == 0 else None)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside: hides no line
    note = f"{len(shown)} of {len(by_step)} steps shown" if len(shown) < len(by_step) else ""
    return _png(fig), note


def layer_curves(result: CompareResult) -> str | None:
    """The residual stream (each decoder layer's output) by layer index; None without layers."""
    d = result.first_divergence
    traj = result.trajectory
    if not traj:
        return None
    rank = d.pair.target.rank if d else min(p["rank"] for p in traj)
    traj = [p for p in traj if p["rank"] == rank]
    tensor = any(p["cosine"] is not None for p in traj)
    sim = "cosine" if tensor else "norm_ratio"

    def err(p: dict[str, Any]) -> float:
        if tensor:
            return math.nan if p["rel_l2"] is None else float(p["rel_l2"])
        return math.nan if p["norm_ratio"] is None else abs(float(p["norm_ratio"]) - 1.0)

    steps = chosen_steps(sorted({p["step"] for p in traj}), d.pair.target.step if d else None)
    fig, axes = _figure(2, 2.4)
    for step in steps:
        pts = [p for p in traj if p["step"] == step]
        xs = [p["layer"] for p in pts]
        ys = [math.nan if p[sim] is None else p[sim] for p in pts]
        style = _style(len(steps), len(xs))
        axes[0].plot(xs, ys, label=f"step {step}", **style)
        axes[1].plot(xs, [err(p) for p in pts], **style)
    axes[0].set_ylabel("cosine" if tensor else "norm ratio (stats)")
    axes[1].set_ylabel("rel L2 error" if tensor else "|norm ratio - 1|")
    axes[1].set_yscale("symlog", linthresh=1e-4)
    axes[1].set_xlabel("decoder layer (its output: the residual stream)")
    for ax in axes:
        ax.grid(alpha=0.3)
    layer = _LAYER.search(d.pair.target.name) if d else None
    if d is not None and layer:
        for i, ax in enumerate(axes):
            _mark(
                ax,
                int(layer.group(1)),
                None,
                f"first divergence in layer {layer.group(1)}" if i == 0 else None,
            )
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def token_plot(data: TokenData) -> str:
    """Per token (row): L2 norms and the first channels, golden (solid) vs target (dashed), and
    the cosine between them with the worst token marked."""
    fig, axes = _figure(1 + (data.norms is not None) + (data.channels is not None), 2.3)
    rows = np.arange(len(data.cosine)) * data.stride
    style = _style(2, len(rows))
    if data.norms is not None:
        axes[0].plot(rows, data.norms[0], color="#1f77b4", label="golden", **style)
        axes[0].plot(rows, data.norms[1], color=RED, ls="--", label="target", **style)
        axes[0].set_ylabel("L2 norm of the row")
        axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if data.channels is not None:
        g, t = data.channels
        ax = axes[-2]
        colors = ["#1f77b4", "#2ca02c", "#9467bd"]
        for c in range(g.shape[1]):
            col = colors[c % len(colors)]
            ax.plot(rows, g[:, c], color=col, label=f"golden [{c}]", **style)
            ax.plot(rows, t[:, c], color=col, ls="--", label=f"target [{c}]", **style)
        ax.set_ylabel("first channels")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax = axes[-1]
    ax.plot(rows, data.cosine, color="#444", **style)
    finite = np.where(np.isfinite(data.cosine), data.cosine, np.inf)
    if len(finite) and np.isfinite(finite.min()):
        worst = int(np.argmin(finite))
        ax.plot([rows[worst]], [data.cosine[worst]], "o", ms=10, color=RED)
        ax.annotate(
            f"worst row {rows[worst]}: cos {data.cosine[worst]:.4f}",
            (rows[worst], data.cosine[worst]),
            xytext=(_dx(ax, rows[worst]), 6),
            ha="right" if _dx(ax, rows[worst]) < 0 else "left",
            textcoords="offset points",
            color=RED,
            fontsize=9,
        )
    ax.set_ylabel("cosine golden vs target")
    ax.set_xlabel("row (token) of " + "x".join(map(str, data.shape)))
    for a in axes:
        a.grid(alpha=0.3)
    axes[0].set_title(short(data.name, 100), parse_math=False, loc="left")
    return _png(fig)
