"""Child names and labels: valid for every kind, stable across releases, and never shared by two inputs."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpe.spec import DNS_LABEL_PATTERN, StageName
from dpe_operator import names

RFC1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LONG_RUN = "evolution-run-of-qwen25-vl-7b-with-agents-on-h100-nodes-group-a"


def assert_child_name(name: str, limit: int = names.MAX_NAME_LENGTH) -> None:
    assert len(name) <= limit, name
    assert RFC1035.fullmatch(name), name


@dataclass(frozen=True)
class TestCase:
    __test__ = False

    name: str
    input: Callable[[], str]
    expected: str


NAME_CASES = [
    TestCase("iteration", lambda: names.iteration_name("demo", 3), "demo-i3"),
    TestCase("baseline iteration", lambda: names.iteration_name("demo", 0), "demo-i0"),
    TestCase("stage job", lambda: names.job_name("demo", 2, StageName.train, 1), "demo-i2-train-a1"),
    TestCase("retry job", lambda: names.job_name("demo", 2, StageName.diagnose, 3), "demo-i2-diagnose-a3"),
    TestCase("one shard", lambda: names.job_name("demo", 2, StageName.evaluate, 1, shard=3), "demo-i2-evaluate-a1-s3"),
    TestCase("merge job", lambda: names.job_name("demo", 2, StageName.score, 2, merge=True), "demo-i2-score-a2-merge"),
    TestCase("service shares the train job's name", lambda: names.service_name("demo", 2, 1), "demo-i2-train-a1"),
    TestCase("configmap", lambda: names.configmap_name("demo"), "demo-spec"),
    # Pinned hashed forms: a release that changed them would lose track of existing children.
    TestCase("long run, iteration", lambda: names.iteration_name(LONG_RUN, 1), "evolution-run-of-qwen25-vl-7b-with-agents-on-h100-dc124f8a19-i1"),
    TestCase("long run, job", lambda: names.job_name(LONG_RUN, 1, StageName.evaluate, 1, merge=True), "evolution-run-of-qwen25-v-642ddbec11-i1-evaluate-a1-merge"),
    TestCase("run starting with a digit", lambda: names.configmap_name("7b-run"), "dpe-7b-run-32ded5de25-spec"),
]


@pytest.mark.parametrize("case", NAME_CASES, ids=lambda case: case.name)
def test_child_names(case: TestCase) -> None:
    name = case.input()
    assert name == case.expected
    assert_child_name(name)


def test_job_names_leave_room_for_the_pod_hostname_index() -> None:
    name = names.job_name(LONG_RUN, 12, StageName.generate, 3, shard=11)
    assert_child_name(f"{name}-{names.MAX_COMPLETION_INDEX}")
    assert name.endswith("-i12-generate-a3-s11")


@pytest.mark.parametrize(
    "build",
    [
        lambda: names.iteration_name("demo", -1),
        lambda: names.job_name("demo", 1, StageName.train, -1),
        lambda: names.job_name("demo", 1, StageName.score, 1, shard=-2),
        lambda: names.job_name("demo", 1, StageName.score, 1, shard=0, merge=True),
        lambda: names.iteration_name("demo", 10**60),
    ],
    ids=["negative iteration", "negative attempt", "negative shard", "shard and merge", "suffix too long"],
)
def test_impossible_names_are_refused(build: Callable[[], str]) -> None:
    with pytest.raises(ValueError):
        build()


LABEL_CASES = [
    TestCase("valid value kept", lambda: names.label_value("qwen25vl-7b-dpe"), "qwen25vl-7b-dpe"),
    TestCase("empty value kept", lambda: names.label_value(""), ""),
    TestCase("too long", lambda: names.label_value("x" * 64), "x" * 52 + "-7ce100971f"),
    TestCase("bad edges", lambda: names.label_value("-odd/value."), "odd-value-d664d2f782"),
]


@pytest.mark.parametrize("case", LABEL_CASES, ids=lambda case: case.name)
def test_label_values(case: TestCase) -> None:
    value = case.input()
    assert value == case.expected
    assert len(value) <= names.MAX_NAME_LENGTH and LABEL_VALUE.fullmatch(value)


@dataclass(frozen=True)
class LabelsCase:
    name: str
    input: tuple[str, int | None, StageName | None, int | None]
    expected: dict[str, str]


MANAGED = {"app.kubernetes.io/managed-by": "dpe-operator"}
LABELS_CASES = [
    LabelsCase("run only", ("demo", None, None, None), {**MANAGED, "dpe.dev/run": "demo"}),
    LabelsCase("iteration", ("demo", 0, None, None), {**MANAGED, "dpe.dev/run": "demo", "dpe.dev/iteration": "0"}),
    LabelsCase(
        "stage attempt",
        ("demo", 4, StageName.score, 2),
        {**MANAGED, "dpe.dev/run": "demo", "dpe.dev/iteration": "4", "dpe.dev/stage": "score", "dpe.dev/attempt": "2"},
    ),
]


@pytest.mark.parametrize("case", LABELS_CASES, ids=lambda case: case.name)
def test_labels(case: LabelsCase) -> None:
    assert names.labels(*case.input) == case.expected


RUNS = st.from_regex(DNS_LABEL_PATTERN, fullmatch=True).filter(lambda run: len(run) <= names.MAX_NAME_LENGTH)
# Few characters and long names: runs share long prefixes and contain '-i1'-like pieces, which is
# where shortened or concatenated names would collide.
CLASHING_RUNS = st.text(alphabet="ai1-", min_size=1, max_size=names.MAX_NAME_LENGTH)
STAGES = st.sampled_from(list(StageName))
VARIANTS = st.sampled_from([None, "merge", 0, 1, 11])


def build_job_name(run: str, iteration: int, stage: StageName, attempt: int, variant: str | int | None) -> str:
    if variant == "merge":
        return names.job_name(run, iteration, stage, attempt, merge=True)
    return names.job_name(run, iteration, stage, attempt, shard=variant if isinstance(variant, int) else None)


@given(run=RUNS | CLASHING_RUNS | st.text(max_size=80), iteration=st.integers(0, 10**6), stage=STAGES,
       attempt=st.integers(0, 10**4), variant=VARIANTS)
def test_every_name_is_a_valid_label(run: str, iteration: int, stage: StageName, attempt: int, variant: str | int | None) -> None:
    assert_child_name(names.iteration_name(run, iteration))
    assert_child_name(names.configmap_name(run))
    assert_child_name(names.service_name(run, iteration, attempt))
    job = build_job_name(run, iteration, stage, attempt, variant)
    assert_child_name(job, names.MAX_JOB_NAME_LENGTH)
    assert job == build_job_name(run, iteration, stage, attempt, variant)


JOB_INPUTS = st.tuples(RUNS | CLASHING_RUNS, st.integers(0, 12), STAGES, st.integers(0, 12), VARIANTS)


@given(st.lists(JOB_INPUTS, min_size=2, max_size=40, unique=True))
def test_distinct_jobs_get_distinct_names(inputs: list[tuple[str, int, StageName, int, str | int | None]]) -> None:
    assert len({build_job_name(*job) for job in inputs}) == len(inputs)


@given(st.lists(st.tuples(RUNS | CLASHING_RUNS, st.integers(0, 120)), min_size=2, max_size=40, unique=True))
def test_distinct_iterations_get_distinct_names(inputs: list[tuple[str, int]]) -> None:
    assert len({names.iteration_name(run, k) for run, k in inputs}) == len(inputs)


@given(st.lists(RUNS | CLASHING_RUNS, min_size=2, max_size=40, unique=True))
def test_distinct_runs_get_distinct_configmaps(runs: list[str]) -> None:
    assert len({names.configmap_name(run) for run in runs}) == len(runs)


def test_long_runs_that_differ_only_at_the_end_get_distinct_names() -> None:
    runs = [LONG_RUN[:-1] + last for last in "abc"]
    assert len({names.job_name(run, 1, StageName.train, 1) for run in runs}) == 3
    assert len({names.iteration_name(run, 1) for run in runs}) == 3


@given(st.text(max_size=100))
def test_every_label_value_is_valid(text: str) -> None:
    value = names.label_value(text)
    assert len(value) <= names.MAX_NAME_LENGTH and LABEL_VALUE.fullmatch(value)
    assert names.label_value(value) == value
