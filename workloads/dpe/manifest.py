"""Reading EvolutionRun documents from YAML, with one readable line per problem.

Every executor and stage reads the run through `load_run`, so a bad file fails the same way
everywhere: each problem names the field path (`spec.score.window.low`) and says what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dpe.spec import GROUP_VERSION, EvolutionRun


class SpecError(ValueError):
    """A document that is not a valid EvolutionRun; `problems` holds one line per fault."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in {"function-after", "function-before", "function-wrap"} or "[" in str(item):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(document)"


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if kind in {"literal_error", "enum"}:
        message += f" (got {error.get('input')!r})"
    return message


def problems_of(error: ValidationError) -> list[str]:
    """One `path: message` line per pydantic error, in document order."""
    return [f"{_path(tuple(e['loc']))}: {_message(e)}" for e in error.errors()]


def parse_run(document: Any) -> EvolutionRun:
    """Validate already-parsed YAML as an EvolutionRun."""
    if not isinstance(document, dict):
        kind = "empty" if document is None else type(document).__name__
        raise SpecError([f"(document): expected a mapping with apiVersion, kind, metadata, spec; got {kind}"])
    problems: list[str] = []
    api_version = document.get("apiVersion")
    kind = document.get("kind")
    if kind != "EvolutionRun":
        problems.append(f"kind: expected EvolutionRun, got {kind!r}")
    if api_version != GROUP_VERSION:
        problems.append(f"apiVersion: expected {GROUP_VERSION}, got {api_version!r}")
    if problems:
        raise SpecError(problems)
    try:
        return EvolutionRun.model_validate(document)
    except ValidationError as error:
        raise SpecError(problems_of(error)) from None


def parse_yaml(text: str) -> Any:
    """Parse exactly one YAML document, turning syntax errors into a SpecError."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError([f"(document): not valid YAML{where}: {problem}"]) from None
    if len(documents) > 1:
        raise SpecError([f"(document): expected one YAML document, found {len(documents)}"])
    return documents[0] if documents else None


def load_run(path: str | Path) -> EvolutionRun:
    """Read and validate an EvolutionRun YAML file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError([f"(file): cannot read {path}: {error.strerror or error}"]) from None
    except UnicodeDecodeError:
        raise SpecError([f"(file): {path} is not UTF-8 text"]) from None
    return parse_run(parse_yaml(text))
