"""Mixture weights and quotas: the paper's step function, the smoothed policy, largest remainder."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpe.mixture import (
    DEFAULT_RAW_WEIGHTS,
    DEFAULT_THRESHOLDS,
    MixturePolicy,
    TypeStats,
    allocate_quotas,
    floor_quotas,
    mixture_weights,
    step_weight,
)
from dpe.taxonomy import CapabilityType

C = CapabilityType

WORKED_EXAMPLE = {
    C.chart_graph: TypeStats(correct=60, total=100),
    C.geometric: TypeStats(correct=80, total=100),
    C.natural_scene: TypeStats(correct=95, total=100),
}


# --- TypeStats ---------------------------------------------------------------------------------


def test_type_stats_accuracy() -> None:
    assert TypeStats(correct=3, total=4).accuracy == 0.75


@pytest.mark.parametrize(("correct", "total"), [(-1, 3), (0, -1), (4, 3)])
def test_type_stats_rejects_impossible_counts(correct: int, total: int) -> None:
    with pytest.raises(ValueError, match=str(correct)):
        TypeStats(correct=correct, total=total)


def test_type_stats_without_items_has_no_accuracy() -> None:
    with pytest.raises(ValueError, match="no probe items"):
        _ = TypeStats(correct=0, total=0).accuracy


# --- step function -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accuracy", "raw"),
    [
        (0.0, 2.0),
        (0.6999, 2.0),
        (0.70, 1.5),
        (0.7499, 1.5),
        (0.75, 1.0),
        (0.8499, 1.0),
        (0.85, 0.8),
        (0.8999, 0.8),
        (0.90, 0.5),
        (1.0, 0.5),
    ],
)
def test_step_weight_boundaries(accuracy: float, raw: float) -> None:
    assert step_weight(accuracy) == raw


@pytest.mark.parametrize(
    ("correct", "total", "raw"),
    [(7, 10, 1.5), (14, 20, 1.5), (3, 4, 1.0), (17, 20, 0.8), (9, 10, 0.5), (69, 100, 2.0)],
)
def test_step_boundaries_hit_exactly_from_counts(correct: int, total: int, raw: float) -> None:
    assert step_weight(TypeStats(correct, total).accuracy) == raw


def test_step_weight_with_custom_buckets() -> None:
    assert step_weight(0.4, thresholds=(0.5,), raw_weights=(3.0, 1.0)) == 3.0
    assert step_weight(0.5, thresholds=(0.5,), raw_weights=(3.0, 1.0)) == 1.0


@pytest.mark.parametrize("accuracy", [-0.01, 1.01, math.nan])
def test_step_weight_rejects_accuracy_outside_unit_interval(accuracy: float) -> None:
    with pytest.raises(ValueError, match="accuracy must lie in"):
        step_weight(accuracy)


@pytest.mark.parametrize(
    ("thresholds", "raw_weights", "message"),
    [
        ((0.75, 0.70, 0.85, 0.90), DEFAULT_RAW_WEIGHTS, r"strictly ascending.*0\.75, 0\.7"),
        ((0.70, 0.70, 0.85, 0.90), DEFAULT_RAW_WEIGHTS, "strictly ascending"),
        (DEFAULT_THRESHOLDS, (2.0, 1.0), "need len.*5 raw weights, got 2"),
        (DEFAULT_THRESHOLDS, (2.0, 1.5, 0.0, 0.8, 0.5), r"positive and finite.*0\.0"),
        (DEFAULT_THRESHOLDS, (2.0, 1.5, -1.0, 0.8, 0.5), r"positive and finite.*-1\.0"),
    ],
)
def test_step_parameters_are_validated(
    thresholds: tuple[float, ...], raw_weights: tuple[float, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        step_weight(0.5, thresholds=thresholds, raw_weights=raw_weights)
    with pytest.raises(ValueError, match=message):
        mixture_weights(WORKED_EXAMPLE, thresholds=thresholds, raw_weights=raw_weights)


# --- mixture weights ---------------------------------------------------------------------------


def test_worked_example_weights() -> None:
    weights = mixture_weights(WORKED_EXAMPLE)
    assert weights == {
        C.geometric: pytest.approx(2 / 7),
        C.chart_graph: pytest.approx(4 / 7),
        C.natural_scene: pytest.approx(1 / 7),
    }
    assert f"{weights[C.chart_graph]:.4f}" == "0.5714"


def test_weights_are_normalised_and_in_canonical_order() -> None:
    stats = {t: TypeStats(correct=i, total=12) for i, t in enumerate(reversed(list(C)))}
    weights = mixture_weights(stats)
    assert list(weights) == list(C)
    assert math.fsum(weights.values()) == pytest.approx(1.0)


def test_types_without_probe_items_are_left_out() -> None:
    weights = mixture_weights({**WORKED_EXAMPLE, C.medical: TypeStats(0, 0)})
    assert C.medical not in weights


def test_policy_may_be_given_as_string() -> None:
    from_string = mixture_weights(WORKED_EXAMPLE, "smoothed")  # type: ignore[arg-type]
    assert from_string == mixture_weights(WORKED_EXAMPLE, MixturePolicy.smoothed)
    with pytest.raises(ValueError, match="'bogus'"):
        mixture_weights(WORKED_EXAMPLE, "bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", list(MixturePolicy))
def test_no_observed_type_is_an_error(policy: MixturePolicy) -> None:
    with pytest.raises(ValueError, match=f"no capability type.*{policy}"):
        mixture_weights({C.map: TypeStats(0, 0)}, policy)


def test_step_policy_lets_one_failed_probe_dominate() -> None:
    weights = mixture_weights({C.map: TypeStats(0, 1), C.geometric: TypeStats(95, 100)})
    assert weights[C.map] == pytest.approx(0.8)


# --- smoothed policy ---------------------------------------------------------------------------

STRONG_MODEL_WITH_ONE_STRAY_MISS = {
    C.geometric: TypeStats(correct=90, total=100),
    C.natural_scene: TypeStats(correct=45, total=50),
    C.chart_graph: TypeStats(correct=0, total=1),
}


def test_smoothed_drops_types_below_min_count() -> None:
    weights = mixture_weights(STRONG_MODEL_WITH_ONE_STRAY_MISS, MixturePolicy.smoothed)
    assert C.chart_graph not in weights
    assert math.fsum(weights.values()) == pytest.approx(1.0)


def test_smoothed_shrinks_a_single_failed_probe_far_below_step() -> None:
    step = mixture_weights(STRONG_MODEL_WITH_ONE_STRAY_MISS)
    smoothed = mixture_weights(
        STRONG_MODEL_WITH_ONE_STRAY_MISS, MixturePolicy.smoothed, min_count=1
    )
    assert step[C.chart_graph] == pytest.approx(2 / 3)
    assert smoothed[C.chart_graph] < 0.6 * step[C.chart_graph]


def test_smoothed_keeps_a_well_sampled_failure_heavy() -> None:
    stats = {**STRONG_MODEL_WITH_ONE_STRAY_MISS, C.medical: TypeStats(correct=0, total=50)}
    step = mixture_weights(stats)
    smoothed = mixture_weights(stats, MixturePolicy.smoothed)
    assert smoothed[C.medical] >= step[C.medical]
    assert smoothed[C.medical] == max(smoothed.values())


def test_smoothed_without_prior_or_minimum_is_the_step_policy() -> None:
    smoothed = mixture_weights(
        STRONG_MODEL_WITH_ONE_STRAY_MISS, MixturePolicy.smoothed, min_count=1, prior_strength=0
    )
    assert smoothed == mixture_weights(STRONG_MODEL_WITH_ONE_STRAY_MISS)


def test_smoothed_is_deterministic_and_order_independent() -> None:
    stats = STRONG_MODEL_WITH_ONE_STRAY_MISS
    forward = mixture_weights(stats, MixturePolicy.smoothed, min_count=1)
    backward = mixture_weights(dict(reversed(stats.items())), MixturePolicy.smoothed, min_count=1)
    assert forward == backward
    assert list(forward) == list(backward)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_count": 0}, "min_count must be at least 1, got 0"),
        ({"prior_strength": -1.0}, r"prior_strength must be finite and >= 0, got -1\.0"),
        ({"prior_strength": math.inf}, "prior_strength must be finite and >= 0, got inf"),
    ],
)
def test_smoothed_parameters_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mixture_weights(WORKED_EXAMPLE, MixturePolicy.smoothed, **kwargs)  # type: ignore[arg-type]


# --- quotas ------------------------------------------------------------------------------------


def test_worked_example_quotas_largest_remainder_versus_paper_floor() -> None:
    weights = mixture_weights(WORKED_EXAMPLE)
    assert allocate_quotas(weights, 1000) == {
        C.geometric: 286,
        C.chart_graph: 571,
        C.natural_scene: 143,
    }
    quotas, crumbs = floor_quotas(weights, 1000)
    assert quotas == {C.geometric: 285, C.chart_graph: 571, C.natural_scene: 142}
    assert crumbs == 2


def test_floor_quotas_drop_types_that_round_to_zero() -> None:
    quotas, crumbs = floor_quotas({C.map: 0.999, C.mixed: 0.001}, 100)
    assert quotas == {C.map: 99}
    assert crumbs == 1


def test_unnormalised_weights_are_accepted() -> None:
    assert allocate_quotas({C.map: 2.0, C.mixed: 6.0}, 8) == {C.map: 2, C.mixed: 6}


def test_equal_remainders_go_to_the_larger_weight() -> None:
    assert allocate_quotas({C.map: 3.0, C.mixed: 5.0}, 4) == {C.map: 1, C.mixed: 3}


def test_equal_weights_break_ties_in_canonical_order() -> None:
    quotas = allocate_quotas({C.mixed: 1.0, C.map: 1.0, C.geometric: 1.0}, 2)
    assert quotas == {C.geometric: 1, C.map: 1, C.mixed: 0}


def test_zero_weight_types_are_listed_with_zero_quota_without_exploration() -> None:
    assert allocate_quotas({C.map: 1.0, C.mixed: 0.0}, 5) == {C.map: 5, C.mixed: 0}


def test_exploration_share_goes_to_unobserved_types() -> None:
    quotas = allocate_quotas(mixture_weights(WORKED_EXAMPLE), 1000, exploration_share=0.1)
    assert sum(quotas.values()) == 1000
    observed = {C.chart_graph, C.geometric, C.natural_scene}
    assert sum(q for t, q in quotas.items() if t in observed) == 900
    assert quotas[C.chart_graph] == 514 and quotas[C.geometric] == 257
    assert quotas[C.natural_scene] == 129
    unobserved = [t for t in C if t not in observed]
    assert [quotas[t] for t in unobserved] == [12, 11, 11, 11, 11, 11, 11, 11, 11]
    assert list(quotas) == list(C)


def test_explore_types_narrow_the_exploration_set() -> None:
    quotas = allocate_quotas(
        {C.map: 1.0}, 100, exploration_share=0.25, explore_types=[C.medical, C.diagram]
    )
    assert quotas == {C.medical: 13, C.diagram: 12, C.map: 75}


def test_exploration_share_returns_to_observed_types_when_nothing_to_explore() -> None:
    weights = {t: 1.0 for t in C}
    assert allocate_quotas(weights, 120, exploration_share=0.5) == {t: 10 for t in C}
    assert allocate_quotas({C.map: 1.0}, 10, exploration_share=0.5, explore_types=[]) == {C.map: 10}


def test_exploration_pool_is_rounded_half_up() -> None:
    quotas = allocate_quotas({C.map: 1.0}, 5, exploration_share=0.5, explore_types=[C.mixed])
    assert quotas == {C.map: 2, C.mixed: 3}


def test_explore_type_with_positive_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="already have a positive weight: \\['map'\\]"):
        allocate_quotas({C.map: 1.0}, 10, exploration_share=0.1, explore_types=[C.map])


@pytest.mark.parametrize(
    ("weights", "total", "share", "message"),
    [
        ({C.map: -0.5}, 10, 0.0, r"weight for map must be finite and >= 0, got -0\.5"),
        ({C.map: math.nan}, 10, 0.0, "weight for map must be finite and >= 0, got nan"),
        ({C.map: math.inf}, 10, 0.0, "weight for map must be finite and >= 0, got inf"),
        ({C.map: 0.0, C.mixed: 0.0}, 10, 0.0, "at least one weight must be positive"),
        ({}, 10, 0.0, "at least one weight must be positive"),
        ({C.map: 1.0}, -1, 0.0, "total must be >= 0, got -1"),
        ({C.map: 1.0}, 10, 1.0, r"exploration_share must lie in \[0, 1\), got 1\.0"),
        ({C.map: 1.0}, 10, -0.1, r"exploration_share must lie in \[0, 1\), got -0\.1"),
    ],
)
def test_allocate_quotas_validation(
    weights: dict[CapabilityType, float], total: int, share: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        allocate_quotas(weights, total, exploration_share=share)


@pytest.mark.parametrize(
    ("weights", "total", "message"),
    [
        ({C.map: -1.0}, 10, r"weight for map must be finite and >= 0, got -1\.0"),
        ({C.map: 0.0}, 10, "at least one weight must be positive"),
        ({C.map: 1.0}, -3, "total must be >= 0, got -3"),
    ],
)
def test_floor_quotas_validation(
    weights: dict[CapabilityType, float], total: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        floor_quotas(weights, total)


weight_maps = st.dictionaries(
    st.sampled_from(list(C)), st.floats(min_value=0.0, max_value=10.0), min_size=1
).filter(lambda w: any(v > 0 for v in w.values()))


@given(
    weights=weight_maps,
    total=st.integers(min_value=0, max_value=5000),
    share=st.floats(min_value=0.0, max_value=0.99),
)
def test_quotas_sum_exactly_and_respect_weight_order(
    weights: dict[CapabilityType, float], total: int, share: float
) -> None:
    quotas = allocate_quotas(weights, total, exploration_share=share)
    assert sum(quotas.values()) == total
    assert all(q >= 0 for q in quotas.values())
    assert set(weights) <= set(quotas)
    observed = [t for t, w in weights.items() if w > 0]
    for a in observed:
        for b in observed:
            if weights[a] > weights[b]:
                assert quotas[a] >= quotas[b]


@given(weights=weight_maps, total=st.integers(min_value=0, max_value=5000))
def test_quotas_without_exploration_stay_within_one_of_the_exact_share(
    weights: dict[CapabilityType, float], total: int
) -> None:
    quotas = allocate_quotas(weights, total)
    norm = math.fsum(weights.values())
    for t, w in weights.items():
        assert abs(quotas[t] - total * w / norm) < 1 + 1e-9
    floors, crumbs = floor_quotas(weights, total)
    assert sum(floors.values()) + crumbs == total
    assert all(quotas[t] - floors[t] in (0, 1) for t in floors)
