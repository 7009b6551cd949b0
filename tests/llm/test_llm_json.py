"""Typed replies: JSON found wherever the model put it, refused when unsafe, repaired by re-asking."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from dpe.llm import (
    ChatClient,
    InvalidReply,
    LLMError,
    ReplyFormatError,
    UsageLedger,
    ask_json,
    extract_json_object,
    parse_reply,
)
from dpe.spec import ModelEndpoint
from dpe_testkit.openai_server import FakeOpenAIServer


class Verdict(BaseModel):
    answer: str
    confidence: float = Field(ge=0.0, le=1.0)


@dataclass(frozen=True)
class ExtractCase:
    name: str
    text: str
    expected: dict[str, Any] | None = None
    reason: str | None = None


EXTRACT_CASES = [
    ExtractCase("bare", '{"a": 1}', {"a": 1}),
    ExtractCase("fenced", 'Sure!\n```json\n{"a": [1, 2]}\n```\nDone.', {"a": [1, 2]}),
    ExtractCase("prose around", 'The result is {"a": "x"} as requested.', {"a": "x"}),
    ExtractCase("braces in strings", '{"a": "} {", "b": "\\"}"}', {"a": "} {", "b": '"}'}),
    ExtractCase("nested", 'note: {"a": {"b": {"c": null}}}', {"a": {"b": {"c": None}}}),
    ExtractCase("trailing commas", '{"a": [1, 2, ], "b": {"c": 3,},}', {"a": [1, 2], "b": {"c": 3}}),
    ExtractCase("comma inside string kept", '{"a": "x,}", "b": 1,}', {"a": "x,}", "b": 1}),
    ExtractCase("first object wins", '{"a": 1} and then {"a": 2}', {"a": 1}),
    ExtractCase("skips non-json braces", 'use {x} here: {"a": 1}', {"a": 1}),
    ExtractCase("single quotes refused", "{'a': 1}", reason="bad_json"),
    ExtractCase("python literals refused", '{"a": True}', reason="bad_json"),
    ExtractCase("cut off", '{"a": "unfinished', reason="bad_json"),
    ExtractCase("no object", "I cannot answer that.", reason="no_json"),
    ExtractCase("bare array", "[1, 2, 3]", reason="no_json"),
]


@pytest.mark.parametrize("case", EXTRACT_CASES, ids=lambda c: c.name)
def test_extract_json_object(case: ExtractCase) -> None:
    if case.reason is None:
        assert extract_json_object(case.text) == case.expected
    else:
        with pytest.raises(ReplyFormatError) as raised:
            extract_json_object(case.text)
        assert raised.value.reason == case.reason


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


WRAPPERS = st.sampled_from(["{}", "```json\n{}\n```", "Here: {} ok"])


@given(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4), WRAPPERS)
def test_any_object_survives_fences_and_prose(obj: dict[str, Any], wrapper: str) -> None:
    assert extract_json_object(wrapper.replace("{}", json.dumps(obj))) == obj


def test_schema_errors_name_the_field() -> None:
    with pytest.raises(ReplyFormatError) as raised:
        parse_reply('{"answer": "B", "confidence": 3}', Verdict)
    assert raised.value.reason == "schema: confidence"
    assert "confidence" in raised.value.problem
    assert parse_reply('{"answer": "B", "confidence": 0.5}', Verdict) == Verdict(answer="B", confidence=0.5)


def scripted(replies: list[str]) -> Any:
    """A responder that answers with the given replies in turn."""
    queue = iter(replies)
    return lambda request: next(queue)


def client_for(server: FakeOpenAIServer, ledger: UsageLedger) -> ChatClient:
    endpoint = ModelEndpoint(base_url=server.base_url, model="judge-model")
    return ChatClient(endpoint, "sk-json", role="judge", ledger=ledger, rng=random.Random(0))


def test_bad_reply_is_repaired_by_re_asking(openai_server: FakeOpenAIServer) -> None:
    openai_server.responder = scripted(
        ["{'answer': 'B', 'confidence': 0.9}", '```json\n{"answer": "B", "confidence": 0.9}\n```']
    )
    ledger = UsageLedger()
    client = client_for(openai_server, ledger)
    question = [{"role": "user", "content": "Which option? Reply in JSON."}]

    verdict = asyncio.run(ask_json(client, question, Verdict))

    assert verdict == Verdict(answer="B", confidence=0.9)
    judge = ledger.role("judge")
    assert judge.calls == 2
    assert judge.failures == {"invalid_reply": 1} and judge.invalid_reasons == {"bad_json": 1}
    second = openai_server.chat_requests[1].body or {}
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == "{'answer': 'B', 'confidence': 0.9}"
    assert "does not parse" in second["messages"][2]["content"] and '"confidence"' in second["messages"][2]["content"]


def test_every_attempt_unusable_raises_invalid_reply(openai_server: FakeOpenAIServer) -> None:
    openai_server.responder = scripted(["no idea", '{"answer": "B"}', '{"answer": "B", "confidence": 1.5'])
    ledger = UsageLedger()
    client = client_for(openai_server, ledger)

    with pytest.raises(InvalidReply) as raised:
        asyncio.run(ask_json(client, [{"role": "user", "content": "?"}], Verdict, attempts=3))

    assert raised.value.role == "judge"
    assert raised.value.reasons == ["no_json", "schema: confidence", "bad_json"]
    assert isinstance(raised.value, LLMError)
    assert ledger.role("judge").invalid_reasons == {"no_json": 1, "schema: confidence": 1, "bad_json": 1}
    assert ledger.role("judge").failures == {"invalid_reply": 3}
    assert len(openai_server.chat_requests) == 3


def test_ledger_defaults_to_the_clients(openai_server: FakeOpenAIServer) -> None:
    openai_server.responder = scripted(["nothing", '{"answer": "A", "confidence": 0.1}'])
    client = client_for(openai_server, UsageLedger())
    asyncio.run(ask_json(client, [{"role": "user", "content": "?"}], Verdict, json_mode=True))
    assert client.ledger.role("judge").invalid_reasons == {"no_json": 1}
    assert (openai_server.chat_requests[0].body or {})["response_format"] == {"type": "json_object"}
