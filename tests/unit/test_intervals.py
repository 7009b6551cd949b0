"""95% intervals: Wilson for a proportion, Newcombe for a change of proportions, Student t for a mean."""

from __future__ import annotations

import pytest

from dpe.intervals import Z95, mean_interval, proportion_change, t_quantile, wilson


def test_wilson_matches_published_values_and_stays_inside_zero_one() -> None:
    assert wilson(0.0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson(1.0, 10) == (pytest.approx(0.7225, abs=1e-4), pytest.approx(1.0))
    assert wilson(0.5, 100) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))


@pytest.mark.parametrize(("p", "n"), [(0.5, 0), (0.5, -1), (1.2, 10), (-0.1, 10)])
def test_wilson_refuses_what_is_not_a_proportion(p: float, n: float) -> None:
    with pytest.raises(ValueError):
        wilson(p, n)


def test_proportion_change_is_newcombes_hybrid_score_interval() -> None:
    """Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 against 48/80, method 10."""
    low, high = proportion_change(56 / 70, 70, 48 / 80, 80)
    assert (low, high) == (pytest.approx(0.0524, abs=1e-4), pytest.approx(0.3339, abs=1e-4))


def test_proportion_change_holds_the_change_and_narrows_with_more_items() -> None:
    few = proportion_change(0.6, 20, 0.5, 20)
    many = proportion_change(0.6, 2000, 0.5, 2000)
    assert few[0] < 0.1 < few[1] and many[0] < 0.1 < many[1]
    assert many[1] - many[0] < few[1] - few[0]
    assert proportion_change(0.5, 30, 0.5, 30)[0] == pytest.approx(-proportion_change(0.5, 30, 0.5, 30)[1])


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.706), (2, 4.303), (3, 3.182), (10, 2.228), (30, 2.042), (100, 1.984)])
def test_t_quantile_matches_the_table(df: int, quantile: float) -> None:
    assert t_quantile(df) == pytest.approx(quantile, abs=1e-3)


def test_t_quantile_tends_to_the_normal_and_refuses_no_degrees_of_freedom() -> None:
    assert t_quantile(100_000) == pytest.approx(Z95, abs=1e-4)
    with pytest.raises(ValueError):
        t_quantile(0)


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantile_matches_the_published_table(df: int, quantile: float) -> None:
    assert t_quantile(df) == pytest.approx(quantile, abs=1e-3)


def test_mean_interval_needs_two_values() -> None:
    with pytest.raises(ValueError):
        mean_interval([0.5])
