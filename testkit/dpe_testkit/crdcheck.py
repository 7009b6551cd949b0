"""Check custom resources against a CRD the way the API server would: pruning, schema and CEL rules.

The OpenAPI v3 schema of a CRD is close to JSON Schema draft 4 (boolean exclusiveMinimum), so
jsonschema's Draft4Validator checks types, enums, bounds and patterns, extended here to accept `null`
where the schema says `nullable: true`; `x-kubernetes-validations` CEL rules are evaluated with
cel-python at every node that declares them. `admitted` drops what the schema does not declare, as the
API server does to every write of a structural CRD's objects (so a field the operator writes but the
CRD lacks is silently lost on a real cluster, and in the emulator too), and fills in defaults.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import celpy
from jsonschema import Draft4Validator, validators

ROOT_METADATA = ("apiVersion", "kind", "metadata")
"""Top-level fields the API server keeps whatever the schema says (metadata is pruned by its own rules)."""


def crd_schema(crd: dict[str, Any], version: int = 0) -> dict[str, Any]:
    return crd["spec"]["versions"][version]["schema"]["openAPIV3Schema"]


def _nullable_type(validator: Any, types: Any, instance: Any, schema: dict[str, Any]) -> Any:
    if instance is None and schema.get("nullable"):
        return
    yield from Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


OpenApiValidator = validators.extend(Draft4Validator, {"type": _nullable_type})


VALIDATORS_KEPT = 64
_validators: dict[int, tuple[dict[str, Any], Any]] = {}
"""Validators by the identity of their schema (kept beside it, so the identity stays its own): a
server checks every write against one of a few schemas, and serializing a schema to key a cache
cost more than the check."""


def _validator(schema: dict[str, Any]) -> Any:
    found = _validators.get(id(schema))
    if found is None or found[0] is not schema:
        if len(_validators) >= VALIDATORS_KEPT:
            del _validators[next(iter(_validators))]
        found = _validators[id(schema)] = (schema, OpenApiValidator(schema))
    return found[1]


@functools.lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def _cel_failures(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    failures: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not bool(_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})):
            failures.append(f"{path or '(root)'}: {rule['message']}")
    if isinstance(value, dict):
        for key, child in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None and child is not None:
                failures += _cel_failures(sub, child, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and "items" in schema:
        for index, child in enumerate(value):
            failures += _cel_failures(schema["items"], child, f"{path}[{index}]")
    return failures


def schema_problems(schema: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse `document` under `schema` (schema errors first, then CEL)."""
    validator = _validator(schema)
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]
    if not problems:
        problems += _cel_failures(schema, document, "")
    return problems


def crd_problems(crd: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse `document` (schema errors first, then CEL)."""
    return schema_problems(crd_schema(crd), document)


def _kept(value: Any, schema: dict[str, Any]) -> bool:
    """Whether a field survives pruning: a null is dropped unless the schema allows it or defaults it."""
    return value is not None or bool(schema.get("nullable")) or "default" in schema


def _pruned(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if properties is not None:
            kept = {k: _pruned(v, properties[k]) for k, v in value.items() if k in properties and _kept(v, properties[k])}
            if schema.get("x-kubernetes-preserve-unknown-fields"):
                kept.update({k: v for k, v in value.items() if k not in properties})
            return kept
        if isinstance(additional, dict):
            return {k: _pruned(v, additional) for k, v in value.items() if _kept(v, additional)}
        return value if additional is True or schema.get("x-kubernetes-preserve-unknown-fields") else {}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_pruned(item, schema["items"]) for item in value]
    return value


def _defaulted(value: Any, schema: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        result = {k: _defaulted(v, properties[k]) if k in properties else v for k, v in value.items()}
        if isinstance(schema.get("additionalProperties"), dict):
            result = {k: _defaulted(v, schema["additionalProperties"]) for k, v in result.items()}
        for key, sub in properties.items():
            if "default" in sub and result.get(key) is None and not (key in result and sub.get("nullable")):
                result[key] = _defaulted(copy.deepcopy(sub["default"]), sub)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_defaulted(item, schema["items"]) for item in value]
    return value


def admitted(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`document` as the API server stores it: structurally pruned (fields the schema does not declare,
    and nulls it neither allows nor defaults, are dropped) and defaulted. apiVersion, kind and metadata
    are kept as they are."""
    body = {k: v for k, v in document.items() if k not in ROOT_METADATA}
    shaped = _defaulted(_pruned(body, schema), schema)
    return {**{k: document[k] for k in ROOT_METADATA if k in document}, **shaped}


def dropped_fields(before: Any, after: Any, path: str = "") -> list[str]:
    """Paths of the fields of `before` that `after` (its admitted form) no longer has."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key, value in before.items():
            where = f"{path}.{key}" if path else key
            if key not in after:
                found.append(where)
            else:
                found += dropped_fields(value, after[key], where)
        return found
    if isinstance(before, list) and isinstance(after, list):
        return [p for i, (b, a) in enumerate(zip(before, after, strict=False)) for p in dropped_fields(b, a, f"{path}[{i}]")]
    return []
