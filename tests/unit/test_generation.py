"""Pure parts of generation: quota split, seed draws, the per-type plan, task ids, format checks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dpe.generation import (
    LAST_COVERED,
    QuotaPlan,
    failure_rate,
    multiple_choice_problem,
    parse_task_id,
    seed_positions,
    spares,
    split_quotas,
    task_id,
)
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.world import generate

TYPES = list(CapabilityType)


@given(st.dictionaries(st.sampled_from(TYPES), st.integers(0, 400)), st.integers(1, 9))
def test_shard_quotas_add_up_exactly(quotas: dict[CapabilityType, int], shards: int) -> None:
    parts = split_quotas(quotas, shards)
    assert len(parts) == shards
    for capability in TYPES:
        shares = [p[capability] for p in parts]
        assert sum(shares) == quotas.get(capability, 0)
        assert max(shares) - min(shares) <= 1
    totals = [sum(p.values()) for p in parts]
    assert max(totals) - min(totals) <= len(TYPES)


def test_small_quotas_spread_over_shards() -> None:
    parts = split_quotas({t: 1 for t in TYPES}, 4)
    assert sorted(sum(p.values()) for p in parts) == [3, 3, 3, 3]


@given(st.integers(1, 300), st.integers(1, 40), st.integers(1, 5), st.integers(1, 4))
def test_seeds_never_repeat_until_the_pool_is_used_up(pool: int, count: int, shards: int, iterations: int) -> None:
    drawn: dict[int, int] = {}
    start = 0
    for _ in range(iterations):
        for shard in range(shards):
            for j, position in enumerate(seed_positions(pool, start, count, shard, shards, run_seed=7)):
                drawn[start + shard + j * shards] = position
        start += count * shards
    assert all(0 <= p < pool for p in drawn.values())
    for epoch_start in range(0, len(drawn), pool):
        one_pass = [drawn[i] for i in range(epoch_start, min(epoch_start + pool, len(drawn)))]
        assert len(set(one_pass)) == len(one_pass)


def test_seed_draw_is_not_the_first_rows() -> None:
    assert seed_positions(1000, 0, 10, 0, 1, run_seed=1) != list(range(10))


def test_plan_never_puts_more_in_flight_than_a_type_needs() -> None:
    plan = QuotaPlan.from_quotas({CapabilityType.map: 2, CapabilityType.medical: 1})
    started = []
    while (capability := plan.start_next()) is not None:
        started.append(capability)
    assert sorted(started) == sorted([CapabilityType.map, CapabilityType.map, CapabilityType.medical])


def test_plan_gives_up_on_a_type_after_its_attempt_budget() -> None:
    plan = QuotaPlan.from_quotas({CapabilityType.map: 1})
    budget = plan.types[CapabilityType.map].budget
    for _ in range(budget):
        assert plan.next_type() is CapabilityType.map
        plan.types[CapabilityType.map].attempts += 1
    assert plan.next_type() is None and plan.done() and plan.shortfall() == {CapabilityType.map: 1}
    assert plan.divergent(CapabilityType.map)


def test_task_ids_round_trip() -> None:
    value = task_id(3, 1, CapabilityType.everyday_object, 42)
    assert parse_task_id(value) == (3, 1, CapabilityType.everyday_object, 42)


def test_multiple_choice_checks() -> None:
    (record,) = generate([CapabilityType.diagram], 1, 1, image_size=56, formats=[QuestionFormat.multiple_choice])
    assert multiple_choice_problem(record) is None
    broken = record.model_construct(**{**record.__dict__, "question": "No options here"})
    assert "at least two options" in (multiple_choice_problem(broken) or "")
    wrong = record.model_construct(**{**record.__dict__, "answer": "Q"})
    assert "not one of the options" in (multiple_choice_problem(wrong) or "")


def test_failure_rate_starts_from_the_prior_and_is_capped() -> None:
    assert failure_rate(0, 0) == 0.1
    assert failure_rate(9, 90) == 0.1
    assert failure_rate(1, 190) == 0.01
    assert failure_rate(50, 50) == 0.5


@given(st.integers(LAST_COVERED + 1, 500), st.floats(0.0, 0.5))
def test_spares_are_the_fewest_that_cover_the_expected_failures(remaining: int, rate: float) -> None:
    n = spares(remaining, rate)
    assert (remaining + n) * (1 - rate) >= remaining - 1e-6
    assert n == 0 or (remaining + n - 1) * (1 - rate) < remaining


def test_the_last_samples_of_a_type_each_have_a_spare() -> None:
    assert [spares(remaining, 0.01) for remaining in range(LAST_COVERED + 2)] == [0, 1, 2, 1]
    assert spares(2, 0.0) == 0, "no spares at all when they are switched off"


def test_spares_start_only_once_every_need_is_covered() -> None:
    plan = QuotaPlan.from_quotas({CapabilityType.map: 20, CapabilityType.medical: 2})
    started = []
    while (capability := plan.start_next(0.1)) is not None:
        started.append(capability)
    assert started[:22].count(CapabilityType.map) == 20, "needed tasks first"
    assert sorted(started[22:]) == sorted([CapabilityType.map] * 3 + [CapabilityType.medical] * 2), "10% more, the last two covered"
    assert plan.next_type(0.0) is None


def test_a_task_at_risk_gets_a_spare_whatever_the_failure_rate() -> None:
    plan = QuotaPlan.from_quotas({CapabilityType.map: 5, CapabilityType.medical: 5})
    for kind in plan.types.values():
        kind.in_flight = kind.attempts = 5
    assert plan.next_type(0.0) is None
    plan.types[CapabilityType.medical].at_risk = 1
    assert plan.next_type(0.0) is CapabilityType.medical
    plan.types[CapabilityType.medical].in_flight += 1
    assert plan.next_type(0.0) is None, "one spare per task at risk"
    plan.types[CapabilityType.medical].accepted = 5
    assert plan.types[CapabilityType.medical].spare_room(0.0) == 0, "none once the quota is full"


def test_a_failure_is_covered_by_a_running_spare() -> None:
    plan = QuotaPlan.from_quotas({CapabilityType.map: 2})
    kind = plan.types[CapabilityType.map]
    for _ in range(3):
        assert plan.next_type(0.1) is CapabilityType.map
        kind.in_flight += 1
        kind.attempts += 1
    kind.in_flight -= 1  # one fails
    assert kind.need == 0, "the spare already stands in for it"
    assert plan.next_type(0.1) is CapabilityType.map, "and a new spare tops the cover up"
    kind.in_flight -= 1
    kind.accepted += 1
    assert not plan.full(CapabilityType.map)
    kind.accepted += 1
    assert plan.full(CapabilityType.map) and plan.next_type(0.1) is None
