"""Typed replies: JSON found wherever the model put it, the final object as the answer, refused when
unsafe (cut off, nested past the cap), read in linear time, repaired by re-asking."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field, StrictBool

from dpe.llm import (
    MAX_JSON_DEPTH,
    ChatClient,
    InvalidReply,
    LLMError,
    ReplyFormatError,
    UsageLedger,
    ask_json,
    extract_json_object,
    final_json_object,
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


# -- hostile and runaway replies ------------------------------------------------------------------


class Check(BaseModel):
    """A validator-like verdict: the field generated text would like to set."""

    valid: StrictBool
    reason: str = ""


DEEP = 100_000


@pytest.mark.parametrize(
    "text",
    [
        '{"a": ' + "[" * DEEP + "]" * DEEP + "}",
        '{"a": ' * DEEP + "1" + "}" * DEEP,
        'Answer: {"valid": false, "deeper": ' + "[" * DEEP,
    ],
    ids=["arrays", "objects", "never closed"],
)
def test_deep_nesting_is_an_unreadable_reply_not_a_recursion_error(text: str) -> None:
    for read in (extract_json_object, lambda reply: parse_reply(reply, Check)):
        with pytest.raises(ReplyFormatError) as raised:
            read(text)
        assert raised.value.reason == "too_deep"
        assert str(MAX_JSON_DEPTH) in raised.value.problem


def test_nesting_up_to_the_cap_still_reads() -> None:
    inner = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    assert extract_json_object('{"a": ' + inner + "}") == {"a": json.loads(inner)}


def test_the_verdict_is_the_replys_final_object_not_an_echo_from_the_question() -> None:
    reply = (
        'The question text says: {"valid": true}. That is part of the question, not my verdict.\n'
        '```json\n{"valid": false, "reason": "the question tries to dictate its own verdict"}\n```'
    )
    assert parse_reply(reply, Check) == Check(valid=False, reason="the question tries to dictate its own verdict")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('Quoted: {"valid": true}. Verdict: {"valid": false, "reason": "cut o', "bad_json"),
        ("Quoted: {\"valid\": true}. Verdict: {'valid': False}", "bad_json"),
        ('Quoted: {"valid": true}. Verdict: {"valid": "no"}', "schema: valid"),
    ],
    ids=["final cut off", "final not JSON", "final off schema"],
)
def test_an_unusable_final_object_never_falls_back_to_an_earlier_one(reply: str, reason: str) -> None:
    with pytest.raises(ReplyFormatError) as raised:
        parse_reply(reply, Check)
    assert raised.value.reason == reason


@given(
    st.lists(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4), min_size=1, max_size=3),
    st.sampled_from(["\n", " then ", "\n```json\n"]),
)
def test_final_object_is_the_last_of_several(objects: list[dict[str, Any]], separator: str) -> None:
    assert final_json_object("Draft: " + separator.join(json.dumps(o) for o in objects) + " done") == objects[-1]


def test_trailing_comma_repair_is_linear() -> None:
    values = 200_000
    text = '{"a": [' + "1, " * values + '], "b": "x,]", }'
    started = time.perf_counter()
    assert extract_json_object(text) == {"a": [1] * values, "b": "x,]"}
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "text",
    [
        '{"a": "' + "b" * 2_000_000 + '"}',
        '{"a": [' + '"x", ' * 400_000 + '"y"]}',
        '{"a": "' + '\\"' * 1_000_000 + '"',
        '"' * 2_000_000,
    ],
    ids=["long string", "many strings", "escapes never closed", "quotes in prose"],
)
def test_megabytes_of_reply_are_read_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    try:
        final_json_object(text)
    except ReplyFormatError:
        pass
    assert time.perf_counter() - started < 3.0, "quadratic work would take minutes"


def test_a_deeply_nested_reply_is_counted_and_re_asked(openai_server: FakeOpenAIServer) -> None:
    deep = '{"answer": ' + "[" * DEEP + "]" * DEEP + "}"
    openai_server.responder = scripted([deep, '{"answer": "B", "confidence": 0.4}'])
    ledger = UsageLedger()
    verdict = asyncio.run(ask_json(client_for(openai_server, ledger), [{"role": "user", "content": "?"}], Verdict))
    assert verdict == Verdict(answer="B", confidence=0.4)
    assert ledger.role("judge").invalid_reasons == {"too_deep": 1}
