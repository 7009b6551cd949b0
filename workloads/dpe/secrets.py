"""How secret values reach a workload without ever appearing in specs, logs or records.

A spec names a secret only by reference: `SecretKeyRef(name, key)`, a key inside a Kubernetes Secret.
The operator maps each referenced key into the stage's container as an environment variable (a
`secretKeyRef` env source), and the workload reads it from there. Locally the user exports the same
variable. Both sides derive the variable's name with `secret_env_name`, so the mapping is a pure
function of the reference and needs no configuration.

The naming rule: `DPE_SECRET_<NAME>__<KEY>`, where NAME and KEY are the Secret's name and key,
uppercased, with every character other than A-Z and 0-9 replaced by `_`. The double underscore marks
where the name ends. For example `SecretKeyRef(name="openai-creds", key="api.key")` becomes
`DPE_SECRET_OPENAI_CREDS__API_KEY`. The result is always a valid POSIX (and Kubernetes) environment
variable name because it starts with the prefix and holds only [A-Z0-9_].

The rule folds case and punctuation, so two references can map to one variable (keys `apiKey` and
`APIKEY` of one Secret, say). `secret_env_map` detects this for a set of references; the operator
uses it when it builds a Job's environment so that such a spec fails loudly instead of one key
silently shadowing another.

Values read here should be passed only to the code that needs them, and every string that might
contain one is passed through `redact` (or a logger carries a `RedactingFilter`) before it is written.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping

from dpe.spec import SecretKeyRef

SECRET_ENV_PREFIX = "DPE_SECRET_"
NAME_KEY_SEPARATOR = "__"
REDACTED = "[REDACTED]"

_NOT_ENV_CHAR = re.compile(r"[^A-Z0-9]")


class MissingSecretError(LookupError):
    """A referenced secret key is not available to this process."""


class SecretNameCollisionError(ValueError):
    """Two different secret references map to the same environment variable."""


def _env_part(text: str) -> str:
    return _NOT_ENV_CHAR.sub("_", text.upper())


def secret_env_name(ref: SecretKeyRef) -> str:
    """The environment variable that carries the value of `ref` (see the module docstring)."""
    return f"{SECRET_ENV_PREFIX}{_env_part(ref.name)}{NAME_KEY_SEPARATOR}{_env_part(ref.key)}"


def describe(ref: SecretKeyRef) -> str:
    """A reference in words, for messages: names the Secret and key, never a value."""
    return f"key '{ref.key}' of Secret '{ref.name}'"


def secret_env_map(refs: Iterable[SecretKeyRef]) -> dict[str, SecretKeyRef]:
    """Environment variable name -> reference, for every distinct reference in `refs`.

    Raises `SecretNameCollisionError` when two different references would share a variable.
    """
    mapping: dict[str, SecretKeyRef] = {}
    for ref in refs:
        name = secret_env_name(ref)
        known = mapping.get(name)
        if known is not None and (known.name, known.key) != (ref.name, ref.key):
            raise SecretNameCollisionError(
                f"{describe(known)} and {describe(ref)} both map to environment variable {name}; "
                "rename one of the keys so that they differ in more than case or punctuation"
            )
        mapping[name] = ref
    return mapping


def resolve_secret(ref: SecretKeyRef, env: Mapping[str, str] = os.environ) -> str:
    """The value of `ref` from the environment; a clear error naming the variable when it is missing."""
    name = secret_env_name(ref)
    value = env.get(name)
    if not value:
        state = "is empty" if value == "" else "is not set"
        raise MissingSecretError(
            f"{describe(ref)} is not available: environment variable {name} {state}. "
            "On Kubernetes the operator maps it from the Secret (check that the Secret and key exist "
            f"in the run's namespace); locally, export {name}."
        )
    return value


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every occurrence of each known secret value replaced by a marker.

    Longer values are replaced first, so a secret that contains another is scrubbed whole.
    Empty values are ignored (they would match everywhere and hide nothing).
    """
    for value in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs known secret values from each record's final message.

    Attach it to a handler (`handler.addFilter(RedactingFilter(values))`) to protect everything that
    handler writes, whichever library logged it. The message is rendered once with its arguments,
    redacted, and stored back without arguments; exception text is rendered and redacted too.
    """

    def __init__(self, secrets: Iterable[str | None]):
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self._secrets)
        record.args = None
        if record.exc_info is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), self._secrets)
            record.exc_info = None
        return True
