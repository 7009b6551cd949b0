"""Charts: one fixed style per capability type, whole-numbered iterations, weak types stand out,
and the ablation's paired plot with its mean paired difference and t-interval."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_hex

from dpe import plots
from dpe.intervals import mean_interval
from dpe.taxonomy import CapabilityType

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[plt.Figure]:
    """The figures the chart functions draw, kept open for inspection instead of encoded."""
    figures: list[plt.Figure] = []

    def keep(figure: plt.Figure) -> bytes:
        figures.append(figure)
        return b""

    monkeypatch.setattr(plots, "_png", keep)
    yield figures
    for figure in figures:
        plt.close(figure)


def test_every_capability_type_has_its_own_colour_and_marker() -> None:
    assert set(plots.TYPE_STYLES) == {t.value for t in CapabilityType}
    assert len({s.colour for s in plots.TYPE_STYLES.values()}) == len(CapabilityType)
    assert len({s.marker for s in plots.TYPE_STYLES.values()}) == len(CapabilityType)


def test_type_lines_keep_their_style_and_weak_types_stand_out(drawn: list[plt.Figure]) -> None:
    series = {t.value: {0: 0.4, 1: 0.5, 2: 0.6} for t in CapabilityType}
    plots.lines_by_iteration(series, "accuracy", "accuracy", weak={"map"})
    axis = drawn[0].axes[0]
    lines = {line.get_label(): line for line in axis.get_lines()}
    for name, style in plots.TYPE_STYLES.items():
        assert to_hex(lines[name].get_color()) == style.colour and lines[name].get_marker() == style.marker
    assert lines["map"].get_linewidth() > lines["medical"].get_linewidth()
    bold = {text.get_text() for text in axis.get_legend().get_texts() if text.get_fontweight() == "bold"}
    assert bold == {"map"}


def test_iterations_are_whole_numbers(drawn: list[plt.Figure]) -> None:
    plots.lines_by_iteration({"overall": {0: 0.2, 1: 0.3, 2: 0.35}}, "scores", "score")
    drawn[0].canvas.draw()
    ticks = [t for t in drawn[0].axes[0].get_xticks() if -0.5 <= t <= 2.5]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_bars_and_mixture_use_the_type_colours(drawn: list[plt.Figure]) -> None:
    plots.accuracy_bars({"map": 0.3, "medical": 0.8})
    plots.stacked_shares({1: {"map": 0.7, "medical": 0.3}}, weak={"map"})
    bars = {to_hex(p.get_facecolor()) for p in drawn[0].axes[0].patches}
    stacked = {to_hex(p.get_facecolor()) for p in drawn[1].axes[0].patches}
    assert bars == stacked == {plots.TYPE_STYLES["map"].colour, plots.TYPE_STYLES["medical"].colour}
    legend = [(t.get_text(), t.get_fontweight()) for t in drawn[1].axes[0].get_legend().get_texts()]
    assert legend == [("medical", "normal"), ("map", "bold")]


def test_changes_by_type_labels_each_change_with_its_interval(drawn: list[plt.Figure]) -> None:
    plots.changes_by_type({"map": (0.1, (-0.02, 0.22)), "medical": (-0.05, None)}, "change", "M2 - M0", weak={"medical"})
    labels = {t.get_text(): t.get_fontweight() for t in drawn[0].axes[0].get_yticklabels()}
    assert labels == {"map  +0.100 [-0.020, +0.220]": "normal", "medical  -0.050": "bold"}


def test_paired_ablation_draws_seeds_and_the_mean_paired_difference(drawn: list[plt.Figure]) -> None:
    diagnosis, uniform = [0.52, 0.55, 0.50, 0.58], [0.50, 0.51, 0.49, 0.53]
    scores = {"overall": {"diagnosis": diagnosis, "uniform": uniform}, "map": {"diagnosis": [0.4] * 4, "uniform": [0.3, 0.35, 0.4, 0.3]}}
    plots.paired_ablation(scores)
    figure = drawn[0]
    overall, _, forest = figure.axes
    seed_lines = [line for line in overall.get_lines() if line.get_label() != "mean"]
    assert [tuple(line.get_ydata()) for line in seed_lines] == list(zip(diagnosis, uniform, strict=True))
    assert [t.get_text() for t in overall.get_xticklabels()] == ["diagnosis", "uniform"]
    mean, low, high = mean_interval([a - b for a, b in zip(diagnosis, uniform, strict=True)])
    assert f"overall  {mean:+.3f} [{low:+.3f}, {high:+.3f}]" in {t.get_text() for t in forest.get_yticklabels()}


def test_paired_ablation_gives_no_interval_from_one_seed_and_encodes_a_png() -> None:
    assert plots.paired_ablation({"overall": {"diagnosis": [0.5], "uniform": [0.4]}}).startswith(PNG)


@pytest.mark.parametrize(
    "scores",
    [
        {},
        {"overall": {"diagnosis": [0.5], "uniform": [0.4], "third": [0.3]}},
        {"overall": {"diagnosis": [0.5, 0.6], "uniform": [0.4]}},
        {"overall": {"diagnosis": [], "uniform": []}},
        {"overall": {"diagnosis": [0.5], "uniform": [0.4]}, "map": {"uniform": [0.4], "diagnosis": [0.5]}},
    ],
)
def test_paired_ablation_refuses_scores_that_do_not_pair(scores: dict[str, dict[str, list[float]]]) -> None:
    with pytest.raises(ValueError):
        plots.paired_ablation(scores)


def test_every_chart_encodes_a_png() -> None:
    assert plots.lines_by_iteration({"map": {0: 0.1, 1: 0.2}}, "t", "y", weak={"map"}).startswith(PNG)
    assert plots.changes_by_type({"map": (0.1, (0.0, 0.2))}, "t", "x").startswith(PNG)
