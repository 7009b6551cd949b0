"""PNG charts for diagnosis reports, the run report and the ablation. Each function returns PNG bytes.

matplotlib runs with the Agg backend (no display) and every chart is drawn from plain mappings,
so stages and the report builder decide what to show and this module only draws it. Every chart
that draws capability types gives each type the same colour and marker (`TYPE_STYLES`), so a type
is recognised across the charts of a report without reading its legend twice; weak types (the
caller decides which) are drawn with thick lines and bold labels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import matplotlib
from matplotlib.axes import Axes
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from dpe.intervals import mean_interval
from dpe.taxonomy import CapabilityType

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use(): pyplot fixes the backend when first imported

_DPI = 110
_WEAK_WIDTH = 3.2
_LINE_WIDTH = 1.3


class Style(NamedTuple):
    colour: str
    marker: str


_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939",
)  # fmt: skip
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")

TYPE_STYLES: dict[str, Style] = {t.value: Style(c, m) for t, c, m in zip(CapabilityType, _PALETTE, _MARKERS, strict=True)}
"""One colour and one marker per capability type, fixed by the taxonomy's canonical order."""

OTHER_STYLE = Style("#000000", "o")
"""Whatever is not a capability type (the overall score): black, a colour no type has."""

Change = tuple[float, tuple[float, float] | None]
"""A change (of accuracy, of score) and its 95% interval, None where there is none."""


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=_DPI)
    plt.close(figure)
    return buffer.getvalue()


def _bold_weak(labels: Sequence[Text], names: Sequence[str], weak: Collection[str]) -> None:
    """Bold the labels of weak names, so they stand out wherever the eye lands first."""
    for label, name in zip(labels, names, strict=True):
        if name in weak:
            label.set_fontweight("bold")


def accuracy_bars(
    accuracy: Mapping[str, float], intervals: Mapping[str, tuple[float, float]] | None = None, title: str = "Probe accuracy by capability type"
) -> bytes:
    """Horizontal bars of per-type accuracy in each type's colour, with interval whiskers when given."""
    names = sorted(accuracy, key=lambda n: accuracy[n])
    values = [accuracy[n] for n in names]
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    errors = None
    if intervals:
        errors = [
            [max(values[i] - intervals[n][0], 0.0) for i, n in enumerate(names)],
            [max(intervals[n][1] - values[i], 0.0) for i, n in enumerate(names)],
        ]
    colours = [TYPE_STYLES.get(n, OTHER_STYLE).colour for n in names]
    axis.barh(names, values, xerr=errors, color=colours, ecolor="#333333", capsize=3)
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
    series: Mapping[str, Mapping[int, float]],
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = (-0.02, 1.02),
    *,
    xlabel: str = "iteration",
    weak: Collection[str] = (),
) -> bytes:
    """One line per series over whole-numbered iterations (or steps): capability types in their own
    style, weak ones thick with bold legend labels."""
    figure, axis = plt.subplots(figsize=(8.5, 4.2))
    names = sorted(series)
    for name in names:
        points = sorted(series[name].items())
        style = TYPE_STYLES.get(name)
        axis.plot(
            [k for k, _ in points],
            [v for _, v in points],
            marker=style.marker if style else "o",
            color=style.colour if style else None,
            linewidth=_WEAK_WIDTH if name in weak else _LINE_WIDTH,
            label=name,
        )
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if ylim is not None:
        axis.set_ylim(*ylim)
    axis.set_title(title)
    if series:
        legend = axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="bold: weak" if weak else None)
        _bold_weak(legend.get_texts(), names, weak)
    return _png(figure)


def stacked_shares(shares: Mapping[int, Mapping[str, float]], title: str = "Mixture per iteration", weak: Collection[str] = ()) -> bytes:
    """Stacked bars: each iteration's mixture weights, each type in its own colour; the legend lists
    the types top to bottom as they are stacked, weak ones in bold."""
    iterations = sorted(shares)
    names = sorted({n for weights in shares.values() for n in weights})
    figure, axis = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(iterations)
    for name in names:
        heights = [shares[k].get(name, 0.0) for k in iterations]
        style = TYPE_STYLES.get(name)
        axis.bar([str(k) for k in iterations], heights, bottom=bottom, label=name, color=style.colour if style else None)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axis.set_xlabel("iteration")
    axis.set_ylabel("weight")
    axis.set_ylim(0, 1)
    axis.set_title(title)
    if names:
        handles, labels = axis.get_legend_handles_labels()
        legend = axis.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _bold_weak(legend.get_texts(), names[::-1], weak)
    return _png(figure)


def _forest(axis: Axes, changes: Mapping[str, Change], weak: Collection[str], xlabel: str) -> None:
    """One row per name, top to bottom in the given order: the change as a point in the name's style,
    its interval as a whisker, the value and interval in the row's label."""
    names = list(changes)[::-1]
    labels = []
    for row, name in enumerate(names):
        value, interval = changes[name]
        style = TYPE_STYLES.get(name, OTHER_STYLE)
        whisker = None if interval is None else [[value - interval[0]], [interval[1] - value]]
        axis.errorbar([value], [row], xerr=whisker, fmt=style.marker, color=style.colour, capsize=3, markersize=7, elinewidth=1.5)
        bounds = "" if interval is None else f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"
        labels.append(f"{name}  {value:+.3f}{bounds}")
    axis.axvline(0.0, color="#555555", linewidth=0.8, linestyle="--")
    axis.set_yticks(range(len(names)), labels, fontsize=8)
    _bold_weak(axis.get_yticklabels(), names, weak)
    axis.set_ylim(-0.7, len(names) - 0.3)
    axis.set_xlabel(xlabel)


def changes_by_type(changes: Mapping[str, Change], title: str, xlabel: str, weak: Collection[str] = ()) -> bytes:
    """Per-type change (e.g. final model against M0) with its 95% interval, weak types first and in bold."""
    names = sorted(changes, key=lambda n: (n not in weak, n))
    figure, axis = plt.subplots(figsize=(9, 0.38 * max(len(names), 1) + 1.6))
    _forest(axis, {n: changes[n] for n in names}, weak, xlabel)
    axis.set_title(title)
    return _png(figure)


def paired_ablation(scores: Mapping[str, Mapping[str, Sequence[float]]], title: str = "Ablation, paired by seed", columns: int = 4) -> bytes:
    """Both arms of an ablation, seed by seed, so a reader sees whether one arm wins on every seed or
    only on average.

    `scores` maps a metric (e.g. `overall` or a capability type) to the two arms' per-seed scores,
    e.g. {"overall": {"diagnosis": [...], "uniform": [...]}}; the i-th score of each arm is the same
    seed. Every metric has the same two arms, in the same order: A first, then B. One panel per
    metric joins each seed's score under A to its score under B; a last panel gives each metric's
    mean paired difference A - B with its 95% t-interval across seeds (no interval from one seed).
    """
    if not scores:
        raise ValueError("no metric to plot")
    arms = list(next(iter(scores.values())))
    if len(arms) != 2:
        raise ValueError(f"a paired plot needs exactly two arms, got {arms}")
    for metric, by_arm in scores.items():
        if list(by_arm) != arms:
            raise ValueError(f"metric {metric} has arms {list(by_arm)}, the others {arms}")
    lengths = {len(values) for by_arm in scores.values() for values in by_arm.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every arm of every metric needs one score per seed, got lists of {sorted(lengths)} scores")
    seeds = lengths.pop()
    first, second = arms
    columns = min(columns, len(scores))
    rows = math.ceil(len(scores) / columns)
    figure = plt.figure(figsize=(2.6 * columns + 1.5, 2.6 * rows + 0.35 * len(scores) + 1.6), layout="constrained")
    grid = figure.add_gridspec(rows + 1, columns, height_ratios=[2.6] * rows + [0.35 * len(scores) + 1.0])
    changes: dict[str, Change] = {}
    for index, (metric, by_arm) in enumerate(scores.items()):
        axis = figure.add_subplot(grid[index // columns, index % columns])
        for a, b in zip(by_arm[first], by_arm[second], strict=True):
            axis.plot([0, 1], [a, b], color="#999999", marker="o", markersize=4, linewidth=1)
        differences = [a - b for a, b in zip(by_arm[first], by_arm[second], strict=True)]
        if len(differences) > 1:
            mean, low, high = mean_interval(differences)
            changes[metric] = (mean, (low, high))
        else:
            changes[metric] = (differences[0], None)
        means = [sum(by_arm[arm]) / len(by_arm[arm]) for arm in arms]
        style = TYPE_STYLES.get(metric, OTHER_STYLE)
        axis.plot([0, 1], means, color=style.colour, marker=style.marker, linewidth=2.5, markersize=8, label="mean")
        axis.set_xticks([0, 1], arms, fontsize=8)
        axis.set_xlim(-0.3, 1.3)
        axis.tick_params(axis="y", labelsize=7)
        axis.set_title(metric, fontsize=9)
    _forest(
        figure.add_subplot(grid[rows, :]),
        changes,
        (),
        f"{first} - {second}: mean paired difference over {seeds} seed(s), 95% t-interval",
    )
    figure.suptitle(title)
    return _png(figure)
