"""The Kubernetes objects of an EvolutionRun, built as plain JSON-ready dicts.

Every function here is pure: a run spec and a few names in, a manifest out, no API calls. The kopf
handlers send what these return; the tests check the manifests case by case and against the
Kubernetes OpenAPI schema.

Each stage attempt is one `batch/v1` Job running `dpe stage NAME --run /etc/dpe/run.yaml
--iteration K --model URI`, with the run spec mounted from a ConfigMap. The Job is built so that the
spiral, not Kubernetes, decides about retries: `backoffLimit` defaults to 0, pod disruptions
(preemption, eviction, node drain) are ignored by the pod failure policy so they never count as a
failure, and the stage's permanent-failure exit code fails the Job at once.

Two stage shapes need an Indexed Job:
- training on several nodes: one pod per node, a headless Service as their DNS subdomain, and the
  `PET_*` variables torchrun reads (as Kubeflow Trainer sets them);
- a sharded generate, score or evaluate: one pod per shard, each reading its shard from the
  completion index, followed by a separate merge Job.

Secrets reach the pods only as `secretKeyRef` environment sources, named by `dpe.secrets`; the spec
holds references only, so no value can end up in a manifest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from dpe.secrets import secret_env_map
from dpe.spec import API_GROUP, API_VERSION, EvolutionRun, Execution, SecretKeyRef, StageName
from dpe.contract import CACHE_ENV, PERMANENT_EXIT, S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV, stage_argv
from dpe_operator import names

RUN_FILE_KEY = "run.yaml"
"""Key of the run spec in the run's ConfigMap."""
RUN_DIR = "/etc/dpe"
"""Where the run's ConfigMap is mounted in every stage container."""
RUN_FILE = f"{RUN_DIR}/{RUN_FILE_KEY}"
"""The run spec file a stage reads (`--run`)."""
SCRATCH_DIR = "/scratch"
"""Mount point of the pod's scratch emptyDir; the stage's model and data cache lives there."""
SHM_DIR = "/dev/shm"
"""Shared memory of the pod; PyTorch data loaders and NCCL need more than the runtime's 64 MiB."""
TMP_DIR = "/tmp"
"""The pod's writable /tmp: the root filesystem is read-only."""
WORKLOAD_USER = 10001
"""User and group of the workload image (Dockerfile); the pod runs as them whatever the image says."""
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True, "runAsUser": WORKLOAD_USER, "runAsGroup": WORKLOAD_USER, "fsGroup": WORKLOAD_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""With CONTAINER_SECURITY_CONTEXT, what the Pod Security Standard "restricted" asks of a pod."""
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
}

CONTAINER_NAME = "stage"
ENTRYPOINT = "dpe"
DEFAULT_BACKOFF_LIMIT = 0
"""Pod retries inside one Job when the spec sets none: none, since the spiral retries whole attempts."""
TTL_SECONDS_AFTER_FINISHED = 3600
"""Finished Jobs stay an hour, long enough for the operator to read them and for people to debug."""

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DISRUPTION_CONDITION = "DisruptionTarget"

TORCHRUN_PORT = 29500
TORCHRUN_PORT_NAME = "torchrun"

SHARDED_STAGES = (StageName.generate, StageName.score, StageName.evaluate)
"""Stages whose settings have `shards`."""


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller reference to `owner` (apiVersion, kind, name, uid), so deleting it deletes the child."""
    missing = [key for key in ("apiVersion", "kind", "name", "uid") if not owner.get(key)]
    if missing:
        raise ValueError(f"owner needs {', '.join(missing)} to be referenced")
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["name"],
        "uid": owner["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(name: str, namespace: str, labels: dict[str, str], owner: Mapping[str, Any] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    return metadata


# ---------------------------------------------------------------------------------------------
# The run's ConfigMap
# ---------------------------------------------------------------------------------------------


def run_document(run: EvolutionRun) -> dict[str, Any]:
    """The run as the stages read it: identity and spec only.

    Status is left out (it changes all the time and no stage reads it), and so is any server-set
    metadata; secrets are in the spec by reference only.
    """
    return {
        "apiVersion": run.api_version,
        "kind": run.kind,
        "metadata": {"name": run.metadata.name, "namespace": run.metadata.namespace},
        "spec": run.spec.to_yaml_dict(),
    }


def run_configmap(run: EvolutionRun, *, owner: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ConfigMap holding the run spec that every stage Job mounts at /etc/dpe."""
    run_name = run.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(names.configmap_name(run_name), run.metadata.namespace, names.labels(run_name), owner),
        "data": {RUN_FILE_KEY: yaml.safe_dump(run_document(run), sort_keys=False)},
    }


# ---------------------------------------------------------------------------------------------
# Stage Jobs
# ---------------------------------------------------------------------------------------------


def stage_shards(run: EvolutionRun, stage: StageName) -> int:
    """How many shards a stage runs in (1 for stages that are never sharded)."""
    if stage not in SHARDED_STAGES:
        return 1
    shards: int = getattr(run.spec, stage.value).shards
    return shards


def _secret_refs(node: object) -> Iterator[SecretKeyRef]:
    """Every SecretKeyRef inside a spec model, in field order."""
    if isinstance(node, SecretKeyRef):
        yield node
    elif isinstance(node, BaseModel):
        for field in type(node).model_fields:
            yield from _secret_refs(getattr(node, field))
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _secret_refs(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _secret_refs(item)


def _secret_key_ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


def _secret_env(run: EvolutionRun, stage: StageName) -> list[dict[str, Any]]:
    """S3 credentials plus every API key the stage's own settings reference, as secretKeyRef sources.

    A stage reads only the endpoints in its own section of the spec (the diagnose judge, the
    generate agents and tools, the evaluate judge), so its pods get only those keys.
    """
    env: list[dict[str, Any]] = []
    s3 = run.spec.storage.s3
    if s3 is not None and s3.credentials_secret is not None:
        credentials = s3.credentials_secret
        env.append({"name": S3_ACCESS_KEY_ENV, "valueFrom": _secret_key_ref(credentials.name, credentials.access_key_key)})
        env.append({"name": S3_SECRET_KEY_ENV, "valueFrom": _secret_key_ref(credentials.name, credentials.secret_key_key)})
    api_keys = secret_env_map(_secret_refs(getattr(run.spec, stage.value)))
    env.extend({"name": variable, "valueFrom": _secret_key_ref(ref.name, ref.key)} for variable, ref in sorted(api_keys.items()))
    return env


def _torchrun_env(run: EvolutionRun, job: str, service: str) -> list[dict[str, Any]]:
    """The PET_* variables torchrun takes as its flags, when training uses more than one process.

    On several nodes each pod is one node: its rank is its completion index, and rank 0 is reached
    by the Indexed Job hostname rule `<job>-0` under the headless Service that is the pods' subdomain.
    """
    train = run.spec.train
    if train.nodes == 1 and train.gpus_per_node == 1:
        return []
    env: list[dict[str, Any]] = [
        {"name": "PET_NNODES", "value": str(train.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(train.gpus_per_node)},
    ]
    if train.nodes > 1:
        env += [
            {"name": "PET_NODE_RANK", "valueFrom": _completion_index_ref()},
            {"name": "PET_MASTER_ADDR", "value": f"{job}-0.{service}"},
            {"name": "PET_MASTER_PORT", "value": str(TORCHRUN_PORT)},
        ]
    return env


def _completion_index_ref() -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}


def _resources(execution: Execution) -> dict[str, Any]:
    if execution.resources is None:
        return {}
    return {kind: dict(values) for kind, values in (("requests", execution.resources.requests), ("limits", execution.resources.limits)) if values}


def _shm_volume(execution: Execution) -> dict[str, Any]:
    """A memory-backed emptyDir for /dev/shm, bounded by the pod's memory request.

    Without a request the limit is the request Kubernetes assumes, so it bounds the volume instead.
    """
    empty_dir: dict[str, Any] = {"medium": "Memory"}
    if execution.resources is not None:
        memory = execution.resources.requests.get("memory", execution.resources.limits.get("memory"))
        if memory is not None:
            empty_dir["sizeLimit"] = memory
    return {"name": "dshm", "emptyDir": empty_dir}


def _pod_failure_policy() -> dict[str, Any]:
    """Disruptions do not count against backoffLimit; a permanent stage failure ends the Job at once."""
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": DISRUPTION_CONDITION, "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In", "values": [PERMANENT_EXIT]},
            },
        ]
    }


def kubelet_literal(text: str) -> str:
    """`text` as the kubelet passes it on: `$$` stands for `$`, so no `$(VAR)` in it is expanded."""
    return text.replace("$", "$$")


def _stage_args(
    stage: StageName, iteration: int, model_uri: str, shards: int, shard: tuple[int, int] | None, merge: bool
) -> list[str]:
    if shard is not None:
        part: str | None = f"{shard[0]}/{shard[1]}"
    elif shards > 1 and not merge:
        part = f"$({COMPLETION_INDEX_ENV})/{shards}"
    else:
        part = None
    # The kubelet expands $(VAR) in args; a model URI is the run author's text, so `$` stays literal.
    return stage_argv(stage.value, RUN_FILE, iteration, kubelet_literal(model_uri), shard=part, merge=merge)


def _check_shape(run: EvolutionRun, stage: StageName, shard: tuple[int, int] | None, merge: bool) -> int:
    """The stage's shard count, after refusing shard or merge requests the spec does not allow."""
    shards = stage_shards(run, stage)
    if (shard is not None or merge) and shards == 1:
        raise ValueError(f"stage {stage.value} runs in one piece; there is no shard to run or merge")
    if shard is not None:
        index, count = shard
        if count != shards or not 0 <= index < count:
            raise ValueError(f"shard {index}/{count} does not fit stage {stage.value}, which has {shards} shards")
    return shards


def stage_job(
    run: EvolutionRun,
    iteration: int,
    stage: StageName,
    attempt: int,
    model_uri: str,
    *,
    owner: Mapping[str, Any] | None,
    image_default: str,
    service_account_default: str,
    shard: tuple[int, int] | None = None,
    merge: bool = False,
) -> dict[str, Any]:
    """The Job of one stage attempt.

    By default this is the whole stage: one pod, or an Indexed Job when training spans several
    nodes or the stage runs in shards. `shard=(i, n)` gives a Job for shard i alone (to rerun one
    lost shard); `merge=True` gives the Job that combines the shards once they are all done.
    Placement and limits come from `spec.stage_execution(stage)`; `image_default` and
    `service_account_default` (the operator's settings) fill what the spec leaves unset.
    """
    shards = _check_shape(run, stage, shard, merge)
    execution = run.spec.stage_execution(stage)
    run_name = run.metadata.name
    name = names.job_name(run_name, iteration, stage, attempt, shard=None if shard is None else shard[0], merge=merge)
    labels = names.labels(run_name, iteration, stage, attempt)
    if merge:
        labels[names.PART_LABEL] = names.MERGE_SUFFIX
    service = names.service_name(run_name, iteration, attempt)
    nodes = run.spec.train.nodes if stage is StageName.train else 1
    sharded_whole = shards > 1 and shard is None and not merge
    indexes = nodes if nodes > 1 else shards if sharded_whole else 1

    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": CACHE_ENV, "value": SCRATCH_DIR},
        {"name": "MPLCONFIGDIR", "value": f"{TMP_DIR}/matplotlib"},
    ]
    if sharded_whole:
        env.append({"name": COMPLETION_INDEX_ENV, "valueFrom": _completion_index_ref()})
    if stage is StageName.train:
        env += _torchrun_env(run, name, service)
    env += _secret_env(run, stage)

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": execution.image or image_default,
        "command": [ENTRYPOINT],
        "args": _stage_args(stage, iteration, model_uri, shards, shard, merge),
        "env": env,
        "volumeMounts": [
            {"name": "run-spec", "mountPath": RUN_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": SHM_DIR},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            {"name": "tmp", "mountPath": TMP_DIR},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT, capabilities={"drop": ["ALL"]}),
    }
    if execution.image_pull_policy is not None:
        container["imagePullPolicy"] = execution.image_pull_policy
    resources = _resources(execution)
    if resources:
        container["resources"] = resources
    if nodes > 1:
        container["ports"] = [{"name": TORCHRUN_PORT_NAME, "containerPort": TORCHRUN_PORT, "protocol": "TCP"}]

    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": execution.service_account_name or service_account_default,
        # Stages never call the API server: no token in the pod.
        "automountServiceAccountToken": False,
        "securityContext": dict(POD_SECURITY_CONTEXT, seccompProfile={"type": "RuntimeDefault"}),
        "containers": [container],
        "volumes": [
            {"name": "run-spec", "configMap": {"name": names.configmap_name(run_name), "items": [{"key": RUN_FILE_KEY, "path": RUN_FILE_KEY}]}},
            _shm_volume(execution),
            {"name": "scratch", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if execution.priority_class_name is not None:
        pod["priorityClassName"] = execution.priority_class_name
    if execution.node_selector:
        pod["nodeSelector"] = dict(execution.node_selector)
    if execution.tolerations:
        pod["tolerations"] = [toleration.to_yaml_dict() for toleration in execution.tolerations]
    if nodes > 1:
        pod["subdomain"] = service

    spec: dict[str, Any] = {
        "backoffLimit": DEFAULT_BACKOFF_LIMIT if execution.backoff_limit is None else execution.backoff_limit,
        "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
        "podFailurePolicy": _pod_failure_policy(),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if execution.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = execution.active_deadline_seconds
    if indexes > 1:
        spec.update(completionMode="Indexed", completions=indexes, parallelism=indexes)
    if execution.queue_name is not None:
        labels[KUEUE_QUEUE_LABEL] = execution.queue_name
        spec["suspend"] = True

    metadata = _metadata(name, run.metadata.namespace, labels, owner)
    # What the operator reads back from the Job: the model a merge Job must run on, and whether shards need merging.
    metadata["annotations"] = {names.MODEL_ANNOTATION: model_uri}
    if shards > 1:
        metadata["annotations"][names.SHARDS_ANNOTATION] = str(shards)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def iteration(run: EvolutionRun, index: int, input_model_uri: str, *, owner: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Iteration object of iteration `index`, which trains from `input_model_uri`."""
    run_name = run.metadata.name
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "Iteration",
        "metadata": _metadata(names.iteration_name(run_name, index), run.metadata.namespace, names.labels(run_name, iteration=index), owner),
        "spec": {"runName": run_name, "index": index, "inputModelUri": input_model_uri},
    }


def headless_service(run: EvolutionRun, iteration: int, attempt: int, *, owner: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headless Service that gives the pods of a multi-node train Job their DNS names.

    `publishNotReadyAddresses` lets every rank resolve rank 0 before any pod is ready, which is when
    torchrun's rendezvous happens.
    """
    run_name = run.metadata.name
    name = names.service_name(run_name, iteration, attempt)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, run.metadata.namespace, names.labels(run_name, iteration, StageName.train, attempt), owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_NAME_LABEL: names.job_name(run_name, iteration, StageName.train, attempt)},
            "ports": [{"name": TORCHRUN_PORT_NAME, "port": TORCHRUN_PORT, "targetPort": TORCHRUN_PORT, "protocol": "TCP"}],
        },
    }
