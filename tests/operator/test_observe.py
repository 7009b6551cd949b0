"""Reading Jobs and Pods: states, permanent failures, pods that can never run."""

from __future__ import annotations

import pytest

from dpe.spiral import JobState
from dpe_operator.observe import job_state, pod_problem

NOW = "2026-11-26T10:00:00Z"


@pytest.mark.parametrize(
    "job, expected",
    [
        ({"status": {}}, (JobState.pending, False)),
        ({"status": {"active": 1}}, (JobState.running, False)),
        ({"spec": {"suspend": True}, "status": {}}, (JobState.suspended, False)),
        ({"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": NOW}]}}, (JobState.succeeded, False)),
        ({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": NOW}]}}, (JobState.failed, False)),
        ({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "lastTransitionTime": NOW}]}}, (JobState.failed, True)),
        ({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "lastTransitionTime": NOW}]}}, (JobState.failed, False)),
        ({"status": {"conditions": [{"type": "Failed", "status": "False"}], "active": 1}}, (JobState.running, False)),
    ],
)
def test_job_state(job: dict, expected: tuple[JobState, bool]) -> None:
    state, _, _, permanent = job_state(job)
    assert (state, permanent) == expected


def waiting(reason: str) -> dict:
    return {"status": {"containerStatuses": [{"name": "stage", "state": {"waiting": {"reason": reason, "message": "m"}}}]}}


@pytest.mark.parametrize("reason, fatal", [("ImagePullBackOff", True), ("ErrImagePull", True), ("CreateContainerConfigError", True), ("ContainerCreating", False)])
def test_pods_that_cannot_start(reason: str, fatal: bool) -> None:
    problem = pod_problem([waiting(reason)], 0.0, 600)
    assert (problem is not None) is fatal
    if fatal:
        assert reason in problem


def test_unschedulable_only_after_the_grace_period() -> None:
    from dpe_operator.observe import timestamp

    since = timestamp(NOW)
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes have nvidia.com/gpu", "lastTransitionTime": NOW}]}}
    assert pod_problem([pod], since + 599, 600) is None
    assert "nvidia.com/gpu" in (pod_problem([pod], since + 601, 600) or "")
