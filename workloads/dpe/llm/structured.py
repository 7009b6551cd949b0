"""Typed replies: the JSON object in a model's reply, validated as a pydantic model.

A reply is read in time linear in its length and without recursion, so a hostile or runaway reply
(megabytes of text, objects nested 100,000 deep) is refused as unreadable instead of stalling the
event loop or raising RecursionError. The answer is the reply's final object: a model that quotes
JSON from its prompt (a question that contains `{"valid": true}`, say) writes its own verdict last.

`ask_json` re-asks with the validation error when a reply does not parse, and counts each unusable
reply in the ledger by reason.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dpe.llm.client import ChatClient, Message
from dpe.llm.errors import InvalidReply
from dpe.llm.events import log_event
from dpe.llm.usage import UsageLedger

SchemaT = TypeVar("SchemaT", bound=BaseModel)

MAX_JSON_DEPTH = 64
"""Objects and arrays nested deeper than this make a reply unreadable. Reply schemas nest four
levels at most; `json.loads` recurses once per level and raises RecursionError near a thousand."""

REPAIR_REQUEST = (
    "Your previous reply could not be used: {problem}\n"
    "Reply again with one JSON object and nothing else. It must match this JSON schema:\n{schema}"
)

# The rest of a JSON string after its opening quote, up to and including the closing quote. The
# quantifiers are possessive: an unterminated string fails in one pass, without backtracking.
_STRING_REST = re.compile(r'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_STRUCTURE = re.compile(r'[{}\[\]"]')
# A whole string (kept as it is, closed or not) or a comma that only whitespace separates from a
# closing bracket (dropped). Each character is looked at a bounded number of times.
_STRING_OR_TRAILING_COMMA = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?|,(?=\s*+[}\]])', re.DOTALL)


class ReplyFormatError(ValueError):
    """A reply that is not a usable JSON object; `reason` is what the ledger counts."""

    def __init__(self, reason: str, problem: str):
        super().__init__(f"{reason}: {problem}")
        self.reason = reason
        self.problem = problem


def _object_end(text: str, start: int) -> int | None:
    """The index just past the `}` that closes the `{` at `start`; None if the text ends first.

    Braces and brackets inside double-quoted strings are skipped. Raises `ReplyFormatError`
    (too_deep) once objects and arrays nest deeper than `MAX_JSON_DEPTH`.
    """
    braces = 0
    depth = 0
    index = start
    while (found := _STRUCTURE.search(text, index)) is not None:
        char = found.group()
        index = found.end()
        if char == '"':
            string = _STRING_REST.match(text, index)
            if string is None:
                return None
            index = string.end()
        elif char in "{[":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ReplyFormatError("too_deep", f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
            if char == "{":
                braces += 1
        else:
            depth = max(0, depth - 1)
            if char == "}":
                braces -= 1
                if braces == 0:
                    return index
    return None


def _spans(text: str) -> Iterator[str]:
    """Every top-level `{...}` span of `text`, in order; quotes outside a span are prose.

    Raises `ReplyFormatError` (bad_json) at an object that is never closed.
    """
    position = 0
    while (start := text.find("{", position)) != -1:
        end = _object_end(text, start)
        if end is None:
            raise ReplyFormatError("bad_json", "the JSON object is not closed (was the reply cut off?)")
        yield text[start:end]
        position = end


def _without_trailing_commas(span: str) -> str:
    """`span` minus commas directly before a closing bracket: the one repair that cannot change meaning."""
    return _STRING_OR_TRAILING_COMMA.sub(lambda match: "" if match.group() == "," else match.group(), span)


def _load(span: str) -> dict[str, Any]:
    """The object a balanced `{...}` span holds, trailing commas repaired; `ReplyFormatError` otherwise."""
    try:
        return json.loads(span)
    except ValueError as error:
        problem = f"the JSON object does not parse ({error})"
    try:
        return json.loads(_without_trailing_commas(span))
    except ValueError:
        raise ReplyFormatError("bad_json", problem) from None


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in a reply, wherever it sits (code fence, prose around it). Replies are
    answers only in their final object (`final_json_object`, which `parse_reply` reads).

    Trailing commas are repaired; anything else that is not JSON (single quotes, comments, Python
    literals) is refused rather than guessed at. Raises `ReplyFormatError` with reason `no_json`,
    `bad_json` or `too_deep`.
    """
    failure: ReplyFormatError | None = None
    try:
        for span in _spans(text):
            try:
                return _load(span)
            except ReplyFormatError as error:
                failure = error
    except ReplyFormatError as error:
        failure = error
    if failure is None:
        raise ReplyFormatError("no_json", "the reply contains no JSON object")
    raise failure


def final_json_object(text: str) -> dict[str, Any]:
    """The last JSON object in a reply: the model's own answer, after anything it quoted or drafted.

    The final `{...}` span must parse (trailing commas repaired): an earlier object never stands in
    for it, since that may be JSON the model copied from its prompt. An object left open after it
    means the reply was cut off. Raises `ReplyFormatError` with reason `no_json`, `bad_json` or
    `too_deep`.
    """
    final = deque(_spans(text), maxlen=1)
    if not final:
        raise ReplyFormatError("no_json", "the reply contains no JSON object")
    return _load(final[0])


def parse_reply(text: str, schema: type[SchemaT]) -> SchemaT:
    """The reply's final object as an instance of `schema`; `ReplyFormatError` with reason
    `schema: <field>` if it does not match."""
    data = final_json_object(text)
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
            # In a worker thread: a reply of megabytes can take seconds to scan, which would
            # hold up every other call in flight if done on the event loop.
            return await asyncio.to_thread(parse_reply, reply.text, schema)
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
