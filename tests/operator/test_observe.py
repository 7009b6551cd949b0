"""Reading Jobs and Pods: states, permanent failures, pods that can never run, the stage's own error,
disruptions, missing Secrets and ConfigMaps; status as the CRD declares it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dpe.spec import StageName, StageRecord
from dpe.spiral import JobState
from dpe.status import record_finished, run_status_patch, stage_observation
from dpe_operator.observe import (
    MissingReference,
    disrupted_pods,
    disruption,
    end_of_second,
    job_state,
    missing_reference,
    pod_problem,
    references_condition,
    termination_message,
    timestamp,
    with_disrupted_pods,
)

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
    since = timestamp(NOW)
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes have nvidia.com/gpu", "lastTransitionTime": NOW}]}}
    assert pod_problem([pod], since + 599, 600) is None
    assert "nvidia.com/gpu" in (pod_problem([pod], since + 601, 600) or "")


def stage_job(name: str, attempt: int, *, stage: str = "score", merge: bool = False, shards: int = 1, status: dict | None = None) -> dict:
    labels = {"dpe.dev/run": "r", "dpe.dev/iteration": "1", "dpe.dev/stage": stage, "dpe.dev/attempt": str(attempt)}
    if merge:
        labels["dpe.dev/part"] = "merge"
    annotations = {"dpe.dev/model-uri": "s3://m/base", **({"dpe.dev/shards": str(shards)} if shards > 1 else {})}
    container = {"name": "stage", "args": ["stage", stage, "--run", "/etc/dpe/run.yaml", "--iteration", "1", "--model", "s3://m/base"]}
    return {"metadata": {"name": name, "labels": labels, "annotations": annotations}, "spec": {"template": {"spec": {"containers": [container]}}},
            "status": status or {}}


DONE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": NOW}]}
FAILED = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "exit 1", "lastTransitionTime": NOW}]}


def test_newest_attempts_pairs_each_attempt_with_its_merge_and_ignores_foreign_jobs() -> None:
    from dpe.spec import StageName
    from dpe_operator.observe import newest_attempts

    jobs = [
        stage_job("r-i1-score-a2-merge", 2, merge=True),
        stage_job("r-i1-score-a1", 1),
        stage_job("r-i1-score-a2", 2),
        stage_job("r-i1-score-a1-merge", 1, merge=True),
        stage_job("r-i1-train-a1", 1, stage="train"),
        {"metadata": {"name": "someone-elses", "labels": {"app": "x"}}},
    ]
    found = newest_attempts(jobs)
    assert set(found) == {(1, StageName.score), (1, StageName.train)}
    score = found[(1, StageName.score)]
    assert score.attempt == 2 and score.main["metadata"]["name"] == "r-i1-score-a2" and score.current["metadata"]["name"] == "r-i1-score-a2-merge"
    train = found[(1, StageName.train)]
    assert train.merge is None and train.current is train.main


@pytest.mark.parametrize(
    "main, merge, expected",
    [
        (DONE, None, (JobState.running, True)),
        ({"active": 2}, None, (JobState.running, False)),
        (FAILED, None, (JobState.failed, False)),
        (DONE, {"active": 1}, (JobState.running, False)),
        (DONE, DONE, (JobState.succeeded, False)),
        (DONE, FAILED, (JobState.failed, False)),
        (None, DONE, (JobState.succeeded, False)),
    ],
)
def test_a_sharded_attempt_runs_until_its_merge_finishes(main: dict | None, merge: dict | None, expected: tuple[JobState, bool]) -> None:
    from dpe_operator.observe import AttemptJobs, attempt_state, is_sharded

    jobs = AttemptJobs(
        1,
        None if main is None else stage_job("r-i1-score-a1", 1, shards=3, status=main),
        None if merge is None else stage_job("r-i1-score-a1-merge", 1, merge=True, shards=3, status=merge),
    )
    assert is_sharded(jobs)
    state, _, _, _, merge_due = attempt_state(jobs, sharded=True)
    assert (state, merge_due) == expected


def test_an_unsharded_attempt_is_its_job() -> None:
    from dpe_operator.observe import AttemptJobs, attempt_state, is_sharded

    jobs = AttemptJobs(1, stage_job("r-i1-score-a1", 1, status=DONE))
    assert not is_sharded(jobs)
    assert attempt_state(jobs, sharded=False)[0] is JobState.succeeded and attempt_state(jobs, sharded=False)[4] is False


def test_model_of_reads_the_jobs_annotation() -> None:
    from dpe_operator.observe import model_of

    assert model_of(stage_job("j", 1)) == "s3://m/base"
    with pytest.raises(ValueError, match="no dpe.dev/model-uri annotation"):
        model_of({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"args": ["stage", "--model", "x"]}]}}}})


def test_a_job_seen_running_and_then_gone_is_a_lost_attempt() -> None:
    from dpe.spec import AttemptRecord, StageName, StageRecord, StageSummary
    from dpe_operator.observe import AttemptJobs, vanished_attempt

    never_seen = StageRecord(name=StageName.train)
    assert vanished_attempt(never_seen, None) is None
    seen = StageRecord(name=StageName.train, job_name="r-i1-train-a2", history=[AttemptRecord(attempt=1, job_name="r-i1-train-a1", state="Failed")])
    assert vanished_attempt(seen, None) == 2
    assert vanished_attempt(seen, AttemptJobs(1, stage_job("r-i1-train-a1", 1, stage="train"))) == 2
    assert vanished_attempt(seen, AttemptJobs(2, stage_job("r-i1-train-a2", 2, stage="train"))) is None
    finished = seen.model_copy(update={"job_name": "r-i1-train-a1"})
    assert vanished_attempt(finished, None) is None
    done = seen.model_copy(update={"summary": StageSummary()})
    assert vanished_attempt(done, None) is None


def test_a_failure_with_a_disrupted_pod_is_a_disruption() -> None:
    from dpe_operator.observe import disruption

    preempted = {"metadata": {"name": "p-0"}, "status": {"conditions": [
        {"type": "Ready", "status": "False"},
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "node drained"}]}}
    failed = {"metadata": {"name": "p-1"}, "status": {"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "False"}]}}
    assert disruption([failed]) is None and disruption([]) is None
    found = disruption([failed, preempted])
    assert found is not None and "EvictionByEvictionAPI" in found and "p-0" in found and "node drained" in found


def test_status_patch_carries_only_changes() -> None:
    from dpe.status import status_patch

    old = {"phase": "Running", "bestScore": 0.4, "stopReason": "x", "conditions": [{"type": "Ready"}]}
    assert status_patch(old, {"phase": "Running", "bestScore": 0.4, "conditions": [{"type": "Ready"}]}) == {}
    assert status_patch(old, {"phase": "Succeeded", "bestScore": 0.4}) == {"phase": "Succeeded"}
    assert status_patch(old, {"stopReason": None, "message": None}) == {"stopReason": None}
    assert status_patch({}, {"usage": {"gpuHours": 1.0}}) == {"usage": {"gpuHours": 1.0}}


def test_a_condition_keeps_its_transition_time_until_its_status_flips() -> None:
    from dpe.status import condition

    first = condition("Ready", False, "Running", "m", 1, [], "2026-01-01T00:00:00Z")
    same = condition("Ready", False, "Running", "other message", 2, [first], "2026-01-02T00:00:00Z")
    flipped = condition("Ready", True, "Succeeded", "done", 2, [same], "2026-01-03T00:00:00Z")
    assert first["lastTransitionTime"] == same["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same["observedGeneration"] == 2 and same["message"] == "other message"
    assert flipped["lastTransitionTime"] == "2026-01-03T00:00:00Z" and flipped["status"] == "True"


def test_iteration_conditions_name_each_stage_and_what_it_is_doing() -> None:
    from dpe.spec import AttemptRecord, IterationPhase, StageName, StageOutcome, StageRecord
    from dpe.status import iteration_conditions

    records = {
        StageName.diagnose: StageRecord(name=StageName.diagnose),
        StageName.generate: StageRecord(name=StageName.generate, message="BackoffLimitExceeded: exit 1",
                                        history=[AttemptRecord(attempt=1, job_name="j", state="Failed", message="BackoffLimitExceeded: exit 1")]),
        StageName.score: StageRecord(name=StageName.score),
    }
    outcomes = {StageName.diagnose: StageOutcome.succeeded, StageName.generate: StageOutcome.running, StageName.score: StageOutcome.pending}
    found = {c["type"]: c for c in iteration_conditions(records, outcomes, IterationPhase.running, 3, [], NOW)}
    assert list(found) == ["Ready", "Progressing", "Complete", "Failed", "DiagnoseSucceeded", "GenerateSucceeded", "ScoreSucceeded"]
    assert found["Progressing"]["status"] == "True" and found["Progressing"]["message"] == "generate"
    assert found["DiagnoseSucceeded"]["status"] == "True" and found["DiagnoseSucceeded"]["reason"] == "Succeeded"
    generate = found["GenerateSucceeded"]
    assert generate["status"] == "False" and generate["reason"] == "Running"
    assert generate["message"] == "attempt 2 running (last failure: BackoffLimitExceeded: exit 1)"
    assert found["ScoreSucceeded"]["reason"] == "Pending" and all(c["observedGeneration"] == 3 for c in found.values())
    failed = {c["type"]: c for c in iteration_conditions(records, {**outcomes, StageName.generate: StageOutcome.failed}, IterationPhase.failed, 3, [], NOW)}
    assert failed["Failed"]["status"] == "True" and failed["Failed"]["message"] == "generate: BackoffLimitExceeded: exit 1"


def test_last_progress_is_the_newest_time_the_cluster_records() -> None:
    from dpe_operator.observe import last_progress, timestamp

    t0 = timestamp(NOW)
    assert t0 is not None
    assert last_progress(None, [], []) is None
    assert last_progress({"startTime": "2026-11-26T09:00:00Z"}, [], []) == t0 - 3600
    iteration = {
        "metadata": {"name": "r-i1", "creationTimestamp": "2026-11-26T09:10:00Z"},
        "spec": {"index": 1},
        "status": {"stages": [
            {"name": "diagnose", "startTime": "2026-11-26T09:11:00Z", "endTime": "2026-11-26T09:20:00Z",
             "history": [{"attempt": 1, "jobName": "r-i1-diagnose-a1", "state": "Succeeded", "finishedAt": t0 - 2400 + 30}]},
            {"name": "generate", "startTime": "2026-11-26T09:21:00Z"},
        ]},
    }
    run_status = {"startTime": "2026-11-26T09:00:00Z"}
    # The generate stage's start is the newest record.
    assert last_progress(run_status, [iteration], []) == t0 - 39 * 60
    # A retried attempt's Job is newer than the stage's first start; foreign Jobs do not count.
    retry = stage_job("r-i1-generate-a2", 2, stage="generate")
    retry["metadata"]["creationTimestamp"] = "2026-11-26T09:45:00Z"
    foreign = {"metadata": {"name": "other", "labels": {}, "creationTimestamp": "2026-11-26T09:59:00Z"}}
    assert last_progress(run_status, [iteration], [retry, foreign]) == t0 - 15 * 60
    # A finished attempt recorded only in the history, and a finished run.
    iteration["status"]["stages"][0]["history"][0]["finishedAt"] = t0 - 60
    assert last_progress(run_status, [iteration], [retry]) == t0 - 60
    assert last_progress({**run_status, "completionTime": NOW}, [iteration], [retry]) == t0
    # A resume (the Suspended condition flipping back) restarts the count; other conditions do not count.
    resumed = {**run_status, "conditions": [{"type": "Suspended", "status": "False", "lastTransitionTime": "2026-11-26T09:58:00Z"},
                                            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-11-26T11:00:00Z"}]}
    assert last_progress(resumed, [iteration], [retry]) == t0 - 60 and last_progress(resumed, [], []) == t0 - 120
    # An Iteration created with no status yet is an iteration started.
    fresh = {"metadata": {"name": "r-i2", "creationTimestamp": "2026-11-26T10:05:00Z"}, "spec": {"index": 2}}
    assert last_progress(run_status, [iteration, fresh], []) == t0 + 300


# ---------------------------------------------------------------------------------------------
# What the pods say: the stage's own error, disruptions, missing Secrets and ConfigMaps


def config_error(message: str) -> dict:
    return {"status": {"containerStatuses": [{"name": "stage", "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}}}]}}


def exited(name: str, code: int, message: str, started: str) -> dict:
    return {"metadata": {"name": name}, "status": {"startTime": started, "containerStatuses": [
        {"name": "stage", "state": {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed", "message": message}}}]}}


def test_the_termination_message_of_the_newest_failed_container_is_the_cause() -> None:
    pods = [exited("a", 1, "old error", "2026-11-26T10:00:00Z"), exited("b", 3, "permanent: no model files under s3://m/x", "2026-11-26T10:05:00Z"),
            exited("c", 0, "", "2026-11-26T10:09:00Z")]
    assert termination_message(pods) == "container stage of pod b exited with 3: permanent: no model files under s3://m/x"
    assert termination_message([exited("d", 137, "", NOW)]) == "container stage of pod d exited with 137"
    assert termination_message([exited("e", 0, "fine", NOW)]) is None


@pytest.mark.parametrize("message, kind, name", [
    ('secret "dpe-minio" not found', "Secret", "dpe-minio"),
    ('configmap "settings" not found', "ConfigMap", "settings"),
    ("couldn't find key accessKey in Secret dpe/dpe-minio", "Secret", "dpe-minio"),
    ("couldn't find key k in ConfigMap dpe/cm", "ConfigMap", "cm"),
])
def test_a_missing_secret_or_configmap_is_waited_for_not_fatal(message: str, kind: str, name: str) -> None:
    found = missing_reference([config_error(message)])
    assert found is not None and (found.kind, found.name, found.reason) == (kind, name, f"{kind}NotFound")
    assert pod_problem([config_error(message)], 0.0, 600) is None


def test_other_container_config_errors_are_fatal() -> None:
    pod = config_error("container has runAsNonRoot and image will run as root")
    assert missing_reference([pod]) is None
    assert "runAsNonRoot" in (pod_problem([pod], 0.0, 600) or "")


def disrupted(name: str, reason: str = "PreemptionByScheduler") -> dict:
    return {"metadata": {"name": name}, "status": {"phase": "Failed", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": "preempted"}]}}


def test_disrupted_pods_are_counted_once_and_move_into_their_attempt() -> None:
    record = StageRecord(name=StageName.diagnose)
    record, fresh = with_disrupted_pods(record, disrupted_pods([disrupted("p1"), {"metadata": {"name": "ok"}}]), limit=5)
    assert fresh == {"p1": "PreemptionByScheduler: preempted"} and record.disruptions == 1
    record, fresh = with_disrupted_pods(record, disrupted_pods([disrupted("p1"), disrupted("p2", "EvictionByEvictionAPI")]), limit=5)
    assert list(fresh) == ["p2"] and record.disrupted_pods == ["p1", "p2"] and record.disruptions == 2
    assert stage_observation(record, JobState.running).disruptions == 2

    finished = record_finished(record, 1, "j", JobState.failed, 1.0, "exit 1", False)
    assert finished.disrupted_pods == [] and finished.history[0].disruptions == 2 and finished.disruptions == 2
    assert stage_observation(finished, None).disruptions == 2


def test_disrupted_pods_kept_stop_one_past_the_limit() -> None:
    record, _ = with_disrupted_pods(StageRecord(name=StageName.train), disrupted_pods([disrupted(f"p{i}") for i in range(9)]), limit=2)
    assert len(record.disrupted_pods) == 3 and record.disruptions == 3


def test_references_condition_names_what_is_missing() -> None:
    ok = references_condition([], 600, 1, [], NOW)
    assert (ok["type"], ok["status"], ok["reason"]) == ("ReferencesResolved", "True", "Resolved")
    waiting = [MissingReference("Secret", "dpe-minio", "m"), MissingReference("Secret", "dpe-minio", "m"), MissingReference("ConfigMap", "c", "m")]
    missing = references_condition(waiting, 600, 1, [ok], NOW)
    assert (missing["status"], missing["reason"]) == ("False", "ReferencesNotFound")
    assert "ConfigMap c, Secret dpe-minio" in missing["message"] and "600 s" in missing["message"]
    assert references_condition(waiting[:1], 600, 1, [], NOW)["reason"] == "SecretNotFound"


def test_run_status_patches_hold_only_declared_keys_and_no_nested_nulls() -> None:
    patch = run_status_patch({"bestScore": 0.4}, {"phase": "Running", "bestScore": None, "message": "m",
                                                  "iterations": [{"index": 0, "phase": "Running", "score": None}]})
    assert patch == {"phase": "Running", "bestScore": None, "message": "m", "iterations": [{"index": 0, "phase": "Running"}]}
    with pytest.raises(ValidationError, match="jobName"):
        run_status_patch({}, {"jobName": "x"})


def test_a_failure_is_a_disruption_only_when_the_failed_pods_ran_through_it() -> None:
    evicted = {"metadata": {"name": "rank1", "creationTimestamp": "2026-11-26T10:00:00Z"}, "status": {"phase": "Failed", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "drain", "lastTransitionTime": "2026-11-26T10:05:00Z"}]}}
    peer = {"metadata": {"name": "rank0", "creationTimestamp": "2026-11-26T10:00:00Z"}, "status": {"phase": "Failed"}}
    replacement = {"metadata": {"name": "rank1-again", "creationTimestamp": "2026-11-26T10:05:03Z"}, "status": {"phase": "Failed"}}
    assert disruption([evicted, peer]) == "EvictionByEvictionAPI of rank1: drain"
    assert disruption([evicted, peer, replacement]) is None


def test_a_failure_counts_from_the_end_of_its_whole_second() -> None:
    """A retry's back-off then never ends before the policy says, whatever the stamp's rounding."""
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": NOW}]}}
    assert job_state(failed)[1] == timestamp(NOW) + 1.0
    assert end_of_second("2026-11-26T10:00:00.250000Z") == timestamp("2026-11-26T10:00:00.250000Z")
    assert end_of_second(None) is None
