"""Secret references become environment variables; values never show up in messages or logs."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpe.secrets import (
    REDACTED,
    MissingSecretError,
    RedactingFilter,
    SecretNameCollisionError,
    redact,
    resolve_secret,
    secret_env_map,
    secret_env_name,
)
from dpe.spec import DNS_SUBDOMAIN_PATTERN, SECRET_KEY_PATTERN, SecretKeyRef

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
VALUE = "sk-live-9f8e7d6c5b4a"


@dataclass(frozen=True)
class NameCase:
    name: str
    secret: str
    key: str
    expected: str


NAME_CASES = [
    NameCase("plain", "openai", "apikey", "DPE_SECRET_OPENAI__APIKEY"),
    NameCase("punctuation", "openai-creds.prod", "api.key", "DPE_SECRET_OPENAI_CREDS_PROD__API_KEY"),
    NameCase("case folded", "gw", "apiKey", "DPE_SECRET_GW__APIKEY"),
    NameCase("digits first", "0day", "1-key_x", "DPE_SECRET_0DAY__1_KEY_X"),
]


@pytest.mark.parametrize("case", NAME_CASES, ids=lambda c: c.name)
def test_env_name_is_derived_from_the_reference(case: NameCase) -> None:
    assert secret_env_name(SecretKeyRef(name=case.secret, key=case.key)) == case.expected


MAX_NAME = 253
NAMES = st.from_regex(DNS_SUBDOMAIN_PATTERN, fullmatch=True).filter(lambda s: len(s) <= MAX_NAME and "\n" not in s)
KEYS = st.from_regex(SECRET_KEY_PATTERN, fullmatch=True).filter(lambda s: len(s) <= MAX_NAME and "\n" not in s)


@given(NAMES, KEYS)
def test_env_name_is_always_a_valid_variable_name(name: str, key: str) -> None:
    ref = SecretKeyRef(name=name, key=key)
    env_name = secret_env_name(ref)
    assert ENV_NAME.match(env_name)
    assert env_name == secret_env_name(SecretKeyRef(name=ref.name, key=ref.key))


def test_resolve_reads_the_mapped_variable() -> None:
    ref = SecretKeyRef(name="openai", key="apiKey")
    assert resolve_secret(ref, {"DPE_SECRET_OPENAI__APIKEY": VALUE}) == VALUE


@pytest.mark.parametrize(("env", "state"), [({}, "is not set"), ({"DPE_SECRET_OPENAI__APIKEY": ""}, "is empty")])
def test_missing_secret_names_variable_and_secret(env: dict[str, str], state: str) -> None:
    ref = SecretKeyRef(name="openai", key="apiKey")
    with pytest.raises(MissingSecretError) as raised:
        resolve_secret(ref, {**env, "DPE_SECRET_OTHER__KEY": VALUE})
    message = str(raised.value)
    assert "DPE_SECRET_OPENAI__APIKEY" in message and "'openai'" in message and "'apiKey'" in message
    assert state in message
    assert VALUE not in message


def test_colliding_references_are_refused() -> None:
    refs = [SecretKeyRef(name="gw", key="apiKey"), SecretKeyRef(name="gw", key="APIKEY")]
    with pytest.raises(SecretNameCollisionError, match="DPE_SECRET_GW__APIKEY"):
        secret_env_map(refs)


def test_env_map_keeps_repeated_references_once() -> None:
    refs = [SecretKeyRef(name="a", key="k"), SecretKeyRef(name="a", key="k"), SecretKeyRef(name="b", key="k")]
    assert sorted(secret_env_map(refs)) == ["DPE_SECRET_A__K", "DPE_SECRET_B__K"]


def test_redact_scrubs_longest_values_first_and_ignores_empty() -> None:
    text = f"key={VALUE} prefix={VALUE[:6]} other"
    assert redact(text, [VALUE[:6], VALUE, "", None]) == f"key={REDACTED} prefix={REDACTED} other"
    assert redact("nothing here", []) == "nothing here"


def test_redacting_filter_scrubs_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("dpe.test.secrets")
    caplog.handler.addFilter(RedactingFilter([VALUE]))
    with caplog.at_level(logging.DEBUG, logger="dpe.test.secrets"):
        log.info("calling with %s", VALUE)
        try:
            raise RuntimeError(f"server said: bad key {VALUE}")
        except RuntimeError:
            log.exception("call failed")
    assert VALUE not in caplog.text
    assert caplog.text.count(REDACTED) == 2
