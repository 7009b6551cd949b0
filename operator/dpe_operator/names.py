"""Deterministic names and labels of the objects the operator creates for an EvolutionRun.

A handler may run twice for the same event (kopf retries, a restarted operator), so every child has a
name computed from what it is: the run, the iteration, the stage and the attempt. Creating it again
answers 409 instead of starting a second Job.

Names are RFC 1035 labels of at most 63 characters (lowercase alphanumerics and '-', starting with a
letter, ending alphanumeric), valid for every kind including Services. A name is
`<run>-<suffix>`, where the suffix is built from fixed words and integers and reads unambiguously
from the right, so distinct inputs give distinct names. When `<run>-<suffix>` does not fit or is not
a valid label, the run part is shortened and followed by a hash of the whole intended name; the
suffix stays readable.

Job names are kept shorter than 63: the Job controller names each pod of an Indexed Job's host
`<job>-<index>`, and that hostname must itself be a 63-character label.
"""

from __future__ import annotations

import hashlib
import re

from dpe.spec import API_GROUP, StageName

MAX_NAME_LENGTH = 63
"""Longest DNS label, and longest label value."""
MAX_COMPLETION_INDEX = 99_999
"""Highest completion index of an Indexed Job (the API caps completions at 100000)."""
MAX_JOB_NAME_LENGTH = MAX_NAME_LENGTH - len(f"-{MAX_COMPLETION_INDEX}")
"""Job names leave room for the `-<index>` of their pods' hostnames."""
DIGEST_LENGTH = 10
"""Hex characters of the hash that stands in for the shortened part of a name."""

FINALIZER = f"{API_GROUP}/finalizer"
"""On every run the operator serves: its deletion waits for the operator's clean-up (kopf's finalizer)."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "dpe-operator"
RUN_LABEL = "dpe.dev/run"
ITERATION_LABEL = "dpe.dev/iteration"
STAGE_LABEL = "dpe.dev/stage"
ATTEMPT_LABEL = "dpe.dev/attempt"
PART_LABEL = "dpe.dev/part"
"""On a sharded stage's merge Job only: it shares the attempt's labels with the shards' Job."""

MODEL_ANNOTATION = "dpe.dev/model-uri"
"""On a stage Job: the model its stage runs on (a merge Job carries its shards' model)."""
SHARDS_ANNOTATION = "dpe.dev/shards"
"""On a stage Job of a sharded stage (shards, single shard and merge): how many shards the stage has."""

MERGE_SUFFIX = "merge"
"""Last word of the name of a sharded stage's merge Job."""

_RFC1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_NOT_NAME_CHAR = re.compile(r"[^a-z0-9-]")
_NOT_VALUE_CHAR = re.compile(r"[^A-Za-z0-9_.-]")
_LETTER_PREFIX = "dpe-"
"""Put before a run name that does not start with a letter, since RFC 1035 names must."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]


def _check_counts(**counts: int | None) -> None:
    """Refuse negative numbers: a '-' inside a number would make the suffix ambiguous."""
    for what, value in counts.items():
        if value is not None and value < 0:
            raise ValueError(f"{what} must not be negative, got {value}")


def _child_name(run: str, suffix: str, limit: int) -> str:
    """`<run>-<suffix>` when that is a valid label within `limit`, else the shortened, hashed form."""
    wanted = f"{run}-{suffix}"
    if len(wanted) <= limit and _RFC1035_LABEL.fullmatch(wanted):
        return wanted
    room = limit - len(suffix) - DIGEST_LENGTH - 2
    if room < 1:
        raise ValueError(f"name suffix '{suffix}' leaves no room for the run name within {limit} characters")
    head = _NOT_NAME_CHAR.sub("-", run.lower())
    if not head[:1].isalpha():
        head = _LETTER_PREFIX + head
    head = head[:room].rstrip("-")
    return f"{head}-{_digest(wanted)}-{suffix}"


def iteration_name(run: str, iteration: int) -> str:
    """Name of the Iteration object of `run` with index `iteration`."""
    _check_counts(iteration=iteration)
    return _child_name(run, f"i{iteration}", MAX_NAME_LENGTH)


def job_name(
    run: str, iteration: int, stage: StageName, attempt: int, *, shard: int | None = None, merge: bool = False
) -> str:
    """Name of the Job of one stage attempt.

    Without `shard` or `merge` this is the stage's Job (an Indexed Job when the stage runs in
    shards or on several nodes); `shard=i` names a Job for shard i alone; `merge=True` names the Job
    that combines a sharded stage's parts.
    """
    _check_counts(iteration=iteration, attempt=attempt, shard=shard)
    if shard is not None and merge:
        raise ValueError("a Job either runs one shard or merges the shards, not both")
    suffix = f"i{iteration}-{stage.value}-a{attempt}"
    if shard is not None:
        suffix += f"-s{shard}"
    elif merge:
        suffix += f"-{MERGE_SUFFIX}"
    return _child_name(run, suffix, MAX_JOB_NAME_LENGTH)


def service_name(run: str, iteration: int, attempt: int) -> str:
    """Name of the headless Service of a multi-node train Job: the Job's own name.

    Sharing the name (as JobSet does) makes a pod's address read `<job>-<index>.<job>`, and each
    attempt gets a fresh Service along with its fresh Job.
    """
    return job_name(run, iteration, StageName.train, attempt)


def configmap_name(run: str) -> str:
    """Name of the ConfigMap that holds the run's spec for its Jobs."""
    return _child_name(run, "spec", MAX_NAME_LENGTH)


def label_value(text: str) -> str:
    """`text` as a valid label value: unchanged when it is one, else shortened with a hash of it."""
    if len(text) <= MAX_NAME_LENGTH and _LABEL_VALUE.fullmatch(text):
        return text
    room = MAX_NAME_LENGTH - DIGEST_LENGTH - 1
    head = _NOT_VALUE_CHAR.sub("-", text)[:room].strip("-_.")
    return f"{head}-{_digest(text)}" if head else _digest(text)


def labels(
    run: str, iteration: int | None = None, stage: StageName | None = None, attempt: int | None = None
) -> dict[str, str]:
    """Labels of a child object: who manages it and which run, iteration, stage and attempt it serves.

    The operator selects its children by these, so each is present only when it applies (a run's
    ConfigMap has no iteration).
    """
    found = {MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: label_value(run)}
    if iteration is not None:
        found[ITERATION_LABEL] = str(iteration)
    if stage is not None:
        found[STAGE_LABEL] = stage.value
    if attempt is not None:
        found[ATTEMPT_LABEL] = str(attempt)
    return found
