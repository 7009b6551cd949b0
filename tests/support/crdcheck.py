"""Check custom resources against a CRD the way the API server would: schema plus CEL rules.

The OpenAPI v3 schema of a CRD is close to JSON Schema draft 4 (boolean exclusiveMinimum), so
jsonschema's Draft4Validator checks types, enums, bounds and patterns; `x-kubernetes-validations`
CEL rules are evaluated with cel-python at every node that declares them.
"""

from __future__ import annotations

from typing import Any

import celpy
from jsonschema import Draft4Validator


def crd_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _cel_failures(schema: dict[str, Any], value: Any, path: str, env: celpy.Environment) -> list[str]:
    failures: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            failures.append(f"{path or '(root)'}: {rule['message']}")
    if isinstance(value, dict):
        for key, child in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                failures += _cel_failures(sub, child, f"{path}.{key}" if path else key, env)
    elif isinstance(value, list) and "items" in schema:
        for index, child in enumerate(value):
            failures += _cel_failures(schema["items"], child, f"{path}[{index}]", env)
    return failures


def crd_problems(crd: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse `document` (schema errors first, then CEL)."""
    schema = crd_schema(crd)
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in Draft4Validator(schema).iter_errors(document)
    ]
    if not problems:
        problems += _cel_failures(schema, document, "", celpy.Environment())
    return problems
