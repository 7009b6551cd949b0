"""PNG charts for diagnosis reports and the run report. Each function returns PNG bytes.

matplotlib runs with the Agg backend (no display) and every chart is drawn from plain mappings,
so stages and the report builder decide what to show and this module only draws it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

_DPI = 110


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=_DPI)
    plt.close(figure)
    return buffer.getvalue()


def accuracy_bars(
    accuracy: Mapping[str, float], intervals: Mapping[str, tuple[float, float]] | None = None, title: str = "Probe accuracy by capability type"
) -> bytes:
    """Horizontal bars of per-type accuracy, with interval whiskers when given."""
    names = sorted(accuracy, key=lambda n: accuracy[n])
    values = [accuracy[n] for n in names]
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    errors = None
    if intervals:
        errors = [
            [max(values[i] - intervals[n][0], 0.0) for i, n in enumerate(names)],
            [max(intervals[n][1] - values[i], 0.0) for i, n in enumerate(names)],
        ]
    axis.barh(names, values, xerr=errors, color="#4c72b0", ecolor="#333333", capsize=3)
    axis.set_xlim(0, 1)
    axis.set_xlabel("accuracy")
    axis.set_title(title)
    return _png(figure)


def error_heatmap(counts: Mapping[str, Mapping[str, int]], error_types: Sequence[str], title: str = "Errors by type") -> bytes:
    """Capability types (rows) by error types (columns), cell = number of failures."""
    rows = sorted(counts)
    grid = [[counts[r].get(e, 0) for e in error_types] for r in rows]
    figure, axis = plt.subplots(figsize=(1.1 * len(error_types) + 3, 0.4 * max(len(rows), 1) + 1.8))
    image = axis.imshow(grid or [[0] * len(error_types)], cmap="Reds", aspect="auto")
    axis.set_xticks(range(len(error_types)), [e.replace("_", "\n") for e in error_types], fontsize=8)
    axis.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value:
                axis.text(j, i, str(value), ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=axis)
    axis.set_title(title)
    return _png(figure)


def lines_by_iteration(
    series: Mapping[str, Mapping[int, float]], title: str, ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.0)
) -> bytes:
    """One line per series over iterations (per-type accuracy, mixture weights, scores)."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for name in sorted(series):
        points = sorted(series[name].items())
        axis.plot([k for k, _ in points], [v for _, v in points], marker="o", label=name)
    axis.set_xlabel("iteration")
    axis.set_ylabel(ylabel)
    if ylim is not None:
        axis.set_ylim(*ylim)
    axis.set_title(title)
    if series:
        axis.legend(fontsize=7, loc="best")
    return _png(figure)


def stacked_shares(shares: Mapping[int, Mapping[str, float]], title: str = "Mixture per iteration") -> bytes:
    """Stacked bars: each iteration's mixture weights."""
    iterations = sorted(shares)
    names = sorted({n for weights in shares.values() for n in weights})
    figure, axis = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(iterations)
    for name in names:
        heights = [shares[k].get(name, 0.0) for k in iterations]
        axis.bar([str(k) for k in iterations], heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axis.set_xlabel("iteration")
    axis.set_ylabel("weight")
    axis.set_ylim(0, 1)
    axis.set_title(title)
    if names:
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(figure)
