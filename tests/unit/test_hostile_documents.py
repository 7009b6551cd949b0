"""Hostile EvolutionRun documents: `dpe validate` gives each a clean verdict, quickly and in bounded memory.

A clean verdict is exit status 0 with one `valid EvolutionRun` line, or exit status 1 with one
`FILE: FIELD: MESSAGE` line per problem; never a traceback, never a hang, never a value that looks
like a credential. The corpus has three parts: documents written by hand (YAML attacks and the
nonsense of issue 13), documents derived from a run that sets every field (`$(` in each string,
absurd numbers in each number), and documents hypothesis makes by mutating a valid run.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpe.cli import main
from dpe.crd import build_crds
from dpe.manifest import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_NODES, MAX_PROBLEMS, MAX_SCALAR_CHARS
from dpe.spec.limits import MAX_INDEXED_COMPLETIONS
from dpe_testkit.crdcheck import crd_problems, crd_schema
from dpe_testkit.malformed import AGENT, MINIMAL, with_value

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 2.0
"""Longest a verdict may take."""
MEGABYTES = 300
"""Most memory `dpe validate` may use on the worst documents."""
SECRET = "sk-proj-Zq8XwV3mN7bR2tY6uK1pL4sD"
"""A value shaped like an API key: it must never reach the output."""
SUBSTITUTION = "$(DPE_S3_SECRET_KEY)"

RUN_CRD = build_crds()["evolutionruns.yaml"]

# A run that sets every field of the spec that holds a string or a number (the S3 store; the local
# store's path is in LOCAL_STORE). `test_the_full_run_covers_every_field` keeps it complete.
FULL_TEXT = """\
apiVersion: dpe.dev/v1alpha1
kind: EvolutionRun
metadata: {name: full, namespace: team-a}
spec:
  baseModel: s3://models/qwen2.5-vl-7b-instruct
  data:
    probeSet: builtin:world
    imagePool: s3://datasets/unlabeled-images
    seedPool: /data/seeds
    worldImageSize: 448
    worldDifficulties: [1, 2]
    worldFormats: [free_text, numerical]
  diagnose:
    probeSize: 200
    probeSeed: 42
    minImageSide: 224
    sampling: {temperature: 0.7, topP: 0.9, topK: 40, maxTokens: 4096}
    judge: &endpoint
      baseUrl: https://gw.example/v1
      model: judge-vl
      apiKeySecret: {name: agent-keys, key: gateway}
      maxTokens: 4096
      timeoutSeconds: 300
      maxConcurrency: 16
      requestsPerMinute: 120
      tokensPerMinute: 100000
      temperature: 0.7
      inputUsdPerMillionTokens: 1.5
      outputUsdPerMillionTokens: 6.0
    mixture:
      policy: smoothed
      minCount: 5
      priorStrength: 10.0
      explorationShare: 0.05
      thresholds: [0.7, 0.75, 0.85, 0.9]
      rawWeights: [2.0, 1.5, 1.0, 0.8, 0.5]
    execution: {image: "registry.example/dpe:1"}
  generate:
    samplesPerIteration: 1000
    shards: 4
    maxRegenerations: 3
    seed: 11
    budgetUsd: 400
    agents:
      planner: *endpoint
      imageSelector: *endpoint
      editPlanner: *endpoint
      questionGenerator: *endpoint
      validator: *endpoint
    tools:
      search: {provider: serper, baseUrl: "https://search.example", apiKeySecret: {name: agent-keys, key: serper},
               resultsPerQuery: 3}
      edit: {provider: openai, baseUrl: "https://gw.example/v1", model: image-edit,
             apiKeySecret: {name: agent-keys, key: gateway}}
    execution: {imagePullPolicy: Always}
  score:
    samplesPerItem: 9
    sampling: {temperature: 1.0, topP: 1.0, topK: 40, maxTokens: 4096}
    window: {low: 0.3, high: 0.8}
    targetSize: 1024
    shards: 2
    execution: {backoffLimit: 1}
  train:
    numGenerations: 8
    learningRate: 1.0e-6
    weightDecay: 0.01
    beta: 0.01
    epsilonLow: 0.2
    epsilonHigh: 0.3
    dualClip: 3.0
    maxGradNorm: 1.0
    maxSteps: 10
    promptsPerStep: 512
    promptsPerUpdate: 128
    microBatchSize: 4
    maxCompletionLength: 4096
    temperature: 1.0
    topP: 0.99
    rewardWeights: {accuracy: 0.9, format: 0.1}
    minPixels: 262144
    maxPixels: 4194304
    checkpointEverySteps: 5
    seed: 0
    nodes: 2
    gpusPerNode: 8
    deepspeedStage: 3
    rolloutBackend: vllm-colocate
    execution:
      resources: {requests: {cpu: 64, memory: 900Gi, nvidia.com/gpu: 8}, limits: {nvidia.com/gpu: 8}}
  evaluate:
    benchmarks:
      - {name: mmstar, uri: s3://datasets/benchmarks/mmstar, limit: 500, family: mmstar}
      - {name: world, uri: "builtin:world"}
    sampling: {temperature: 0.0, topP: 1.0, topK: -1, maxTokens: 4096}
    judge: *endpoint
    shards: 4
    execution: {activeDeadlineSeconds: 3600}
  execution:
    image: registry.example/dpe:1
    imagePullPolicy: IfNotPresent
    resources: {requests: {cpu: 16, memory: 128Gi}, limits: {cpu: "32", memory: 256Gi, nvidia.com/gpu: 1}}
    nodeSelector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
    tolerations:
      - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
      - {key: dedicated, operator: Equal, value: ml, effect: NoExecute, tolerationSeconds: 60}
    priorityClassName: ml-training
    queueName: research-gpus
    serviceAccountName: dpe-workload
    backoffLimit: 0
    activeDeadlineSeconds: 21600
  stop:
    maxIterations: 3
    targetScore: 0.75
    plateau: {metric: overall, minDelta: 0.005, patience: 2}
    budget: {gpuHours: 2000, agentSpendUsd: 1500}
    deadlineSeconds: 604800
  regressionGuard: {enabled: true, metric: mmstar, tolerance: 0.01}
  retry: {maxAttempts: 3, backoffSeconds: 60, backoffMultiplier: 2.0, maxBackoffSeconds: 900, maxDisruptions: 20}
  suspend: false
  storage:
    s3:
      endpoint: http://minio.minio.svc:9000
      bucket: dpe-artifacts
      region: us-east-1
      secure: false
      prefix: team-a/
      credentialsSecret: {name: dpe-minio, accessKeyKey: accessKey, secretKeyKey: secretKey}
    deleteOnRunDeletion: false
"""
FULL: dict[str, Any] = json.loads(json.dumps(yaml.safe_load(FULL_TEXT)))
"""The full run as data, each endpoint its own copy (what the anchors of FULL_TEXT stand for)."""
LOCAL_STORE = {"local": {"path": "/var/dpe/runs"}}


class _PlainDumper(yaml.CSafeDumper):
    """Writes a value that occurs twice twice, instead of as an anchor and an alias (which a run refuses)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_PlainDumper, sort_keys=False)


FULL_RUN_TEXT = dump(FULL)


# ------------------------------------------------------------------------------------------------
# The verdict
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def fields(self) -> list[str]:
        """The field path of each problem line."""
        return [line.split(": ", 2)[1] for line in self.stderr.splitlines()]


def validate(path: Path) -> Verdict:
    """`dpe validate PATH` in this process, checked for a clean verdict."""
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["validate", str(path)])
    seconds = time.perf_counter() - started
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    verdict = Verdict(result.exit_code, result.stdout, result.stderr, seconds)
    assert_clean(verdict, str(path))
    return verdict


def assert_clean(verdict: Verdict, name: str) -> None:
    assert verdict.seconds < SECONDS, f"{name}: verdict took {verdict.seconds:.2f} s"
    assert "Traceback" not in verdict.output
    assert verdict.exit_code in (0, 1), verdict.output
    if verdict.exit_code == 0:
        assert verdict.stderr == ""
        assert re.fullmatch(rf"{re.escape(name)}: valid EvolutionRun [a-z0-9-]+/[a-z0-9-]+\n", verdict.stdout)
        return
    lines = verdict.stderr.splitlines()
    assert verdict.stdout == "" and 0 < len(lines) <= MAX_PROBLEMS + 1, verdict.stderr
    for line in lines:
        assert line.startswith(f"{name}: ") and line.count(": ") >= 2, line
        assert line.isprintable(), ascii(line)
        assert SECRET not in line and SECRET[8:20] not in line, line


def write(tmp_path: Path, content: str | bytes, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(content)
    return path


# ------------------------------------------------------------------------------------------------
# Written by hand
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    name: str
    content: str | bytes
    field: str = "(document)"
    """The field the refusal names; empty for a valid document."""
    words: str = ""


def refused(name: str, path: str, value: Any, words: str = "", base: dict[str, Any] | None = None) -> Hostile:
    """The full run (or `base`) with one field set, refused at that field."""
    return Hostile(name, dump(with_value(path, value, base or FULL)), path, words)


MINIMAL_TEXT = dump(MINIMAL)
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)
COLLIDING_SECRETS = with_value(
    "spec.evaluate.judge", {**AGENT, "apiKeySecret": {"name": "agent-keys", "key": "GATEWAY"}}, FULL
)

YAML_ATTACKS = [
    Hostile("alias bomb", BOMB, words="aliases"),
    Hostile("alias bomb inside a run", MINIMAL_TEXT + "  x: &a [1, 1, 1, 1, 1]\n  y: [*a, *a, *a, *a]\n", words="aliases"),
    Hostile("the full run's anchors", FULL_TEXT, words="aliases"),
    Hostile("recursive alias", "a: &a [*a]\n", words="aliases"),
    Hostile("anchor without alias", MINIMAL_TEXT.replace("spec:", "spec: &s"), words="aliases"),
    Hostile("merge key", MINIMAL_TEXT + "  generate: {<<: {shards: 2}}\n", words="merge keys"),
    Hostile("kind Pod then EvolutionRun", "kind: Pod\n" + MINIMAL_TEXT, words="duplicate key 'kind'"),
    Hostile("duplicate spec field", MINIMAL_TEXT + "  baseModel: builtin:other\n", words="duplicate key 'baseModel'"),
    Hostile("duplicate nested key", MINIMAL_TEXT + "  train: {nodes: 1, nodes: 100}\n", words="duplicate key 'nodes'"),
    Hostile("duplicate key by value", MINIMAL_TEXT + "  x: {1: a, 1.0: b}\n", words="duplicate key"),
    Hostile("500-deep flow nesting", MINIMAL_TEXT + "  x: " + "[" * 500 + "]" * 500 + "\n", words="nested deeper"),
    Hostile("500-deep block nesting", MINIMAL_TEXT + "  x:\n" + "".join("  " * (i + 2) + "- \n" for i in range(500))),
    Hostile("one level too deep", MINIMAL_TEXT + "  x: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n", words="nested deeper"),
    Hostile("5000-digit integer", MINIMAL_TEXT + "  train: {nodes: " + "9" * 5000 + "}\n", words="more than 30 digits"),
    Hostile("31-digit integer", MINIMAL_TEXT + "  train: {nodes: " + "1" * 31 + "}\n", words="more than 30 digits"),
    Hostile("5000-digit hex integer", MINIMAL_TEXT + "  train: {nodes: 0x" + "f" * 5000 + "}\n", words="digits"),
    Hostile("sexagesimal integer", MINIMAL_TEXT + "  train: {nodes: 1:2:3:4:5:6}\n", "spec.train.nodes"),
    Hostile("hex without digits", MINIMAL_TEXT + "  train: {nodes: 0x_}\n", words="cannot read"),
    Hostile("float with 5000 digits", MINIMAL_TEXT + "  train: {learningRate: " + "1" * 5000 + ".0}\n", "spec.train.learningRate", "finite"),
    Hostile("lone surrogate escape", MINIMAL_TEXT.replace("builtin:tiny-qwen2.5-vl", '"\\ud800"'), words="Unicode"),
    Hostile("lone surrogate bytes", MINIMAL_TEXT.encode().replace(b"tiny", b"\xed\xa0\x80"), "(file)", "UTF-8"),
    Hostile("invalid UTF-8", MINIMAL_TEXT.encode().replace(b"tiny", b"\xff\xfe"), "(file)", "UTF-8"),
    Hostile("UTF-16 text", MINIMAL_TEXT.encode("utf-16"), "(file)", "UTF-8"),
    Hostile("NUL byte", MINIMAL_TEXT.replace("tiny", "ti\x00ny"), words="control characters"),
    Hostile("NUL escape in a path", MINIMAL_TEXT.replace("builtin:tiny-qwen2.5-vl", '"/models/a\\0b"'), "spec.baseModel", "control"),
    Hostile("terminal escape in a key", MINIMAL_TEXT + '  "\\e[31mred": 1\n', "spec.\\x1b[31mred", "unknown field"),
    Hostile("bell in a value", dump(with_value("spec.execution", {"image": "dpe\a"}, MINIMAL)), "spec.execution.image", "control"),
    Hostile("python object tag", MINIMAL_TEXT + "  x: !!python/object/apply:os.system [echo]\n", words="constructor"),
    Hostile("unknown tag", MINIMAL_TEXT + "  x: !secret abc\n", words="constructor"),
    Hostile("binary base model", MINIMAL_TEXT.replace("builtin:tiny-qwen2.5-vl", "!!binary aGVsbG8="), "spec.baseModel"),
    Hostile("broken binary", MINIMAL_TEXT.replace("builtin:tiny-qwen2.5-vl", "!!binary a"), words="base64"),
    Hostile("impossible date", MINIMAL_TEXT.replace("builtin:tiny-qwen2.5-vl", "2023-02-30"), words="cannot read"),
    Hostile("date as a base model", MINIMAL_TEXT.replace("builtin:tiny-qwen2.5-vl", "2023-02-28"), "spec.baseModel"),
    Hostile("set as a spec", MINIMAL_TEXT.replace("spec:\n", "spec: !!set {a, b}\nx:\n"), "spec"),
    Hostile("complex key", MINIMAL_TEXT + "  ? [a, b]\n  : c\n", words="unhashable"),
    Hostile("two documents", MINIMAL_TEXT + "---\n" + MINIMAL_TEXT, words="one YAML document"),
    Hostile("empty file", "", words="empty"),
    Hostile("only a comment", "# nothing\n", words="empty"),
    Hostile("only a separator", "---\n...\n", words="empty"),
    Hostile("a bare scalar", "EvolutionRun\n", words="got str"),
    Hostile("a list of runs", dump([MINIMAL, MINIMAL]), words="got list"),
    Hostile("tab indentation", MINIMAL_TEXT.replace("  baseModel", "\tbaseModel"), words="not valid YAML"),
    Hostile("unclosed quote", MINIMAL_TEXT + '  x: "abc\n', words="not valid YAML"),
    Hostile("unclosed bracket", MINIMAL_TEXT + "  x: [abc\n", words="not valid YAML"),
    Hostile("directive", "%YAML 1.1\n%TAG ! tag:example.com,2000:\n---\n" + MINIMAL_TEXT + "  x: !foo 1\n", words="constructor"),
    Hostile("a value over the scalar limit", MINIMAL_TEXT + "  x: " + "a" * (MAX_SCALAR_CHARS + 1) + "\n", words="longer than"),
    Hostile("a plain key too long for YAML", MINIMAL_TEXT + "  " + "k" * 2000 + ": 1\n", words="not valid YAML"),
    Hostile("a key over the scalar limit", MINIMAL_TEXT + "  ? " + "k" * (MAX_SCALAR_CHARS + 1) + "\n  : 1\n", words="longer than"),
    Hostile("a long unknown key", MINIMAL_TEXT + "  ? " + "k" * 60_000 + "\n  : 1\n", "spec." + "k" * 60 + "...", "unknown field"),
    Hostile("too many unknown fields", MINIMAL_TEXT + "".join(f"  k{i}: 1\n" for i in range(200)), "spec.k0", "unknown field"),
    Hostile("one byte over the size limit", MINIMAL_TEXT + "#" * (MAX_DOCUMENT_BYTES - len(MINIMAL_TEXT)) + "\n", "(file)", "larger than"),
    Hostile("yes as a count", MINIMAL_TEXT + "  train: {nodes: yes}\n", "spec.train.nodes"),
    Hostile("null spec", MINIMAL_TEXT.replace("spec:\n  baseModel: builtin:tiny-qwen2.5-vl", "spec: ~"), "spec"),
    Hostile("quoted merge key", MINIMAL_TEXT + "  '<<': {a: 1}\n", "spec.<<", "unknown field"),
    Hostile("homoglyph name", MINIMAL_TEXT.replace("name: demo", "name: d\u0435mo"), "metadata.name"),
    Hostile("kind missing", MINIMAL_TEXT.replace("kind: EvolutionRun\n", ""), "kind", "expected EvolutionRun"),
    Hostile("kind as a list", MINIMAL_TEXT.replace("kind: EvolutionRun", "kind: [EvolutionRun]"), "kind"),
    # Hostile to a reader, yet valid runs.
    Hostile("byte order mark", "\ufeff" + MINIMAL_TEXT, ""),
    Hostile("CRLF line ends", MINIMAL_TEXT.replace("\n", "\r\n"), ""),
    Hostile("flow style", '{"apiVersion": "dpe.dev/v1alpha1", "kind": "EvolutionRun", "metadata": {"name": "demo"}, '
            '"spec": {"baseModel": "builtin:tiny-qwen2.5-vl"}}', ""),
    Hostile("emoji in a model name", dump(with_value("spec.diagnose.judge", {**AGENT, "model": "vl-\U0001f600"}, MINIMAL)), ""),
    Hostile("dollar without parenthesis", dump(with_value("spec.baseModel", "/models/$HOME/a$", MINIMAL)), ""),
    Hostile("the deepest a run needs", dump(with_value("spec.train.execution", {"resources": {"limits": {"cpu": 1}}}, MINIMAL)), ""),
    Hostile("at the size limit", MINIMAL_TEXT + "#" * (MAX_DOCUMENT_BYTES - len(MINIMAL_TEXT) - 1) + "\n", ""),
]

# The nonsense issue 13 found accepted, and more of its kind.
NONSENSE = [
    Hostile("1e30 samples", MINIMAL_TEXT + f"  generate: {{samplesPerIteration: {10**30}}}\n", words="digits"),
    refused("1e29 samples", "spec.generate.samplesPerIteration", 10**29),
    refused("infinite learning rate", "spec.train.learningRate", math.inf, "finite"),
    refused("NaN learning rate", "spec.train.learningRate", math.nan, "finite"),
    refused("infinite timeout", "spec.diagnose.judge.timeoutSeconds", math.inf, "finite"),
    refused("negative infinite backoff", "spec.retry.backoffSeconds", -math.inf),
    refused("NaN window", "spec.score.window.low", math.nan),
    refused("200000 shards", "spec.score.shards", 200_000),
    refused("one shard over the Indexed Job limit", "spec.evaluate.shards", MAX_INDEXED_COMPLETIONS + 1),
    refused("100001 nodes", "spec.train.nodes", 100_001),
    refused("1000 GPUs per node", "spec.train.gpusPerNode", 1000),
    refused("empty nodeSelector key", "spec.execution.nodeSelector", {"": "x"}, "qualified name"),
    refused("nodeSelector key with a space", "spec.execution.nodeSelector", {"gpu type": "a"}, "qualified name"),
    refused("nodeSelector value too long", "spec.execution.nodeSelector", {"pool": "a" * 64}),
    refused("nodeSelector value with a slash", "spec.execution.nodeSelector", {"pool": "a/b"}, "label value"),
    refused("65 nodeSelector labels", "spec.execution.nodeSelector", {f"k{i}": "v" for i in range(65)}),
    refused("Exists with a value", "spec.execution.tolerations", [{"key": "gpu", "operator": "Exists", "value": "x"}], "leave value out"),
    refused("Equal without a key", "spec.execution.tolerations", [{"operator": "Equal", "value": "x"}], "key is required"),
    refused("toleration seconds without NoExecute", "spec.execution.tolerations", [{"key": "a", "tolerationSeconds": 5}], "NoExecute"),
    refused("unknown taint effect", "spec.execution.tolerations", [{"key": "a", "effect": "NoRun"}]),
    refused("taint key with a space", "spec.execution.tolerations", [{"key": "a b", "operator": "Exists"}]),
    refused("65 tolerations", "spec.execution.tolerations", [{"operator": "Exists"}] * 65),
    refused("negative toleration seconds", "spec.execution.tolerations", [{"key": "a", "effect": "NoExecute", "tolerationSeconds": -1}]),
    refused("S3 prefix ../", "spec.storage.s3.prefix", "../", "'..'"),
    refused("S3 prefix with a dot segment", "spec.storage.s3.prefix", "a/./b/"),
    refused("S3 prefix with an empty segment", "spec.storage.s3.prefix", "a//"),
    refused("S3 key with ..", "spec.baseModel", "s3://models/a/../b", "'..'"),
    refused("S3 key ending in ..", "spec.evaluate.benchmarks", [{"name": "a", "uri": "s3://datasets/x/.."}]),
    refused("bucket with two dots", "spec.storage.s3.bucket", "dpe..artifacts"),
    refused("bucket ending in a hyphen", "spec.storage.s3.bucket", "dpe-"),
    refused("endpoint port out of range", "spec.storage.s3.endpoint", "minio:99999", "port"),
    refused("URL port out of range", "spec.diagnose.judge.baseUrl", "https://gw.example:70000/v1", "port"),
    refused("NUL in a local path", "spec.storage", {"local": {"path": "runs\x00/etc"}}, "control"),
    refused("newline in an image", "spec.execution.image", "dpe:1\nevil"),
    refused("same access and secret key", "spec.storage.s3.credentialsSecret", {"name": "m", "accessKeyKey": "k", "secretKeyKey": "k"}),
    Hostile("two secret references, one variable", dump(COLLIDING_SECRETS), "spec", "DPE_SECRET_AGENT_KEYS__GATEWAY"),
    refused("$( in the base model", "spec.baseModel", "/$(DPE_S3_SECRET_KEY)", "kubelet"),
    refused("$$( in the base model", "spec.baseModel", "/$$(DPE_S3_SECRET_KEY)", "kubelet"),
    refused("$( in a model name", "spec.diagnose.judge.model", "$(DPE_SECRET_AGENT_KEYS__GATEWAY)", "kubelet"),
    refused("$( in a hub id", "spec.baseModel", "org/$(X)"),
    refused("$( in a URL", "spec.diagnose.judge.baseUrl", "https://gw.example/$(X)", "kubelet"),
    refused("8K is not a quantity", "spec.execution.resources", {"limits": {"memory": "8K"}}),
    refused("quantity beyond int64", "spec.execution.resources", {"limits": {"memory": "9Ei"}}, "larger than"),
    refused("quantity exponent 999", "spec.execution.resources", {"limits": {"memory": "1e999"}}),
    refused("quantity of 70 digits", "spec.execution.resources", {"limits": {"memory": "1" * 70}}),
    refused("half a GPU", "spec.execution.resources", {"limits": {"nvidia.com/gpu": "500m"}}, "whole number"),
    refused("GPU request below limit", "spec.execution.resources", {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}),
    refused("request above limit", "spec.execution.resources", {"requests": {"cpu": "4"}, "limits": {"cpu": "2000m"}}, "must not exceed"),
    refused("resource name ending in a slash", "spec.execution.resources", {"limits": {"nvidia.com/": 1}}),
    refused("negative seed", "spec.train.seed", -1),
    refused("seed beyond numpy", "spec.diagnose.probeSeed", 2**32),
    refused("top-k of a billion", "spec.diagnose.sampling.topK", 10**9),
    refused("temperature of a million", "spec.train.temperature", 1e6),
    refused("learning rate above one", "spec.train.learningRate", 5.0),
    refused("weight decay above one", "spec.train.weightDecay", 2.0),
    refused("epsilonLow above one", "spec.train.epsilonLow", 1.5),
    refused("billion-token answers", "spec.diagnose.sampling.maxTokens", 10**9),
    refused("a century-long deadline", "spec.execution.activeDeadlineSeconds", 100 * 366 * 86_400),
    refused("a million iterations", "spec.stop.maxIterations", 10**6),
    refused("a thousand attempts", "spec.retry.maxAttempts", 1000),
    refused("four world difficulties", "spec.data.worldDifficulties", [1, 1, 2, 3]),
    refused("an unknown world format", "spec.data.worldFormats", ["essay"]),
    refused("no world format", "spec.data.worldFormats", []),
    refused("a negative generation seed", "spec.generate.seed", -1),
    refused("65 benchmarks", "spec.evaluate.benchmarks", [{"name": f"b{i}", "uri": "builtin:world"} for i in range(65)]),
    refused("metric with capitals", "spec.stop.plateau.metric", "MMStar"),
    refused("minimum image side of a million", "spec.diagnose.minImageSide", 10**6),
    refused("a trillion-dollar budget", "spec.stop.budget.agentSpendUsd", 1e12),
    refused("price per token of a billion", "spec.diagnose.judge.outputUsdPerMillionTokens", 1e9),
    refused("a billion requests in flight", "spec.diagnose.judge.maxConcurrency", 10**9),
    refused("min delta above one", "spec.stop.plateau.minDelta", 2.0),
]

# A credential pasted into the wrong field is refused without being repeated.
CREDENTIALS = [
    refused("key as the base URL", "spec.diagnose.judge.baseUrl", SECRET),
    refused("key as the base model", "spec.baseModel", SECRET),
    refused("key in a URL path", "spec.diagnose.judge.baseUrl", f"https://gw.example/v1/{SECRET} x"),
    refused("key as a pull policy", "spec.execution.imagePullPolicy", SECRET),
    refused("key as a quantity", "spec.execution.resources", {"limits": {"cpu": SECRET}}),
    refused("key as a metric", "spec.stop.plateau.metric", SECRET),
    refused("key as a toleration operator", "spec.execution.tolerations", [{"key": "a", "operator": SECRET}]),
    refused("key as a field name", "spec.diagnose", {SECRET: 1}),
    refused("key as an S3 prefix", "spec.storage.s3.prefix", SECRET),
    refused("key inline", "spec.diagnose.judge", {**AGENT, "apiKey": SECRET}, "secret"),
    refused("AWS key as an endpoint", "spec.storage.s3.endpoint", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    Hostile("key as the kind", MINIMAL_TEXT.replace("kind: EvolutionRun", f"kind: {SECRET}"), "kind"),
    Hostile("key as the apiVersion", MINIMAL_TEXT.replace("apiVersion: dpe.dev/v1alpha1", f"apiVersion: {SECRET}"), "apiVersion"),
    Hostile("key as a duplicate key", MINIMAL_TEXT + f"  {SECRET}: 1\n  {SECRET}: 2\n", words="duplicate key"),
]


def _refusal_of(case: Hostile, verdict: Verdict) -> None:
    if not case.field:
        assert verdict.exit_code == 0, verdict.output
        return
    assert verdict.exit_code == 1, f"accepted: {case.name}"
    assert any(f == case.field or f.startswith(case.field + ".") or f.startswith(case.field + "[") for f in verdict.fields), verdict.stderr
    assert case.words in verdict.stderr, verdict.stderr
    assert SECRET not in verdict.output


@pytest.mark.parametrize("case", YAML_ATTACKS + NONSENSE + CREDENTIALS, ids=lambda c: c.name)
def test_hand_written_document_gets_a_clean_verdict(case: Hostile, tmp_path: Path) -> None:
    _refusal_of(case, validate(write(tmp_path, case.content)))


# ------------------------------------------------------------------------------------------------
# Derived from the full run: every string field with `$(`, every number field absurd
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    schema_path: str
    """With `[]` for list items, `{}` for map values and `{key}` for map keys."""
    path: tuple[str | int, ...]
    kind: str
    """string, number, key or int-or-string."""


def _leaves(schema: dict[str, Any], value: Any, schema_path: str, path: tuple[str | int, ...]) -> Iterator[Leaf]:
    if "properties" in schema and isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(schema["properties"][key], child, f"{schema_path}.{key}", (*path, key))
    elif isinstance(schema.get("additionalProperties"), dict) and isinstance(value, dict):
        for key, child in value.items():
            yield Leaf(f"{schema_path}{{key}}", (*path, key), "key")
            yield from _leaves(schema["additionalProperties"], child, f"{schema_path}{{}}", (*path, key))
    elif "items" in schema and isinstance(value, list):
        for index, child in enumerate(value):
            yield from _leaves(schema["items"], child, f"{schema_path}[]", (*path, index))
    elif schema.get("x-kubernetes-int-or-string"):
        yield Leaf(schema_path, path, "int-or-string")
    elif schema.get("type") == "string":
        yield Leaf(schema_path, path, "string")
    elif schema.get("type") in ("integer", "number"):
        yield Leaf(schema_path, path, "number")


def _schema_leaves(schema: dict[str, Any], schema_path: str) -> Iterator[tuple[str, str]]:
    if "properties" in schema:
        for key, child in schema["properties"].items():
            yield from _schema_leaves(child, f"{schema_path}.{key}")
    elif isinstance(schema.get("additionalProperties"), dict):
        yield f"{schema_path}{{key}}", "key"
        yield from _schema_leaves(schema["additionalProperties"], f"{schema_path}{{}}")
    elif "items" in schema:
        yield from _schema_leaves(schema["items"], f"{schema_path}[]")
    elif schema.get("x-kubernetes-int-or-string"):
        yield schema_path, "int-or-string"
    elif schema.get("type") in ("string", "integer", "number"):
        yield schema_path, "number" if schema["type"] != "string" else "string"


SPEC_SCHEMA = crd_schema(RUN_CRD)["properties"]["spec"]
ALL_LEAVES = [
    *_leaves(SPEC_SCHEMA, FULL["spec"], "spec", ("spec",)),
    *_leaves(SPEC_SCHEMA["properties"]["storage"], LOCAL_STORE, "spec.storage", ("spec", "storage")),
]
_SAME_MODEL = [
    (re.compile(r"^spec\.(diagnose|generate|score|train|evaluate)\.execution\."), "spec.execution."),
    (re.compile(r"^spec\.(diagnose\.judge|evaluate\.judge|generate\.agents\.\w+)\."), "spec.<endpoint>."),
]


def _model_path(schema_path: str) -> str:
    """A field's path with the places that hold the same model (stage executions, endpoints) made one."""
    for pattern, replacement in _SAME_MODEL:
        schema_path = pattern.sub(replacement, schema_path)
    return schema_path


_FIRST_LEAVES: dict[str, Leaf] = {}
for _leaf in ALL_LEAVES:
    _FIRST_LEAVES.setdefault(_model_path(_leaf.schema_path), _leaf)
LEAVES = list(_FIRST_LEAVES.values())
"""One leaf per field of each model, so that the endpoint written seven times is mutated once."""


def _display(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _set(document: dict[str, Any], path: tuple[str | int, ...], value: Any, rename: bool = False) -> dict[str, Any]:
    document = copy.deepcopy(document)
    if path[:3] == ("spec", "storage", "local"):
        document["spec"]["storage"] = copy.deepcopy(LOCAL_STORE)
    node: Any = document
    for part in path[:-1]:
        node = node[part]
    if rename:
        node[path[-1] + value] = node.pop(path[-1])
    else:
        node[path[-1]] = value
    return document


def test_the_full_run_is_valid_and_covers_every_field(tmp_path: Path) -> None:
    local = with_value("spec.storage", LOCAL_STORE, FULL)
    for document in (FULL, local):
        assert validate(write(tmp_path, dump(document))).exit_code == 0
        assert crd_problems(RUN_CRD, document) == []
    covered = {_model_path(leaf.schema_path) for leaf in LEAVES}
    missing = [path for path, _ in _schema_leaves(SPEC_SCHEMA, "spec") if _model_path(path) not in covered]
    assert missing == [], "add these fields to FULL_TEXT so the hostile documents reach them"


SUBSTITUTED = [leaf for leaf in LEAVES if leaf.kind in ("string", "key", "int-or-string")]


@pytest.mark.parametrize("leaf", SUBSTITUTED, ids=lambda leaf: _display(leaf.path))
def test_substitution_is_refused_in_every_spec_string(leaf: Leaf, tmp_path: Path) -> None:
    if leaf.kind == "key":
        document = _set(FULL, leaf.path, SUBSTITUTION, rename=True)
        field = _display(leaf.path[:-1])
    else:
        value = _value_at(FULL, leaf.path) if leaf.path[:3] != ("spec", "storage", "local") else "runs"
        document = _set(FULL, leaf.path, f"{value}{SUBSTITUTION}" if isinstance(value, str) else SUBSTITUTION)
        field = _display(leaf.path)
    verdict = validate(write(tmp_path, dump(document)))
    assert verdict.exit_code == 1
    assert any(f.startswith(field) for f in verdict.fields), verdict.stderr
    if leaf.kind != "int-or-string":  # the API server checks quantities itself, when it reads the Job
        assert crd_problems(RUN_CRD, document), "the CRD accepts what dpe validate refuses"


def _value_at(document: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


NUMBERS = [leaf for leaf in LEAVES if leaf.kind == "number"]
ABSURD = [10**25, -math.inf, math.nan]
"""Above every bound, below every bound, and neither."""


@pytest.mark.parametrize("leaf", NUMBERS, ids=lambda leaf: _display(leaf.path))
def test_absurd_numbers_are_refused_in_every_number_field(leaf: Leaf, tmp_path: Path) -> None:
    for index, number in enumerate(ABSURD):
        verdict = validate(write(tmp_path, dump(_set(FULL, leaf.path, number)), f"run{index}.yaml"))
        assert verdict.exit_code == 1, f"{_display(leaf.path)} accepted {number}"
        assert _display(leaf.path) in verdict.fields, verdict.stderr


def test_every_spec_number_has_an_upper_bound() -> None:
    def unbounded(schema: dict[str, Any], path: str) -> Iterator[str]:
        if schema.get("type") in ("integer", "number") and "maximum" not in schema and "enum" not in schema:
            yield path
        for key, child in schema.get("properties", {}).items():
            yield from unbounded(child, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from unbounded(schema[key], f"{path}[]")

    assert list(unbounded(SPEC_SCHEMA, "spec")) == []


def test_corpus_has_at_least_two_hundred_documents() -> None:
    written = len(YAML_ATTACKS) + len(NONSENSE) + len(CREDENTIALS)
    derived = len(SUBSTITUTED) + len(NUMBERS) * len(ABSURD)
    assert written >= 100 and written + derived >= 200, (written, derived)


# ------------------------------------------------------------------------------------------------
# Made by hypothesis
# ------------------------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec="utf-8"), max_size=40)
    | st.sampled_from([SUBSTITUTION, "..", "../", "$(", "\x00", "", " ", "~", "<<", "yes", "0x1F", "1e30", SECRET])
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12
)
PATHS = [leaf.path for leaf in LEAVES] + [leaf.path[:-1] for leaf in LEAVES if len(leaf.path) > 2]
SLOW_EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def mutated_runs(draw: st.DrawFn) -> dict[str, Any]:
    """The full run with a few fields replaced, deleted or nested deeper."""
    document = copy.deepcopy(FULL)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        operation = draw(st.sampled_from(["replace", "delete", "nest", "wrap"]))
        if not _reachable(document, path):
            continue
        parent = _value_at(document, path[:-1])
        if operation == "replace":
            parent[path[-1]] = draw(VALUES)
        elif operation == "delete":
            del parent[path[-1]]
        elif operation == "nest":
            parent[path[-1]] = {"x": parent[path[-1]]}
        else:
            value = parent[path[-1]]
            for _ in range(draw(st.integers(1, 40))):
                value = [value]
            parent[path[-1]] = value
    return document


def _reachable(document: Any, path: tuple[str | int, ...]) -> bool:
    for part in path:
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif isinstance(document, list) and isinstance(part, int) and part < len(document):
            document = document[part]
        else:
            return False
    return True


@pytest.mark.slow
@SLOW_EXAMPLES
@given(document=mutated_runs())
def test_mutated_runs_get_a_clean_verdict(document: dict[str, Any], tmp_path: Path) -> None:
    validate(write(tmp_path, yaml.safe_dump(document, allow_unicode=False)))


@st.composite
def edited_texts(draw: st.DrawFn) -> str:
    """The full run's text with lines duplicated, dropped, swapped or garbled."""
    lines = FULL_RUN_TEXT.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["duplicate", "drop", "swap", "insert", "indent"]))
        if edit == "duplicate":
            lines.insert(index, lines[index])
        elif edit == "drop" and len(lines) > 1:
            del lines[index]
        elif edit == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
        elif edit == "insert":
            text = lines[index]
            at = draw(st.integers(0, len(text)))
            lines[index] = text[:at] + draw(st.text(st.characters(codec="utf-8"), max_size=8)) + text[at:]
        else:
            lines[index] = " " * draw(st.integers(0, 6)) + lines[index].lstrip(" ")
    return "".join(lines)


@pytest.mark.slow
@SLOW_EXAMPLES
@given(text=edited_texts())
def test_edited_texts_get_a_clean_verdict(text: str, tmp_path: Path) -> None:
    validate(write(tmp_path, text))


YAML_SYNTAX = st.sampled_from(list("[]{}:,-?&*!|>'\"%@`#\n\t \\") + ["---", "...", "<<", "!!", "0x", "\ud800", "\x00", "\ufeff"])


@pytest.mark.slow
@SLOW_EXAMPLES
@given(content=st.lists(YAML_SYNTAX | st.text(max_size=6), max_size=60).map("".join) | st.binary(max_size=200))
def test_random_yaml_syntax_gets_a_clean_verdict(content: str | bytes, tmp_path: Path) -> None:
    validate(write(tmp_path, content))


# ------------------------------------------------------------------------------------------------
# The worst documents within the size limit
# ------------------------------------------------------------------------------------------------


def _filled(head: str, unit: str, tail: str = "", size: int = MAX_DOCUMENT_BYTES) -> str:
    return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail


def _under_node_limit(unit: str) -> str:
    return MINIMAL_TEXT + "  x: [" + unit * (MAX_NODES - 20) + "1]\n"


WORST = {
    "flow list": _filled(MINIMAL_TEXT + "  x: [", "a,", "a]\n"),
    "block list": _filled(MINIMAL_TEXT + "  x:\n", "  - a\n"),
    "many keys": _filled(MINIMAL_TEXT, "  k: 1\n".replace("k", "key")),
    "deep flow nesting": _filled(MINIMAL_TEXT + "  x: ", "["),
    "deep block nesting": _filled(MINIMAL_TEXT + "  x:\n    ", "- "),
    "long strings": MINIMAL_TEXT + "  x:\n" + f"  - '{'x' * (MAX_SCALAR_CHARS - 10)}'\n" * 15,
    "maps under the node limit": _under_node_limit("{},"),
    "dates under the node limit": _under_node_limit("2001-12-14t21:59:43.10-05:00,"),
    "integers under the node limit": _under_node_limit("9" * 30 + ","),
    "unknown keys under the node limit": MINIMAL_TEXT + "".join(f"  k{i}: 1\n" for i in range(MAX_NODES // 2 - 10)),
    "tolerations under the node limit": MINIMAL_TEXT + "  execution: {tolerations: [" + "{operator: Exists}," * ((MAX_NODES - 50) // 3) + "]}\n",
    "oversized": "a" * (MAX_DOCUMENT_BYTES + 1),
    "alias bomb": BOMB,
}


@pytest.fixture(scope="module")
def worst_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("worst")
    paths = []
    for index, (name, text) in enumerate(WORST.items()):
        assert len(text.encode()) <= MAX_DOCUMENT_BYTES or name == "oversized", name
        paths.append(write(folder, text, f"{index:02d}-{name.replace(' ', '-')}.yaml"))
    return paths


@pytest.mark.slow
def test_worst_documents_are_refused_in_time(worst_files: list[Path]) -> None:
    for path in worst_files:
        assert validate(path).exit_code == 1, path.name


@pytest.mark.slow
def test_worst_documents_stay_within_memory_through_the_real_command(worst_files: list[Path], tmp_path: Path) -> None:
    hostile = [write(tmp_path, case.content, f"{i}.yaml") for i, case in enumerate(YAML_ATTACKS[:12])]
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    # The command's own high-water mark (VmHWM) as it exits: rusage's maxrss would also count the
    # forked copy of this test process before the exec, which is as large as the test run so far.
    peak_file = tmp_path / "peak"
    measure = ("import atexit, runpy, sys\n"
               f"atexit.register(lambda: open({str(peak_file)!r}, 'w').write("
               "next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]))\n"
               "sys.argv = ['dpe', *sys.argv[1:]]\nrunpy.run_module('dpe', run_name='__main__')\n")
    with stdout.open("wb") as out, stderr.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.run([sys.executable, "-c", measure, "validate", *map(str, worst_files), *map(str, hostile)],
                                 stdout=out, stderr=err, timeout=600)
        seconds = time.perf_counter() - started
    errors = stderr.read_text()
    assert process.returncode == 1 and "Traceback" not in errors, errors
    peak_kib = int(peak_file.read_text())
    assert peak_kib < MEGABYTES * 1024, f"peak memory {peak_kib // 1024} MB"
    files = len(worst_files) + len(hostile)
    assert seconds < SECONDS * files
    refused_files = {line.split(": ", 1)[0] for line in errors.splitlines()}
    assert refused_files == {str(p) for p in [*worst_files, *hostile]}, errors
