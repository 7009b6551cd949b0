"""CustomResourceDefinitions generated from the spec models.

pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3 schema: every
node typed, no `$ref`, no `additionalProperties: false` beside `properties`, `nullable` instead of a
`null` branch, boolean `exclusiveMinimum`. `structural_schema` does that translation; `build_crds`
wraps the result in CRD objects with printer columns, short names, the status subresource and the
CEL rules the models declare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dpe.spec import API_GROUP, API_VERSION, EvolutionRun, Iteration, SpecModel

_DROPPED_KEYS = {"title", "$defs", "discriminator"}
_LIST_BOUNDS = {"conditions": 16, "stages": 8, "iterations": 1000, "tolerations": 64, "benchmarks": 64, "history": 64}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every `$ref` (the models have no recursion, so this terminates)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    branches = node.pop("anyOf", None)
    if branches is not None:
        real = [b for b in branches if b.get("type") != "null"]
        if len(real) < len(branches):
            node["nullable"] = True
        if len(real) == 1:
            node = {**real[0], **node}
        elif {b.get("type") for b in real} == {"integer", "string"}:
            node["x-kubernetes-int-or-string"] = True
        else:
            raise ValueError(f"cannot express a union of {real} in a structural schema")
        if node.get("default", 0) is None:
            del node["default"]
    node = {k: v for k, v in node.items() if k not in _DROPPED_KEYS}
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    if "enum" in node and "type" not in node:
        kinds = {type(v) for v in node["enum"]}
        node["type"] = "integer" if kinds == {int} else "string"
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node["minimum" if bound == "exclusiveMinimum" else "maximum"] = node[bound]
            node[bound] = True
    patterns = node.pop("patternProperties", None)
    if patterns is not None:
        # Structural schemas have no patternProperties: keep the value schema, check keys with CEL.
        ((key_pattern, value_schema),) = patterns.items()
        node["additionalProperties"] = value_schema
        node.pop("x-kubernetes-preserve-unknown-fields", None)
        node.setdefault("x-kubernetes-validations", []).append(
            {"rule": f"self.all(k, k.matches('{key_pattern}'))", "message": f"every key must match {key_pattern}"}
        )
    if "properties" in node:
        node["type"] = "object"
        node.pop("additionalProperties", None)
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
        required = node.get("required")
        if required is not None:
            node["required"] = [r for r in required if "default" not in node["properties"][r]]
            if not node["required"]:
                del node["required"]
    elif isinstance(node.get("additionalProperties"), dict):
        node["type"] = "object"
        node["additionalProperties"] = _structural(node["additionalProperties"])
    elif node.get("type") == "object" and "additionalProperties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "items" in node:
        node["items"] = _structural(node["items"])
    if node.get("nullable") and "default" not in node:
        node.pop("nullable")
    return node


def _bound_lists(node: Any, name: str | None = None) -> None:
    if not isinstance(node, dict):
        return
    if node.get("type") == "array" and name in _LIST_BOUNDS:
        node["maxItems"] = _LIST_BOUNDS[name]
        if name == "conditions":
            node["x-kubernetes-list-type"] = "map"
            node["x-kubernetes-list-map-keys"] = ["type"]
    for key, child in node.get("properties", {}).items():
        _bound_lists(child, key)
    _bound_lists(node.get("items"))
    _bound_lists(node.get("additionalProperties"))


def structural_schema(model: type[SpecModel]) -> dict[str, Any]:
    """The model's JSON Schema rewritten as a structural OpenAPI v3 schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(_resolve(raw, raw.get("$defs", {})))
    _bound_lists(schema)
    return schema


def _resource_schema(model: type[SpecModel]) -> dict[str, Any]:
    schema = structural_schema(model)
    properties = schema["properties"]
    # The API server owns metadata; a CR schema may only constrain it, and only by CEL at the root.
    properties["metadata"] = {"type": "object"}
    for key in ("apiVersion", "kind"):
        properties[key] = {"type": "string", "description": properties[key].get("description", "")}
    schema["required"] = ["spec"]
    schema["x-kubernetes-validations"] = [
        {
            "rule": "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
            "message": "metadata.name must be a DNS label (lowercase, at most 63 characters)",
        }
    ]
    return schema


def _crd(
    model: type[SpecModel],
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: list[str],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["dpe"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": _resource_schema(model)},
                }
            ],
        },
    }


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def build_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object, for every resource DPE defines."""
    run = _crd(
        EvolutionRun,
        kind="EvolutionRun",
        plural="evolutionruns",
        singular="evolutionrun",
        short_names=["evrun", "evr"],
        columns=[
            {"name": "Iteration", "type": "integer", "jsonPath": ".status.currentIteration"},
            {"name": "Max", "type": "integer", "jsonPath": ".spec.stop.maxIterations", "priority": 1},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Best", "type": "number", "jsonPath": ".status.bestScore"},
            {"name": "Baseline", "type": "number", "jsonPath": ".status.baselineScore", "priority": 1},
            {"name": "Reason", "type": "string", "jsonPath": ".status.stopReason", "priority": 1},
            _AGE,
        ],
    )
    iteration = _crd(
        Iteration,
        kind="Iteration",
        plural="iterations",
        singular="iteration",
        short_names=["evit"],
        columns=[
            {"name": "Run", "type": "string", "jsonPath": ".spec.runName"},
            {"name": "Index", "type": "integer", "jsonPath": ".spec.index"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Score", "type": "number", "jsonPath": ".status.score"},
            _AGE,
        ],
    )
    return {"evolutionruns.yaml": run, "iterations.yaml": iteration}


HEADER = "# Generated by `dpe crds` from dpe.spec. Do not edit by hand.\n"


def render(crd: dict[str, Any]) -> str:
    """The YAML text of one CRD file, stable across runs."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)


def write_crds(directory: Path) -> list[Path]:
    """Write every CRD to `directory`, returning the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in build_crds().items():
        path = directory / name
        path.write_text(render(crd), encoding="utf-8")
        written.append(path)
    return written


def stale_crds(directory: Path) -> list[str]:
    """Names of CRD files in `directory` that differ from what the models generate."""
    return [
        name
        for name, crd in build_crds().items()
        if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != render(crd)
    ]
