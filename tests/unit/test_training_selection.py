"""Training-set selection: window, mixture balance, nearest fill, redistribution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpe.training_selection import Reason, Scored, select, window_distance
from dpe.taxonomy import CapabilityType

M, C, G = CapabilityType.map, CapabilityType.chart_graph, CapabilityType.geometric


def sample(i: int, capability: CapabilityType, correct: int, readable: int = 9) -> Scored:
    return Scored(f"{capability.value}-{i}", capability, correct, readable, 9)


@pytest.mark.parametrize("correct, inside", [(2, False), (3, True), (5, True), (7, True), (8, False), (9, False)])
def test_window_is_inclusive_at_k_over_nine(correct: int, inside: bool) -> None:
    assert (window_distance(sample(0, M, correct).pass_rate, 0.3, 0.8) == 0.0) is inside


def test_no_readable_answer_means_no_pass_rate() -> None:
    empty = sample(0, M, 0, readable=0)
    assert empty.pass_rate is None and window_distance(None, 0.3, 0.8) == float("inf")
    assert select([empty], {M: 1.0}, 1, 0.3, 0.8).chosen == {}


def test_pass_rate_ignores_unreadable_answers() -> None:
    assert sample(0, M, 3, readable=6).pass_rate == 0.5


def test_balanced_to_the_mixture() -> None:
    samples = [sample(i, M, 5) for i in range(50)] + [sample(i, C, 5) for i in range(50)]
    chosen = select(samples, {M: 0.75, C: 0.25}, 20, 0.3, 0.8)
    by_type = chosen.by_type(samples)
    assert by_type["map"]["window"] == 15 and by_type["chart_graph"]["window"] == 5
    assert len(chosen.chosen) == 20


def test_short_types_fill_from_their_nearest_pass_rates() -> None:
    samples = [sample(0, M, 4), sample(1, M, 9), sample(2, M, 8), sample(3, M, 0), sample(4, M, 1)]
    chosen = select(samples, {M: 1.0}, 3, 0.3, 0.8)
    assert chosen.chosen == {"map-0": Reason.window, "map-2": Reason.filled, "map-4": Reason.filled}


def test_in_window_samples_nearest_the_centre_go_first() -> None:
    samples = [sample(0, M, 3), sample(1, M, 5), sample(2, M, 7)]
    assert list(select(samples, {M: 1.0}, 1, 0.3, 0.8).chosen) == ["map-1"]


def test_slots_a_type_cannot_fill_go_to_the_others() -> None:
    samples = [sample(0, G, 5)] + [sample(i, M, 5) for i in range(10)]
    chosen = select(samples, {G: 0.5, M: 0.5}, 6, 0.3, 0.8)
    reasons = chosen.by_type(samples)
    assert reasons["geometric"]["window"] == 1
    assert reasons["map"]["window"] == 3 and reasons["map"]["redistributed"] == 2


@given(
    st.lists(st.tuples(st.sampled_from([M, C, G]), st.integers(0, 9), st.integers(0, 9)), max_size=80),
    st.integers(0, 100),
)
def test_selection_size_and_uniqueness(rows: list[tuple[CapabilityType, int, int]], target: int) -> None:
    samples = [sample(i, t, min(c, r), r) for i, (t, c, r) in enumerate(rows)]
    chosen = select(samples, {M: 0.5, C: 0.3, G: 0.2}, target, 0.3, 0.8)
    eligible = sum(1 for s in samples if s.pass_rate is not None)
    assert len(chosen.chosen) == min(target, eligible)
    assert all(s.pass_rate is not None for s in samples if s.id in chosen.chosen)
