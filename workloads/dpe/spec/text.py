"""What a spec string may hold, and how a message may show a string it refuses.

Spec strings end up in container arguments and environment values, where the kubelet expands
`$(NAME)` from the container's environment (and `$$(` is only an escape of that expansion). A run
could then read a Secret mapped into its own pod, `baseModel: "/$(DPE_S3_SECRET_KEY)"`, into its
logs or its artifact paths. So no spec string may contain `$(`, nor control characters (a NUL cuts
a path short; an escape sequence rewrites the terminal that shows it).

Refusals name the field and say what is wrong. They quote the refused value only when it is short
and does not look like a credential: validation messages go to terminals, status and Events, and
a key pasted into the wrong field must not follow it there.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

SUBSTITUTION = "$("
"""Start of a kubelet variable reference."""
CONTROL_CHARACTERS = "\\x00-\\x1f\\x7f-\\x9f"
"""C0 controls, DEL and C1 controls, as a regular expression character range."""

_CONTROL_RE = re.compile(f"[{CONTROL_CHARACTERS}]")
_ALLOWED = f"[^${CONTROL_CHARACTERS}]"
_DOLLARS_THEN_ALLOWED = f"[$]+[^$({CONTROL_CHARACTERS}]"
PLAIN_PATTERN = f"^({_ALLOWED}|{_DOLLARS_THEN_ALLOWED})*[$]*$"
"""The rule of `check_plain` as a regular expression, for the CRD: every run of `$` is followed by
something other than `(` or ends the string, and nothing is a control character."""


def plain_chars(excluded: str = "") -> str:
    """A regular expression for a run of plain characters (see `PLAIN_PATTERN`) none of which is in
    the character-class text `excluded`, for patterns that embed free text (paths in references)."""
    return f"([^${excluded}{CONTROL_CHARACTERS}]|[$]+[^$({excluded}{CONTROL_CHARACTERS}])*[$]*"


def check_plain(value: str) -> str:
    """Refuse `$(` and control characters; see the module docstring for why."""
    if SUBSTITUTION in value:
        raise ValueError(
            "must not contain '$(': the kubelet would expand $(NAME) from the container's environment, "
            "where the run's secrets are"
        )
    control = _CONTROL_RE.search(value)
    if control is not None:
        raise ValueError(f"must not contain control characters (found {ascii(control.group())})")
    return value


class Plain:
    """`Annotated` marker of a plain string: `check_plain` in validation, `PLAIN_PATTERN` in the schema.

    Put it after the length constraints (`Annotated[str, Field(max_length=200), PLAIN]`) so that a
    long value is refused for its length before it is scanned.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(check_plain, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = PLAIN_PATTERN
        return json_schema


PLAIN = Plain()

SHOWN_LENGTH = 60
"""Longest value a message quotes; longer ones are cut."""

_KNOWN_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])("
    r"(sk|pk|rk)[-_][A-Za-z0-9_-]{6,}"  # OpenAI, Anthropic (sk-ant-...), Stripe
    r"|(ghp|gho|ghu|ghs|ghr|github_pat|glpat|gsk|hf|r8|xox[abprs])[-_][A-Za-z0-9_-]{6,}"  # GitHub, GitLab, HF, Slack
    r"|(AKIA|ASIA)[0-9A-Z]{12,}"  # AWS access key ids
    r"|AIza[0-9A-Za-z_-]{20,}"  # Google API keys
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_.-]*"  # JWTs
    r")"
)
_ASSIGNED = re.compile(
    r"(?i)\b(api[-_]?key|access[-_]?key|key|token|secret|password|passwd|pwd|credentials?|auth)"
    r"(=\s*|:(?=\S))[^\s&,;'\"]{4,}"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_LONG_RUN = re.compile(r"[A-Za-z0-9+/=_-]{20,}")
_HEX_RUN = re.compile(r"(?i)(?<![0-9a-f])[0-9a-f]{32,}(?![0-9a-f])")
_MIXED_SWITCH_RATE = 0.35
"""Share of neighbouring characters that change class (upper, lower, digit) from which a run of all
three classes counts as random: about 0.6 in generated keys, under 0.3 in camel case and paths."""
_SINGLE_CASE_RUN = 24
_SINGLE_CASE_SWITCH_RATE = 0.3
"""The same for single-case keys (lower case and digits, about 0.4 when random), which must be longer."""
REDACTED = "[REDACTED]"


def _random_looking(run: str) -> bool:
    """A long run with digits that changes character class (upper, lower, digit) as often as
    generated keys do; words, camel case and numbered names change far less often."""
    classes = ["u" if c.isupper() else "l" if c.islower() else "d" for c in run if c.isalnum()]
    kinds = set(classes)
    if "d" not in kinds or len(kinds) < 2:
        return False
    rate = sum(a != b for a, b in zip(classes, classes[1:], strict=False)) / (len(classes) - 1)
    if len(kinds) == 3:
        return rate >= _MIXED_SWITCH_RATE
    return len(classes) >= _SINGLE_CASE_RUN and rate >= _SINGLE_CASE_SWITCH_RATE


def redact_credentials(text: str) -> str:
    """`text` with everything that looks like a credential replaced by a marker.

    Known key formats, `key=...`-style assignments, long runs mixing cases and digits, and long hex
    strings are taken out. Plain words, paths and model names are left readable.
    """
    text = _KNOWN_TOKEN.sub(REDACTED, text)
    text = _ASSIGNED.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _LONG_RUN.sub(lambda m: REDACTED if _random_looking(m.group()) else m.group(), text)
    return _HEX_RUN.sub(REDACTED, text)


def looks_like_credential(value: str) -> bool:
    """Whether `redact_credentials` would hide any part of `value`."""
    return redact_credentials(value) != value


def shown(value: object) -> str:
    """A refused value as a message may quote it: short, escaped, and never a likely credential."""
    if isinstance(value, str) and looks_like_credential(value):
        return "a value that looks like a credential (not shown)"
    if isinstance(value, str) and len(value) > SHOWN_LENGTH:
        return f"{value[:SHOWN_LENGTH]!r}... ({len(value)} characters)"
    text = redact_credentials(repr(value))
    return text if len(text) <= SHOWN_LENGTH else f"a {type(value).__name__}"
