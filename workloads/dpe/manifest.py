"""Reading EvolutionRun documents from YAML, with one readable line per problem.

Every executor and stage reads the run through `load_run`, so a bad file fails the same way
everywhere: each problem names the field path (`spec.score.window.low`) and says what is wrong.

A run file may come from anyone, so reading it is bounded before anything is built from it: the
file's size, the nesting depth, the number of nodes, the length of each scalar and the digits of
each integer. Anchors and aliases are refused (an alias bomb of a few hundred bytes expands to
billions of nodes, and a run has no use for them), and so are duplicate keys (YAML would keep the
last one silently, so `kind: Pod` followed by `kind: EvolutionRun` would pass). Every failure, of
the bytes, the YAML or the model, is a `SpecError` of one-line problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from dpe.spec import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, GROUP_VERSION, SECRET_KEY_PATTERN, EvolutionRun
from dpe.spec.execution import LABEL_VALUE_PATTERN, QUALIFIED_NAME_PATTERN, TAINT_KEY_PATTERN
from dpe.spec.storage import S3_BUCKET_PATTERN, S3_ENDPOINT_PATTERN
from dpe.spec.text import redact_credentials, shown

MAX_DOCUMENT_BYTES = 1 << 20
"""Largest run file: a run is a few kilobytes, with its status a few hundred at most."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists (a run needs about 8; kubectl's managedFields about 16)."""
MAX_NODES = 20_000
"""Most keys, values and lists in one document: a run has a few hundred, a run with its status of a
thousand iterations about fifteen thousand."""
MAX_SCALAR_CHARS = 64 << 10
"""Longest single scalar."""
MAX_INT_DIGITS = 30
"""Longest integer: every count of a run has far fewer digits; Python refuses to parse past 4300."""
MAX_PROBLEMS = 50
"""Problems listed for one document; the rest are counted."""
MAX_KEY_CHARS = 60
"""Longest key shown in a field path; longer ones are cut."""

_MERGE_TAG = "tag:yaml.org,2002:merge"

_QUALIFIED = (
    "a qualified name such as nvidia.com/gpu (an optional DNS subdomain and '/', then at most 63 letters, "
    "digits, '-', '_' or '.', starting and ending with a letter or digit)"
)
_PATTERN_WORDS = {
    DNS_LABEL_PATTERN: "a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit",
    DNS_SUBDOMAIN_PATTERN: "a DNS subdomain: DNS labels (lower-case letters, digits and '-') joined by '.'",
    SECRET_KEY_PATTERN: "a Secret key: letters, digits, '-', '_' and '.'",
    QUALIFIED_NAME_PATTERN: _QUALIFIED,
    TAINT_KEY_PATTERN: f"empty or {_QUALIFIED}",
    LABEL_VALUE_PATTERN: (
        "a label value: empty, or at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    ),
    S3_ENDPOINT_PATTERN: "host[:port] or http(s)://host[:port]",
    S3_BUCKET_PATTERN: (
        "an S3 bucket name: lower-case letters, digits, '-' and single '.', starting and ending with a letter or digit"
    ),
}
"""What each pattern of the spec asks for, in words: a regular expression makes a poor message."""


class SpecError(ValueError):
    """A document that is not a valid EvolutionRun; `problems` holds one line per fault."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _key(item: str) -> str:
    """A key as a field path shows it: printable, visible when empty, and cut when long."""
    if not item:
        return '""'
    text = item if item.isprintable() else ascii(item)[1:-1]
    return text if len(text) <= MAX_KEY_CHARS else f"{text[:MAX_KEY_CHARS]}..."


def _path(loc: tuple[int | str, ...], kind: str) -> str:
    parts: list[str] = []
    for index, item in enumerate(loc):
        # An unknown field's own key is the user's, whatever it looks like; pydantic's markers
        # (`[key]`, `function-after[...]`) sit only between fields.
        users_key = kind == "extra_forbidden" and index == len(loc) - 1
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not users_key and (item in {"function-after", "function-before", "function-wrap"} or "[" in str(item)):
            continue
        else:
            parts.append(("." if parts else "") + _key(str(item)))
    return "".join(parts) or "(document)"


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and error["ctx"]["pattern"] in _PATTERN_WORDS:
        return f"must be {_PATTERN_WORDS[error['ctx']['pattern']]}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if kind in {"literal_error", "enum"}:
        message += f" (got {shown(error.get('input'))})"
    return message


def _bounded(problems: list[str]) -> list[str]:
    """`problems` with anything that looks like a credential taken out, and at most MAX_PROBLEMS of them."""
    shown_problems = [redact_credentials(p) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        shown_problems.append(f"(document): {len(problems) - MAX_PROBLEMS} more problems not shown")
    return shown_problems


def problems_of(error: ValidationError) -> list[str]:
    """One `path: message` line per pydantic error, in document order.

    The lines go to terminals, status and Events, so they never carry a value that looks like a
    credential (a key pasted into `baseUrl`, say), and a flood of errors is cut short.
    """
    return _bounded([f"{_path(tuple(e['loc']), e['type'])}: {_message(e)}" for e in error.errors()])


def parse_run(document: Any) -> EvolutionRun:
    """Validate already-parsed YAML as an EvolutionRun."""
    if not isinstance(document, dict):
        kind = "empty" if document is None else type(document).__name__
        raise SpecError([f"(document): expected a mapping with apiVersion, kind, metadata, spec; got {kind}"])
    problems: list[str] = []
    api_version = document.get("apiVersion")
    kind = document.get("kind")
    if kind != "EvolutionRun":
        problems.append(f"kind: expected EvolutionRun, got {shown(kind)}")
    if api_version != GROUP_VERSION:
        problems.append(f"apiVersion: expected {GROUP_VERSION}, got {shown(api_version)}")
    if problems:
        raise SpecError(_bounded(problems))
    try:
        return EvolutionRun.model_validate(document)
    except ValidationError as error:
        raise SpecError(problems_of(error)) from None


def _at(mark: Any, text: str) -> str:
    if mark is None:
        return ""
    lines = text.split("\n")
    if mark.line >= len(lines):
        # libyaml ends a last line that has no line break by moving past it; point at its end instead.
        return f" at line {len(lines)}, column {len(lines[-1]) + 1}"
    return f" at line {mark.line + 1}, column {mark.column + 1}"


def _refusal(event: yaml.Event, depth: int, nodes: int) -> str | None:
    """Why the reader stops at `event` (given the depth and node count it brings), or None."""
    if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
        return "anchors and aliases (&name, *name) are not allowed in a run"
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if nodes > MAX_NODES:
        return f"more than {MAX_NODES} keys, values and lists"
    if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
        return f"a value longer than {MAX_SCALAR_CHARS} characters"
    return None


def _check_events(text: str) -> None:
    """Refuse what could make building the document costly, reading only libyaml's event stream.

    Nothing is built here and the stream is read lazily, so a refusal comes as soon as a limit is
    passed, whatever follows it.
    """
    depth = nodes = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
        refusal = _refusal(event, depth, nodes)
        if refusal is not None:
            raise SpecError([f"(document): {refusal}{_at(event.start_mark, text)}"])


class _RunLoader(yaml.CSafeLoader):
    """libyaml's safe loader, refusing duplicate keys, merge keys and oversized integers."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as error:
            # A scalar that matches a YAML type's pattern but not its range (`2023-02-30`).
            raise ConstructorError(None, None, f"cannot read this value: {error}", node.start_mark) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                raise ConstructorError(None, None, "merge keys (<<) are not allowed in a run", key_node.start_mark)
        mapping = super().construct_mapping(node, deep=deep)
        if len(mapping) < len(node.value):
            first: dict[Any, Node] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in first:
                    raise ConstructorError(
                        None, None,
                        f"duplicate key {shown(key)} (first at line {first[key].start_mark.line + 1})",
                        key_node.start_mark,
                    )
                first[key] = key_node
        return mapping

    def construct_yaml_int(self, node: Node) -> int:
        if sum(c.isalnum() for c in node.value) > MAX_INT_DIGITS:
            raise ConstructorError(None, None, f"an integer with more than {MAX_INT_DIGITS} digits", node.start_mark)
        return super().construct_yaml_int(node)


_RunLoader.add_constructor("tag:yaml.org,2002:int", _RunLoader.construct_yaml_int)


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"(document): not valid YAML{_at(mark, text)}: {problem}"


def parse_yaml(text: str) -> Any:
    """Parse exactly one YAML document of at most MAX_DOCUMENT_BYTES, turning every fault into a SpecError."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise SpecError([f"(document): not valid text: a lone surrogate at character {error.start}"]) from None
    if size > MAX_DOCUMENT_BYTES:
        raise SpecError([f"(document): {size} bytes; a run file may have at most {MAX_DOCUMENT_BYTES}"])
    try:
        _check_events(text)
        documents = [d for d in yaml.load_all(text, Loader=_RunLoader) if d is not None]
    except yaml.YAMLError as error:
        raise SpecError(_bounded([_yaml_problem(error, text)])) from None
    if len(documents) > 1:
        raise SpecError([f"(document): expected one YAML document, found {len(documents)}"])
    return documents[0] if documents else None


def load_run(path: str | Path) -> EvolutionRun:
    """Read and validate an EvolutionRun YAML file."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as error:
        raise SpecError([f"(file): cannot read {path}: {error.strerror or error}"]) from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SpecError([f"(file): {path} is larger than {MAX_DOCUMENT_BYTES} bytes; a run file is a few kilobytes"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError([f"(file): {path} is not UTF-8 text (invalid byte at offset {error.start})"]) from None
    return parse_run(parse_yaml(text))
