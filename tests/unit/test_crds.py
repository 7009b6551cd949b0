"""The CRDs are generated from the spec models, structural, valid, and agree with `dpe validate`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dpe.crd import build_crds, stale_crds
from dpe.manifest import SpecError, parse_run
from dpe.spec.text import PLAIN_PATTERN, check_plain
from dpe_testkit.crdcheck import crd_problems, crd_schema
from dpe_testkit.malformed import MALFORMED, MINIMAL, with_value

ROOT = Path(__file__).resolve().parents[2]
CRDS = build_crds()
RUN_CRD = CRDS["evolutionruns.yaml"]


def test_committed_crds_match_the_models() -> None:
    assert stale_crds(ROOT / "crds") == [], "run `dpe crds` and commit the result"


@pytest.mark.parametrize("name", sorted(CRDS))
@pytest.mark.parametrize("version", ["1.35", "1.36", "1.37"])
def test_crd_passes_kubernetes_validate(name: str, version: str) -> None:
    kubernetes_validate.validate(CRDS[name], version, strict=True)


def _structural_faults(node: dict[str, Any], path: str) -> list[str]:
    faults = []
    typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if not typed:
        faults.append(f"{path}: no type")
    for key in ("$ref", "anyOf", "oneOf", "allOf", "not", "const", "title", "patternProperties", "definitions", "$defs"):
        if key in node:
            faults.append(f"{path}: has {key}")
    if "properties" in node and "additionalProperties" in node:
        faults.append(f"{path}: properties and additionalProperties together")
    if node.get("x-kubernetes-preserve-unknown-fields") and path.startswith("spec"):
        faults.append(f"{path}: spec fields must be fully typed")
    for key, child in node.get("properties", {}).items():
        faults += _structural_faults(child, f"{path}.{key}" if path else key)
    if "items" in node:
        faults += _structural_faults(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        faults += _structural_faults(node["additionalProperties"], f"{path}{{}}")
    return faults


@pytest.mark.parametrize("name", sorted(CRDS))
def test_schema_is_structural_and_described(name: str) -> None:
    schema = crd_schema(CRDS[name])
    assert _structural_faults(schema, "") == []
    spec = schema["properties"]["spec"]
    undocumented = [key for key, child in spec["properties"].items() if not child.get("description")]
    assert undocumented == []


def test_crd_shape_for_kubectl() -> None:
    version = RUN_CRD["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Iteration"] == ".status.currentIteration"
    assert columns["Phase"] == ".status.phase"
    assert columns["Best"] == ".status.bestScore"
    assert columns["Age"] == ".metadata.creationTimestamp"
    assert "evr" in RUN_CRD["spec"]["names"]["shortNames"]
    conditions = crd_schema(RUN_CRD)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    window = crd_schema(RUN_CRD)["properties"]["spec"]["properties"]["score"]["properties"]["window"]
    assert window["x-kubernetes-validations"][0]["rule"] == "self.low < self.high"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_pass_the_crd_schema(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "EvolutionRun":
            assert crd_problems(RUN_CRD, document) == []


# Cases the API server can refuse on its own (the schema cannot see secrets in URLs, for example).
SERVER_SIDE = [
    "uppercase name", "name too long", "missing spec", "missing base model", "base model with spaces",
    "negative probe size", "zero samples", "string count", "float count", "bool as count",
    "window low above high", "window equal ends", "window above one", "negative learning rate",
    "deepspeed stage 1", "unknown rollout backend", "one generation", "unknown mixture policy",
    "secret ref without key", "secret ref as a string", "judge without model", "agents without planner",
    "unknown search provider", "both storages", "no storage", "bucket with capitals",
    "negative backoff limit", "zero deadline", "bad pull policy", "suspend as string", "zero iterations",
    "target score above one", "zero patience", "empty benchmark suite", "benchmark bad uri",
    "retry multiplier below one", "spec is a list",
]


@pytest.mark.parametrize("name", SERVER_SIDE)
def test_crd_refuses_what_dpe_validate_refuses(name: str) -> None:
    (case,) = [c for c in MALFORMED if c.name == name]
    assert crd_problems(RUN_CRD, case.document), f"the CRD accepted: {name}"


def test_crd_accepts_the_minimal_run_and_defaults_are_valid() -> None:
    assert crd_problems(RUN_CRD, MINIMAL) == []
    assert crd_problems(RUN_CRD, with_value("spec.storage", {"s3": {"endpoint": "minio:9000", "bucket": "dpe-data"}})) == []


PLAIN_ALPHABET = st.sampled_from(["$", "(", ")", "a", " ", "/", "\x00", "\n", "\x1b", "\x7f", "\x85", "\u00e9", "\U0001f600"])


@given(st.lists(PLAIN_ALPHABET, max_size=12).map("".join))
def test_plain_pattern_is_the_plain_check(text: str) -> None:
    try:
        check_plain(text)
        plain = True
    except ValueError:
        plain = False
    assert bool(re.fullmatch(PLAIN_PATTERN, text)) == plain, ascii(text)


@pytest.mark.parametrize(
    "prefix", ["", "a/", "team-a/dpe/", ".hidden/", "..x/", ".../", "../", "./", "a/../", "a//", "a", "/a/", "a b/", "$(X)/"]
)
def test_s3_prefix_pattern_is_the_prefix_check(prefix: str) -> None:
    document = with_value("spec.storage", {"s3": {"endpoint": "minio:9000", "bucket": "dpe-data", "prefix": prefix}})
    try:
        parse_run(document)
        valid = True
    except SpecError:
        valid = False
    assert (crd_problems(RUN_CRD, document) == []) == valid


@pytest.mark.parametrize(
    "toleration",
    [
        {"operator": "Exists"},
        {"key": "", "operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "ml"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute", "tolerationSeconds": 30},
        {"key": "gpu", "operator": "Exists", "value": "x"},
        {"operator": "Equal", "value": "x"},
        {"value": "x"},
        {"key": "a", "tolerationSeconds": 5},
        {"key": "a", "effect": "NoSchedule", "tolerationSeconds": 5},
        {"key": "bad key", "operator": "Exists"},
        {"key": "a", "value": "bad/value"},
    ],
    ids=str,
)
def test_toleration_rules_agree_with_dpe_validate(toleration: dict[str, object]) -> None:
    document = with_value("spec.execution", {"tolerations": [toleration]})
    try:
        parse_run(document)
        valid = True
    except SpecError:
        valid = False
    assert (crd_problems(RUN_CRD, document) == []) == valid


@pytest.mark.parametrize(
    "path, value",
    [
        ("spec.baseModel", "/$(DPE_S3_SECRET_KEY)"),
        ("spec.baseModel", "s3://models/a/../b"),
        ("spec.train.nodes", 100_001),
        ("spec.score.shards", 200_000),
        ("spec.generate.samplesPerIteration", 10**29),
        ("spec.execution", {"nodeSelector": {"": "x"}}),
        ("spec.execution", {"image": "dpe:$(TAG)"}),
        ("spec.diagnose.judge", {"baseUrl": "https://gw.example/$(X)", "model": "m"}),
        ("spec.storage", {"s3": {"endpoint": "minio:9000", "bucket": "dpe..data"}}),
    ],
)
def test_crd_refuses_the_hostile_nonsense_too(path: str, value: object) -> None:
    document = with_value(path, value)
    with pytest.raises(SpecError):
        parse_run(document)
    assert crd_problems(RUN_CRD, document), f"the CRD accepted {path}: {value!r}"
