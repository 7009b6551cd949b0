"""Job, Service and ConfigMap builders: every spec field lands where Kubernetes reads it, case by case."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dpe.manifest import SpecError, load_run, parse_run
from dpe.secrets import secret_env_name
from dpe.spec import EvolutionRun, SecretKeyRef, StageName
from dpe_operator import builders, names

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.35"
IMAGE_DEFAULT = "registry.example/dpe/workload:default"
SERVICE_ACCOUNT_DEFAULT = "dpe-workload-default"
MODEL = "s3://dpe-artifacts/runs/research/demo/iterations/1/train/model"
OWNER = {"apiVersion": "dpe.dev/v1alpha1", "kind": "Iteration", "name": "demo-i2", "uid": "0d4c6a1e-iteration"}
OWNER_REFERENCE = {**OWNER, "controller": True, "blockOwnerDeletion": True}

BASE_DOCUMENT: dict[str, Any] = {
    "apiVersion": "dpe.dev/v1alpha1",
    "kind": "EvolutionRun",
    "metadata": {"name": "demo", "namespace": "research"},
    "spec": {
        "baseModel": "s3://models/qwen2.5-vl-7b",
        "train": {"gpusPerNode": 1},
        "storage": {"s3": {"endpoint": "minio.minio.svc:9000", "bucket": "dpe-artifacts", "credentialsSecret": {"name": "minio-keys"}}},
    },
}


def make_run(**spec: Any) -> EvolutionRun:
    """The base run with the given top-level spec sections replaced."""
    document = copy.deepcopy(BASE_DOCUMENT)
    document["spec"].update(copy.deepcopy(spec))
    return parse_run(document)


def build_job(run: EvolutionRun, stage: StageName, **options: Any) -> dict[str, Any]:
    return builders.stage_job(
        run, 2, stage, 1, MODEL, owner=options.pop("owner", OWNER), image_default=IMAGE_DEFAULT,
        service_account_default=SERVICE_ACCOUNT_DEFAULT, **options,
    )


def container(job: dict[str, Any]) -> dict[str, Any]:
    [only] = job["spec"]["template"]["spec"]["containers"]
    return only


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = container(job)["env"]
    found = {entry["name"]: entry for entry in entries}
    assert len(found) == len(entries), "an environment variable is set twice"
    return found


def argv(job: dict[str, Any]) -> list[str]:
    return container(job)["command"] + container(job)["args"]


def volumes_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in job["spec"]["template"]["spec"]["volumes"]}


def assert_valid(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------
# Placement: every Execution field, defaults and stage overrides
# ---------------------------------------------------------------------------------------------


def placement(job: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Job that Execution controls, with absent fields as None."""
    pod = job["spec"]["template"]["spec"]
    return {
        "image": container(job)["image"],
        "imagePullPolicy": container(job).get("imagePullPolicy"),
        "resources": container(job).get("resources"),
        "nodeSelector": pod.get("nodeSelector"),
        "tolerations": pod.get("tolerations"),
        "priorityClassName": pod.get("priorityClassName"),
        "serviceAccountName": pod["serviceAccountName"],
        "backoffLimit": job["spec"]["backoffLimit"],
        "activeDeadlineSeconds": job["spec"].get("activeDeadlineSeconds"),
        "suspend": job["spec"].get("suspend"),
        "queue": job["metadata"]["labels"].get(builders.KUEUE_QUEUE_LABEL),
    }


DEFAULT_PLACEMENT = {
    "image": IMAGE_DEFAULT,
    "imagePullPolicy": None,
    "resources": None,
    "nodeSelector": None,
    "tolerations": None,
    "priorityClassName": None,
    "serviceAccountName": SERVICE_ACCOUNT_DEFAULT,
    "backoffLimit": 0,
    "activeDeadlineSeconds": None,
    "suspend": None,
    "queue": None,
}

FULL_EXECUTION = {
    "image": "registry.example/dpe/workload:1.2.3",
    "imagePullPolicy": "Always",
    "resources": {"requests": {"cpu": 16, "memory": "128Gi"}, "limits": {"nvidia.com/gpu": 8, "memory": "160Gi"}},
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 120},
    ],
    "priorityClassName": "ml-training",
    "queueName": "research-gpus",
    "serviceAccountName": "dpe-workload",
    "backoffLimit": 2,
    "activeDeadlineSeconds": 21600,
}


@dataclass(frozen=True)
class TestCase:
    __test__ = False

    name: str
    input: dict[str, Any]
    expected: dict[str, Any]
    stage: StageName = StageName.diagnose


PLACEMENT_CASES = [
    TestCase("operator defaults", {}, DEFAULT_PLACEMENT),
    TestCase(
        "every execution field",
        {"execution": FULL_EXECUTION},
        {
            "image": "registry.example/dpe/workload:1.2.3",
            "imagePullPolicy": "Always",
            "resources": {"requests": {"cpu": 16, "memory": "128Gi"}, "limits": {"nvidia.com/gpu": 8, "memory": "160Gi"}},
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": FULL_EXECUTION["tolerations"],
            "priorityClassName": "ml-training",
            "serviceAccountName": "dpe-workload",
            "backoffLimit": 2,
            "activeDeadlineSeconds": 21600,
            "suspend": True,
            "queue": "research-gpus",
        },
    ),
    TestCase(
        "stage override over the run's execution",
        {
            "execution": {"image": "registry.example/dpe/workload:1.2.3", "priorityClassName": "ml-batch", "resources": {"requests": {"cpu": 4}}},
            "evaluate": {"execution": {"image": "registry.example/dpe/eval:1.2.3", "resources": {"limits": {"nvidia.com/gpu": 1}}}},
        },
        {
            **DEFAULT_PLACEMENT,
            "image": "registry.example/dpe/eval:1.2.3",
            "resources": {"limits": {"nvidia.com/gpu": 1}},
            "priorityClassName": "ml-batch",
        },
        StageName.evaluate,
    ),
    TestCase(
        "another stage's override does not apply",
        {
            "execution": {"image": "registry.example/dpe/workload:1.2.3"},
            "evaluate": {"execution": {"image": "registry.example/dpe/eval:1.2.3", "queueName": "eval-queue"}},
        },
        {**DEFAULT_PLACEMENT, "image": "registry.example/dpe/workload:1.2.3"},
        StageName.score,
    ),
    TestCase(
        "train override of gpus and deadline",
        {"train": {"execution": {"resources": {"limits": {"nvidia.com/gpu": 8}}, "activeDeadlineSeconds": 43200, "backoffLimit": 1}}},
        {**DEFAULT_PLACEMENT, "resources": {"limits": {"nvidia.com/gpu": 8}}, "activeDeadlineSeconds": 43200, "backoffLimit": 1},
        StageName.train,
    ),
]


@pytest.mark.parametrize("case", PLACEMENT_CASES, ids=lambda case: case.name)
def test_execution_fields_are_mapped(case: TestCase) -> None:
    job = build_job(make_run(**case.input), case.stage)
    assert placement(job) == case.expected
    assert_valid(job)


def test_kueue_label_is_on_the_job_only() -> None:
    job = build_job(make_run(execution={"queueName": "research-gpus"}), StageName.generate)
    assert job["metadata"]["labels"][builders.KUEUE_QUEUE_LABEL] == "research-gpus"
    assert builders.KUEUE_QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]


def test_a_queue_name_that_cannot_be_a_label_is_refused_by_the_spec() -> None:
    from dpe.manifest import SpecError

    with pytest.raises(SpecError, match="queueName"):
        make_run(execution={"queueName": "q." + "x" * 70})


# ---------------------------------------------------------------------------------------------
# The command and the shapes of a stage: plain, sharded, merge, one shard
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeCase:
    name: str
    input: tuple[dict[str, Any], StageName, dict[str, Any]]
    expected_args: list[str]
    expected_indexes: int | None
    expected_name: str


STAGE_ARGS = ["dpe", "stage"]
RUN_ARGS = ["--run", "/etc/dpe/run.yaml", "--iteration", "2", "--model", MODEL]

SHAPE_CASES = [
    ShapeCase("plain diagnose", ({}, StageName.diagnose, {}), [*STAGE_ARGS, "diagnose", *RUN_ARGS], None, "demo-i2-diagnose-a1"),
    ShapeCase("unsharded evaluate", ({}, StageName.evaluate, {}), [*STAGE_ARGS, "evaluate", *RUN_ARGS], None, "demo-i2-evaluate-a1"),
    ShapeCase(
        "sharded evaluate", ({"evaluate": {"shards": 4}}, StageName.evaluate, {}),
        [*STAGE_ARGS, "evaluate", *RUN_ARGS, "--shard", "$(JOB_COMPLETION_INDEX)/4"], 4, "demo-i2-evaluate-a1",
    ),
    ShapeCase(
        "sharded generate", ({"generate": {"shards": 2}}, StageName.generate, {}),
        [*STAGE_ARGS, "generate", *RUN_ARGS, "--shard", "$(JOB_COMPLETION_INDEX)/2"], 2, "demo-i2-generate-a1",
    ),
    ShapeCase(
        "merge of a sharded score", ({"score": {"shards": 3}}, StageName.score, {"merge": True}),
        [*STAGE_ARGS, "score", *RUN_ARGS, "--merge"], None, "demo-i2-score-a1-merge",
    ),
    ShapeCase(
        "one shard alone", ({"score": {"shards": 3}}, StageName.score, {"shard": (1, 3)}),
        [*STAGE_ARGS, "score", *RUN_ARGS, "--shard", "1/3"], None, "demo-i2-score-a1-s1",
    ),
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda case: case.name)
def test_stage_shapes(case: ShapeCase) -> None:
    spec, stage, options = case.input
    job = build_job(make_run(**spec), stage, **options)
    assert argv(job) == case.expected_args
    assert job["metadata"]["name"] == case.expected_name
    indexed = {key: job["spec"][key] for key in ("completionMode", "completions", "parallelism") if key in job["spec"]}
    expected = {} if case.expected_indexes is None else {"completionMode": "Indexed", "completions": case.expected_indexes, "parallelism": case.expected_indexes}
    assert indexed == expected
    index_env = env_of(job).get(builders.COMPLETION_INDEX_ENV)
    if case.expected_indexes is None:
        assert index_env is None
    else:
        assert index_env == {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}
    # Only the merge Job is told apart from its attempt's other Job, which shares its labels.
    part = job["metadata"]["labels"].get(names.PART_LABEL)
    assert part == ("merge" if options.get("merge") else None)
    assert_valid(job)


@pytest.mark.parametrize(
    ("spec", "stage", "options", "words"),
    [
        ({}, StageName.evaluate, {"merge": True}, "one piece"),
        ({}, StageName.diagnose, {"shard": (0, 2)}, "one piece"),
        ({"score": {"shards": 3}}, StageName.score, {"shard": (0, 4)}, "does not fit"),
        ({"score": {"shards": 3}}, StageName.score, {"shard": (3, 3)}, "does not fit"),
        ({"score": {"shards": 3}}, StageName.score, {"shard": (0, 3), "merge": True}, "not both"),
    ],
    ids=["merge unsharded", "shard of diagnose", "wrong count", "index past the end", "shard and merge"],
)
def test_impossible_shapes_are_refused(spec: dict[str, Any], stage: StageName, options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        build_job(make_run(**spec), stage, **options)


# ---------------------------------------------------------------------------------------------
# Training: torchrun's PET_* environment, the Indexed Job and its headless Service
# ---------------------------------------------------------------------------------------------

JOB = "demo-i2-train-a1"
RANK_FROM_INDEX = {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}

TRAIN_CASES = [
    TestCase("one gpu: no torchrun", {"nodes": 1, "gpusPerNode": 1}, {}),
    TestCase("one node, eight gpus", {"nodes": 1, "gpusPerNode": 8}, {"PET_NNODES": {"value": "1"}, "PET_NPROC_PER_NODE": {"value": "8"}}),
    TestCase(
        "four nodes",
        {"nodes": 4, "gpusPerNode": 8},
        {
            "PET_NNODES": {"value": "4"},
            "PET_NPROC_PER_NODE": {"value": "8"},
            "PET_NODE_RANK": {"valueFrom": RANK_FROM_INDEX},
            "PET_MASTER_ADDR": {"value": f"{JOB}-0.{JOB}"},
            "PET_MASTER_PORT": {"value": "29500"},
        },
    ),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda case: case.name)
def test_torchrun_environment(case: TestCase) -> None:
    job = build_job(make_run(train=case.input), StageName.train)
    pet = {name: {k: v for k, v in entry.items() if k != "name"} for name, entry in env_of(job).items() if name.startswith("PET_")}
    assert pet == case.expected
    assert_valid(job)


def test_multi_node_training_is_an_indexed_job_under_a_headless_service() -> None:
    run = make_run(train={"nodes": 4, "gpusPerNode": 8})
    job = build_job(run, StageName.train)
    service = builders.headless_service(run, 2, 1, owner=OWNER)
    pod = job["spec"]["template"]["spec"]

    assert {k: job["spec"][k] for k in ("completionMode", "completions", "parallelism")} == {"completionMode": "Indexed", "completions": 4, "parallelism": 4}
    assert pod["subdomain"] == service["metadata"]["name"] == names.service_name("demo", 2, 1)
    assert env_of(job)["PET_MASTER_ADDR"]["value"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert container(job)["ports"] == [{"name": "torchrun", "containerPort": 29500, "protocol": "TCP"}]
    assert service["spec"] == {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": {"batch.kubernetes.io/job-name": job["metadata"]["name"]},
        "ports": [{"name": "torchrun", "port": 29500, "targetPort": 29500, "protocol": "TCP"}],
    }
    assert service["metadata"]["namespace"] == "research"
    assert service["metadata"]["labels"] == names.labels("demo", 2, StageName.train, 1)
    assert service["metadata"]["ownerReferences"] == [OWNER_REFERENCE]
    assert_valid(job)
    assert_valid(service)


@pytest.mark.parametrize("stage", [StageName.train, StageName.evaluate], ids=["train", "evaluate"])
def test_single_node_jobs_have_no_subdomain_or_port(stage: StageName) -> None:
    job = build_job(make_run(train={"nodes": 1, "gpusPerNode": 8}), stage)
    assert "subdomain" not in job["spec"]["template"]["spec"]
    assert "ports" not in container(job)
    assert "completionMode" not in job["spec"]


def test_other_stages_of_a_multi_node_run_stay_single_pods() -> None:
    job = build_job(make_run(train={"nodes": 4, "gpusPerNode": 8}), StageName.score)
    assert "completionMode" not in job["spec"]
    assert not [name for name in env_of(job) if name.startswith("PET_")]


# ---------------------------------------------------------------------------------------------
# Secrets: references only
# ---------------------------------------------------------------------------------------------


def endpoint(key: str) -> dict[str, Any]:
    return {"baseUrl": "https://gateway.example/v1", "model": "m", "apiKeySecret": {"name": "agent-keys", "key": key}}


SECRET_SPEC = {
    "diagnose": {"judge": endpoint("diagnose-judge")},
    "generate": {
        "agents": {role: endpoint(role) for role in ("planner", "imageSelector", "editPlanner", "questionGenerator", "validator")},
        "tools": {
            "search": {"provider": "serper", "baseUrl": "https://google.serper.dev", "apiKeySecret": {"name": "search-keys", "key": "serper"}},
            "edit": {"provider": "openai", "baseUrl": "https://gateway.example/v1", "model": "edit", "apiKeySecret": {"name": "agent-keys", "key": "edit"}},
        },
    },
    "evaluate": {"judge": endpoint("evaluate-judge")},
}
S3_ENV = {"DPE_S3_ACCESS_KEY": ("minio-keys", "accessKey"), "DPE_S3_SECRET_KEY": ("minio-keys", "secretKey")}


def agent_env(*keys: str) -> dict[str, tuple[str, str]]:
    return {secret_env_name(SecretKeyRef(name="agent-keys", key=key)): ("agent-keys", key) for key in keys}


SECRET_CASES = [
    TestCase("diagnose: its judge", SECRET_SPEC, {**S3_ENV, **agent_env("diagnose-judge")}, StageName.diagnose),
    TestCase(
        "generate: agents and tools",
        SECRET_SPEC,
        {
            **S3_ENV,
            **agent_env("planner", "imageSelector", "editPlanner", "questionGenerator", "validator", "edit"),
            "DPE_SECRET_SEARCH_KEYS__SERPER": ("search-keys", "serper"),
        },
        StageName.generate,
    ),
    TestCase("score: storage only", SECRET_SPEC, S3_ENV, StageName.score),
    TestCase("train: storage only", SECRET_SPEC, S3_ENV, StageName.train),
    TestCase("evaluate: its judge", SECRET_SPEC, {**S3_ENV, **agent_env("evaluate-judge")}, StageName.evaluate),
    TestCase("named s3 keys", {"storage": {"s3": {"endpoint": "minio:9000", "bucket": "b-1", "credentialsSecret": {"name": "s3", "accessKeyKey": "id", "secretKeyKey": "key"}}}},
             {"DPE_S3_ACCESS_KEY": ("s3", "id"), "DPE_S3_SECRET_KEY": ("s3", "key")}),
    TestCase("local store: nothing", {"storage": {"local": {"path": "/data/runs"}}}, {}),
    TestCase(
        "one key shared by every agent: one variable",
        {"generate": {"agents": {role: endpoint("gateway") for role in ("planner", "validator")}}},
        {**S3_ENV, **agent_env("gateway")},
        StageName.generate,
    ),
]


@pytest.mark.parametrize("case", SECRET_CASES, ids=lambda case: case.name)
def test_secrets_come_only_from_secret_key_refs(case: TestCase) -> None:
    job = build_job(make_run(**case.input), case.stage)
    secret_env = {name: entry for name, entry in env_of(job).items() if name.startswith(("DPE_SECRET_", "DPE_S3_"))}
    for entry in secret_env.values():
        assert set(entry) == {"name", "valueFrom"}, entry
        assert set(entry["valueFrom"]) == {"secretKeyRef"}
    found = {name: (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"]["key"]) for name, entry in secret_env.items()}
    assert found == case.expected
    assert_valid(job)


def test_every_api_key_of_the_example_reaches_its_stage_and_no_value_appears() -> None:
    run = load_run(ROOT / "examples" / "evolutionrun.yaml")
    secret_values = [value for document in yaml.safe_load_all((ROOT / "examples" / "secrets.yaml").read_text()) for value in document["stringData"].values()]
    referenced = {
        StageName.diagnose: [run.spec.diagnose.judge],
        StageName.generate: [*vars(run.spec.generate.agents).values(), run.spec.generate.tools.search, run.spec.generate.tools.edit],
        StageName.evaluate: [run.spec.evaluate.judge],
    }
    for stage, holders in referenced.items():
        job = build_job(run, stage)
        env = env_of(job)
        for holder in filter(None, holders):
            ref = holder.api_key_secret
            assert env[secret_env_name(ref)]["valueFrom"] == {"secretKeyRef": {"name": ref.name, "key": ref.key}}
    built = [builders.run_configmap(run), *(build_job(run, stage) for stage in StageName)]
    text = json.dumps(built)
    assert not [value for value in secret_values if value in text]


def test_two_references_folding_to_one_variable_are_refused() -> None:
    """Refused with the spec, before any Job is built."""
    with pytest.raises(SpecError, match="DPE_SECRET_AGENT_KEYS__API_KEY"):
        make_run(generate={"agents": {"planner": endpoint("api.key"), "validator": endpoint("api-key")}})


# ---------------------------------------------------------------------------------------------
# Pod plumbing: environment, volumes, failure policy
# ---------------------------------------------------------------------------------------------


def test_fixed_environment_and_volumes() -> None:
    job = build_job(make_run(), StageName.diagnose)
    env = env_of(job)
    assert env["PYTHONUNBUFFERED"] == {"name": "PYTHONUNBUFFERED", "value": "1"}
    assert env["DPE_CACHE_DIR"] == {"name": "DPE_CACHE_DIR", "value": "/scratch"}
    assert container(job)["volumeMounts"] == [
        {"name": "run-spec", "mountPath": "/etc/dpe", "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes = volumes_of(job)
    assert volumes["run-spec"] == {"name": "run-spec", "configMap": {"name": "demo-spec", "items": [{"key": "run.yaml", "path": "run.yaml"}]}}
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {}}
    assert container(job)["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the Pod Security Standard "restricted" (Kubernetes docs) finds wrong with a pod spec."""
    found = []
    pod_context = pod.get("securityContext") or {}
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            found.append(f"volume {volume['name']} of type {kinds}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(key)
    for box in [*(pod.get("initContainers") or []), *pod["containers"]]:
        context = box.get("securityContext") or {}
        if context.get("privileged"):
            found.append(f"{box['name']}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{box['name']}: allowPrivilegeEscalation != false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []) or set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{box['name']}: capabilities")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            found.append(f"{box['name']}: runAsNonRoot != true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{box['name']}: runAsUser=0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{box['name']}: seccompProfile")
        if any(port.get("hostPort") for port in box.get("ports") or []):
            found.append(f"{box['name']}: hostPort")
    return found


@pytest.mark.parametrize("stage", list(StageName))
@pytest.mark.parametrize("shape", ["whole", "sharded", "multi-node"])
def test_every_stage_pod_passes_the_restricted_pod_security_standard(stage: StageName, shape: str) -> None:
    spec = {"multi-node": {"train": {"nodes": 2, "gpusPerNode": 2}}, "sharded": {stage.value: {"shards": 2}} if stage in builders.SHARDED_STAGES else {},
            "whole": {}}[shape]
    pod = build_job(make_run(**spec), stage)["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False, "stages never call the API server"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} >= {"/tmp", "/scratch"}, "writable places on a read-only root"


def test_a_model_uri_reaches_the_stage_as_written_not_expanded_by_the_kubelet() -> None:
    job = builders.stage_job(make_run(), 1, StageName.diagnose, 1, "s3://models/$(DPE_S3_SECRET_KEY)/m", owner=OWNER,
                             image_default=IMAGE_DEFAULT, service_account_default=SERVICE_ACCOUNT_DEFAULT)
    args = container(job)["args"]
    assert args[args.index("--model") + 1] == "s3://models/$$(DPE_S3_SECRET_KEY)/m"
    assert job["metadata"]["annotations"][names.MODEL_ANNOTATION] == "s3://models/$(DPE_S3_SECRET_KEY)/m"


SHM_CASES = [
    TestCase("no resources", {}, {"medium": "Memory"}),
    TestCase("memory request", {"execution": {"resources": {"requests": {"memory": "64Gi"}, "limits": {"memory": "80Gi"}}}}, {"medium": "Memory", "sizeLimit": "64Gi"}),
    TestCase("memory limit only", {"execution": {"resources": {"limits": {"memory": "80Gi"}}}}, {"medium": "Memory", "sizeLimit": "80Gi"}),
    TestCase("bytes as a number", {"execution": {"resources": {"requests": {"memory": 17179869184}}}}, {"medium": "Memory", "sizeLimit": 17179869184}),
    TestCase("cpu only", {"execution": {"resources": {"requests": {"cpu": 8}}}}, {"medium": "Memory"}),
]


@pytest.mark.parametrize("case", SHM_CASES, ids=lambda case: case.name)
def test_shared_memory_volume(case: TestCase) -> None:
    job = build_job(make_run(**case.input), StageName.diagnose)
    assert volumes_of(job)["dshm"] == {"name": "dshm", "emptyDir": case.expected}
    assert_valid(job)


def test_pod_failure_policy_ignores_disruptions_and_stops_on_permanent_failure() -> None:
    from dpe.contract import PERMANENT_EXIT

    job = build_job(make_run(), StageName.train)
    assert job["spec"]["podFailurePolicy"] == {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": container(job)["name"], "operator": "In", "values": [PERMANENT_EXIT]}},
        ]
    }


# ---------------------------------------------------------------------------------------------
# Metadata: names, labels, owners
# ---------------------------------------------------------------------------------------------


def test_job_metadata() -> None:
    job = builders.stage_job(
        make_run(), 3, StageName.score, 2, MODEL, owner=OWNER, image_default=IMAGE_DEFAULT, service_account_default=SERVICE_ACCOUNT_DEFAULT
    )
    assert job["metadata"] == {
        "name": "demo-i3-score-a2",
        "namespace": "research",
        "labels": names.labels("demo", 3, StageName.score, 2),
        "ownerReferences": [OWNER_REFERENCE],
        "annotations": {names.MODEL_ANNOTATION: MODEL},
    }
    assert job["spec"]["template"]["metadata"] == {"labels": names.labels("demo", 3, StageName.score, 2)}


def test_a_sharded_stages_jobs_say_how_many_shards_and_which_model() -> None:
    run = make_run(score={"shards": 3})
    for job in (builders.stage_job(run, 1, StageName.score, 1, MODEL, owner=OWNER, image_default=IMAGE_DEFAULT, service_account_default=SERVICE_ACCOUNT_DEFAULT, **extra)
                for extra in ({}, {"shard": (1, 3)}, {"merge": True})):
        assert job["metadata"]["annotations"] == {names.MODEL_ANNOTATION: MODEL, names.SHARDS_ANNOTATION: "3"}


def test_no_owner_no_references() -> None:
    run = make_run()
    objects = [build_job(run, StageName.diagnose, owner=None), builders.headless_service(run, 2, 1, owner=None), builders.run_configmap(run)]
    assert not [obj for obj in objects if "ownerReferences" in obj["metadata"]]


@pytest.mark.parametrize("missing", ["apiVersion", "kind", "name", "uid"])
def test_an_owner_without_identity_is_refused(missing: str) -> None:
    owner = {key: value for key, value in OWNER.items() if key != missing}
    with pytest.raises(ValueError, match=missing):
        build_job(make_run(), StageName.diagnose, owner=owner)


# ---------------------------------------------------------------------------------------------
# The run's ConfigMap
# ---------------------------------------------------------------------------------------------


def test_configmap_holds_the_run_as_the_stages_read_it() -> None:
    document = copy.deepcopy(BASE_DOCUMENT)
    document["metadata"].update(uid="0d4c-run", resourceVersion="42", labels={"team": "vision"})
    document["status"] = {"phase": "Running", "currentIteration": 2}
    run = parse_run(document)
    run_owner = {"apiVersion": "dpe.dev/v1alpha1", "kind": "EvolutionRun", "name": "demo", "uid": "0d4c-run"}
    configmap = builders.run_configmap(run, owner=run_owner)

    assert configmap["metadata"] == {
        "name": "demo-spec",
        "namespace": "research",
        "labels": names.labels("demo"),
        "ownerReferences": [{**run_owner, "controller": True, "blockOwnerDeletion": True}],
    }
    stored = yaml.safe_load(configmap["data"]["run.yaml"])
    assert stored["metadata"] == {"name": "demo", "namespace": "research"}
    assert "status" not in stored
    assert parse_run(stored).spec == run.spec
    assert_valid(configmap)


# ---------------------------------------------------------------------------------------------
# Schema: every object the builders make, against the Kubernetes API
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaCase:
    name: str
    input: EvolutionRun
    expected_kinds: list[str] = field(default_factory=lambda: ["ConfigMap", "Service", *["Job"] * len(StageName)])


SCHEMA_CASES = [
    SchemaCase("minimal run", parse_run({"apiVersion": "dpe.dev/v1alpha1", "kind": "EvolutionRun", "metadata": {"name": "m"}, "spec": {"baseModel": "builtin:tiny-qwen2.5-vl"}})),
    SchemaCase("the cluster example", load_run(ROOT / "examples" / "evolutionrun.yaml")),
    SchemaCase("everything set", make_run(**{**SECRET_SPEC, "execution": FULL_EXECUTION, "train": {"nodes": 2, "gpusPerNode": 4}, "evaluate": {**SECRET_SPEC["evaluate"], "shards": 3}})),
]


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=lambda case: case.name)
def test_every_object_passes_the_kubernetes_schema(case: SchemaCase) -> None:
    run = case.input
    objects = [builders.run_configmap(run, owner=OWNER), builders.headless_service(run, 1, 1, owner=OWNER)]
    objects += [build_job(run, stage) for stage in StageName]
    assert [obj["kind"] for obj in objects] == case.expected_kinds
    for stage in builders.SHARDED_STAGES:
        shards = builders.stage_shards(run, stage)
        if shards > 1:
            objects += [build_job(run, stage, merge=True), build_job(run, stage, shard=(shards - 1, shards))]
    for obj in objects:
        assert_valid(obj)


def test_the_schema_check_does_reject_a_broken_job() -> None:
    job = build_job(make_run(), StageName.diagnose)
    job["spec"]["backoffLimit"] = "0"
    with pytest.raises(kubernetes_validate.ValidationError):
        assert_valid(job)


def test_the_builders_import_nothing_heavy() -> None:
    code = (
        "import sys, dpe_operator.builders, dpe_operator.names\n"
        "heavy = {'torch', 'transformers', 'trl', 'vllm', 'kopf', 'minio', 'dpe.store', 'dpe.stages', 'dpe.models', 'dpe.records'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_job_index_keeps_what_the_operator_reads_and_drops_the_pod_template() -> None:
    """`observe.job_summary` is what the Job index holds for each Job: every observation the
    operator makes of a Job reads the same from it as from the whole body, at a fraction of its size."""
    from dpe_operator import observe

    run = make_run()
    job = build_job(run, StageName.score)
    job["metadata"] |= {"uid": "u-1", "resourceVersion": "41", "creationTimestamp": "2026-12-05T10:00:00Z",
                        "ownerReferences": [{"kind": "EvolutionRun", "name": run.metadata.name, "uid": "r-1"}],
                        "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}] * 20}
    job["spec"]["suspend"] = True
    job["status"] = {"active": 1, "ready": 1, "conditions": [{"type": "Suspended", "status": "True"}]}
    summary = observe.job_summary(job)
    assert "managedFields" not in summary["metadata"] and "template" not in summary["spec"]
    assert summary["metadata"]["labels"] == job["metadata"]["labels"] and summary["metadata"]["annotations"] == job["metadata"]["annotations"]
    assert observe.job_state(summary) == observe.job_state(job)
    assert observe.model_of(summary) == observe.model_of(job)
    assert observe.newest_attempts([summary]).keys() == observe.newest_attempts([job]).keys()
    assert observe.is_sharded(observe.AttemptJobs(1, summary)) == observe.is_sharded(observe.AttemptJobs(1, job))
    assert len(json.dumps(summary)) * 4 < len(json.dumps(job))
    summary["metadata"]["labels"]["x"] = "y"
    assert "x" not in job["metadata"]["labels"]
