"""A catalogue of malformed EvolutionRun documents, each with the field its refusal must name."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

MINIMAL = {
    "apiVersion": "dpe.dev/v1alpha1",
    "kind": "EvolutionRun",
    "metadata": {"name": "demo"},
    "spec": {"baseModel": "builtin:tiny-qwen2.5-vl"},
}


def with_value(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of the minimal run with the dotted `path` set (or removed when value is DELETE)."""
    document = copy.deepcopy(base or MINIMAL)
    *parents, leaf = path.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return document


DELETE = object()


@dataclass(frozen=True)
class Malformed:
    name: str
    document: Any
    field: str
    words: str = ""


AGENT = {"baseUrl": "https://gw.example/v1", "model": "m"}

MALFORMED = [
    Malformed("wrong kind", with_value("kind", "Deployment"), "kind", "EvolutionRun"),
    Malformed("wrong api version", with_value("apiVersion", "dpe.dev/v1"), "apiVersion"),
    Malformed("missing metadata", with_value("metadata", DELETE), "metadata", "required"),
    Malformed("uppercase name", with_value("metadata.name", "Demo"), "metadata.name"),
    Malformed("name with underscore", with_value("metadata.name", "my_run"), "metadata.name"),
    Malformed("name too long", with_value("metadata.name", "a" * 64), "metadata.name"),
    Malformed("bad namespace", with_value("metadata.namespace", "Team A"), "metadata.namespace"),
    Malformed("missing spec", with_value("spec", DELETE), "spec", "required"),
    Malformed("missing base model", with_value("spec.baseModel", DELETE), "spec.baseModel", "required"),
    Malformed("base model with spaces", with_value("spec.baseModel", "my model"), "spec.baseModel"),
    Malformed("unknown spec field", with_value("spec.iterations", 3), "spec.iterations", "unknown field"),
    Malformed("unknown nested field", with_value("spec.score.windowLow", 0.2), "spec.score.windowLow", "unknown"),
    Malformed("snake case key", with_value("spec.stop.max_iterations_typo", 2), "spec.stop.max_iterations_typo"),
    Malformed("negative probe size", with_value("spec.diagnose.probeSize", -1), "spec.diagnose.probeSize"),
    Malformed("zero samples", with_value("spec.generate.samplesPerIteration", 0), "spec.generate.samplesPerIteration"),
    Malformed("string count", with_value("spec.score.samplesPerItem", "9"), "spec.score.samplesPerItem"),
    Malformed("float count", with_value("spec.score.targetSize", 10.5), "spec.score.targetSize"),
    Malformed("bool as count", with_value("spec.train.maxSteps", True), "spec.train.maxSteps"),
    Malformed(
        "window low above high",
        with_value("spec.score.window", {"low": 0.8, "high": 0.3}),
        "spec.score.window",
        "below high",
    ),
    Malformed("window equal ends", with_value("spec.score.window", {"low": 0.5, "high": 0.5}), "spec.score.window"),
    Malformed("window above one", with_value("spec.score.window", {"low": 0.3, "high": 1.5}), "spec.score.window.high"),
    Malformed("negative learning rate", with_value("spec.train.learningRate", -1e-6), "spec.train.learningRate"),
    Malformed("deepspeed stage 1", with_value("spec.train.deepspeedStage", 1), "spec.train.deepspeedStage"),
    Malformed("unknown rollout backend", with_value("spec.train.rolloutBackend", "sglang"), "spec.train.rolloutBackend"),
    Malformed("one generation", with_value("spec.train.numGenerations", 1), "spec.train.numGenerations"),
    Malformed("unknown mixture policy", with_value("spec.diagnose.mixture.policy", "greedy"), "spec.diagnose.mixture.policy"),
    Malformed("mixture steps not ascending", with_value("spec.diagnose.mixture", {"thresholds": [0.8, 0.7], "rawWeights": [1.0, 1.0, 1.0]}), "spec.diagnose.mixture", "ascending"),
    Malformed("mixture weights do not fit steps", with_value("spec.diagnose.mixture", {"thresholds": [0.5], "rawWeights": [1.0]}), "spec.diagnose.mixture.rawWeights"),
    Malformed("exploration share of one", with_value("spec.diagnose.mixture.explorationShare", 1.0), "spec.diagnose.mixture.explorationShare"),
    Malformed(
        "inline api key",
        with_value("spec.diagnose.judge", {**AGENT, "apiKey": "sk-abcdef123456"}),
        "spec.diagnose.judge",
        "secret",
    ),
    Malformed(
        "inline s3 secret key",
        with_value("spec.storage", {"s3": {"endpoint": "minio:9000", "bucket": "dpe-data", "secretKey": "x"}}),
        "spec.storage.s3",
        "secret",
    ),
    Malformed(
        "credentials in url",
        with_value("spec.diagnose.judge", {**AGENT, "baseUrl": "https://user:pw@gw.example/v1"}),
        "spec.diagnose.judge.baseUrl",
        "credentials",
    ),
    Malformed(
        "key in query string",
        with_value("spec.diagnose.judge", {**AGENT, "baseUrl": "https://gw.example/v1?key=abc"}),
        "spec.diagnose.judge.baseUrl",
        "query",
    ),
    Malformed(
        "secret ref without key",
        with_value("spec.diagnose.judge", {**AGENT, "apiKeySecret": {"name": "keys"}}),
        "spec.diagnose.judge.apiKeySecret.key",
        "required",
    ),
    Malformed(
        "secret ref as a string",
        with_value("spec.diagnose.judge", {**AGENT, "apiKeySecret": "sk-live-123"}),
        "spec.diagnose.judge.apiKeySecret",
    ),
    Malformed("judge without model", with_value("spec.diagnose.judge", {"baseUrl": "https://gw.example/v1"}), "spec.diagnose.judge.model"),
    Malformed("agents without planner", with_value("spec.generate.agents", {"validator": AGENT}), "spec.generate.agents.planner"),
    Malformed("serper without url", with_value("spec.generate.tools", {"search": {"provider": "serper"}}), "spec.generate.tools.search", "baseUrl"),
    Malformed("unknown search provider", with_value("spec.generate.tools", {"search": {"provider": "bing"}}), "spec.generate.tools.search.provider"),
    Malformed(
        "both storages",
        with_value("spec.storage", {"local": {"path": "runs"}, "s3": {"endpoint": "minio:9000", "bucket": "dpe-data"}}),
        "spec.storage",
        "exactly one",
    ),
    Malformed("no storage", with_value("spec.storage", {}), "spec.storage", "exactly one"),
    Malformed("bucket with capitals", with_value("spec.storage", {"s3": {"endpoint": "minio:9000", "bucket": "DPE"}}), "spec.storage.s3.bucket"),
    Malformed("bad quantity", with_value("spec.execution", {"resources": {"limits": {"memory": "lots"}}}), "spec.execution.resources.limits.memory"),
    Malformed("negative quantity", with_value("spec.execution", {"resources": {"limits": {"nvidia.com/gpu": -1}}}), "spec.execution.resources.limits.nvidia.com/gpu"),
    Malformed("bad toleration operator", with_value("spec.execution", {"tolerations": [{"operator": "In"}]}), "spec.execution.tolerations[0].operator"),
    Malformed("negative backoff limit", with_value("spec.train.execution", {"backoffLimit": -2}), "spec.train.execution.backoffLimit"),
    Malformed("zero deadline", with_value("spec.execution", {"activeDeadlineSeconds": 0}), "spec.execution.activeDeadlineSeconds"),
    Malformed("bad pull policy", with_value("spec.execution", {"imagePullPolicy": "Sometimes"}), "spec.execution.imagePullPolicy"),
    Malformed("suspend as string", with_value("spec.suspend", "yes"), "spec.suspend"),
    Malformed("zero iterations", with_value("spec.stop.maxIterations", 0), "spec.stop.maxIterations"),
    Malformed("target score above one", with_value("spec.stop.targetScore", 75), "spec.stop.targetScore"),
    Malformed("empty budget", with_value("spec.stop.budget", {}), "spec.stop.budget", "gpuHours"),
    Malformed("zero patience", with_value("spec.stop.plateau", {"patience": 0}), "spec.stop.plateau.patience"),
    Malformed("plateau on unknown metric", with_value("spec.stop.plateau", {"metric": "mmstar"}), "spec", "stop.plateau.metric"),
    Malformed("empty benchmark suite", with_value("spec.evaluate.benchmarks", []), "spec.evaluate.benchmarks"),
    Malformed(
        "duplicate benchmarks",
        with_value("spec.evaluate.benchmarks", [{"name": "a", "uri": "builtin:world"}, {"name": "a", "uri": "builtin:world"}]),
        "spec.evaluate.benchmarks",
        "unique",
    ),
    Malformed("benchmark bad uri", with_value("spec.evaluate.benchmarks", [{"name": "a", "uri": "ftp://x"}]), "spec.evaluate.benchmarks[0].uri"),
    Malformed("retry multiplier below one", with_value("spec.retry.backoffMultiplier", 0.5), "spec.retry.backoffMultiplier"),
    Malformed("spec is a list", with_value("spec", [1, 2]), "spec"),
    Malformed("document is a list", [MINIMAL], "(document)", "mapping"),
    Malformed("document is a string", "just text", "(document)", "mapping"),
    Malformed("empty document", None, "(document)", "empty"),
]
