"""Typed replies: the JSON object in a model's reply, validated as a pydantic model.

`ask_json` re-asks with the validation error when a reply does not parse, and counts each unusable
reply in the ledger by reason.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dpe.llm.client import ChatClient, Message
from dpe.llm.errors import InvalidReply
from dpe.llm.events import log_event
from dpe.llm.usage import UsageLedger

SchemaT = TypeVar("SchemaT", bound=BaseModel)

REPAIR_REQUEST = (
    "Your previous reply could not be used: {problem}\n"
    "Reply again with one JSON object and nothing else. It must match this JSON schema:\n{schema}"
)


class ReplyFormatError(ValueError):
    """A reply that is not a usable JSON object; `reason` is what the ledger counts."""

    def __init__(self, reason: str, problem: str):
        super().__init__(f"{reason}: {problem}")
        self.reason = reason
        self.problem = problem


def _objects(text: str) -> Iterable[str]:
    """Every top-level `{...}` span of `text`, braces inside double-quoted strings ignored."""
    depth = 0
    start = 0
    in_string = False
    escaped = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"' and depth > 0:
            in_string = True
        elif char == "{":
            if depth == 0:
                start = index
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield text[start : index + 1]


def _without_trailing_commas(span: str) -> str:
    """`span` minus commas directly before a closing bracket: the one repair that cannot change meaning."""
    out: list[str] = []
    in_string = False
    escaped = False
    for index, char in enumerate(span):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "," and span[index + 1 :].lstrip()[:1] in {"}", "]"}:
            continue
        out.append(char)
    return "".join(out)


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in a reply, wherever it sits (code fence, prose around it).

    Trailing commas are repaired; anything else that is not JSON (single quotes, comments, Python
    literals) is refused rather than guessed at. Raises `ReplyFormatError` with reason `no_json`
    or `bad_json`.
    """
    spans = list(_objects(text))
    if not spans:
        if "{" in text:
            raise ReplyFormatError("bad_json", "the JSON object is not closed (was the reply cut off?)")
        raise ReplyFormatError("no_json", "the reply contains no JSON object")
    problem = ""
    for span in spans:
        for candidate in (span, _without_trailing_commas(span)):
            try:
                value = json.loads(candidate)
            except ValueError as error:
                problem = f"the JSON object does not parse ({error})"
                continue
            if isinstance(value, dict):
                return value
    raise ReplyFormatError("bad_json", problem)


def parse_reply(text: str, schema: type[SchemaT]) -> SchemaT:
    """A reply as an instance of `schema`; `ReplyFormatError` with reason `schema: <field>` if invalid."""
    data = extract_json_object(text)
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        issues = error.errors(include_url=False, include_input=False)
        fields = [".".join(str(p) for p in issue["loc"]) or "<root>" for issue in issues]
        listed = "; ".join(f"{name}: {issue['msg']}" for name, issue in zip(fields, issues, strict=True))
        raise ReplyFormatError(f"schema: {fields[0]}", f"the JSON does not match the schema ({listed})") from None


@functools.cache
def schema_json(schema: type[BaseModel]) -> str:
    """The JSON schema of a reply model as prompt text, built once per model (pydantic takes a
    third of a millisecond per build, on the event loop, for every call)."""
    return json.dumps(schema.model_json_schema())


async def ask_json(
    client: ChatClient,
    messages: Sequence[Message],
    schema: type[SchemaT],
    *,
    attempts: int = 3,
    ledger: UsageLedger | None = None,
    json_mode: bool = False,
    max_tokens: int | None = None,
) -> SchemaT:
    """Asks until the reply validates as `schema`, re-asking with the problem stated, `attempts` times.

    Each unusable reply is counted in `ledger` (default: the client's) under the client's role with
    its reason. Raises `InvalidReply` when every attempt fails; request failures propagate as they
    come from `ChatClient.complete`.
    """
    ledger = ledger if ledger is not None else client.ledger
    conversation = list(messages)
    reasons: list[str] = []
    schema_text = schema_json(schema)
    for _ in range(attempts):
        reply = await client.complete(conversation, json_mode=json_mode, max_tokens=max_tokens)
        try:
            return parse_reply(reply.text, schema)
        except ReplyFormatError as error:
            ledger.record_invalid(client.role, error.reason)
            reasons.append(error.reason)
            log_event(
                logging.WARNING,
                "chat reply unusable",
                role=client.role,
                model=client.endpoint.model,
                reason=error.reason,
            )
            conversation = [
                *conversation,
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": REPAIR_REQUEST.format(problem=error.problem, schema=schema_text)},
            ]
    raise InvalidReply(client.role, reasons)
