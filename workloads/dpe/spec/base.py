"""The shared base of the spec models, the API group, and the strict scalar types the fields use.

Every integer is bounded by what the API server can store (fields narrow that further, see
`dpe.spec.limits`) and every float must be finite. Free-text strings are bounded and marked `PLAIN`
(see `dpe.spec.text`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic.alias_generators import to_camel

from dpe.spec.limits import MAX_INT64, MAX_SEED

API_GROUP = "dpe.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

Int = Annotated[int, Strict(), Field(ge=-MAX_INT64, le=MAX_INT64)]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Count = Annotated[int, Strict(), Field(ge=1, le=MAX_INT64)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0, le=MAX_INT64)]
Seed = Annotated[int, Strict(), Field(ge=0, le=MAX_SEED)]
Fraction = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0.0)]

# Field names that would carry a credential if written inline. Spec models refuse them with a message
# that points to the reference field to use instead.
_INLINE_SECRET_KEYS = {
    "apikey": "apiKeySecret",
    "api_key": "apiKeySecret",
    "token": "apiKeySecret",
    "password": "a Secret reference",
    "secret": "a Secret reference",
    "secretkey": "credentialsSecret",
    "secret_key": "credentialsSecret",
    "accesskey": "credentialsSecret",
    "access_key": "credentialsSecret",
    "secretaccesskey": "credentialsSecret",
    "accesskeyid": "credentialsSecret",
    "aws_access_key_id": "credentialsSecret",
    "aws_secret_access_key": "credentialsSecret",
}


class SpecModel(BaseModel):
    """Base of every spec and status model: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        # NaN passes every bound and infinity every lower one; JSON and the API server have neither.
        allow_inf_nan=False,
        use_attribute_docstrings=True,
        validate_default=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                hint = _INLINE_SECRET_KEYS.get(str(key).lower())
                if hint is not None:
                    raise ValueError(
                        f"field '{key}' would hold a secret inline; secrets are only given by "
                        f"reference ({hint}: {{name, key}} naming a Kubernetes Secret)"
                    )
        return data

    def to_yaml_dict(self) -> dict[str, Any]:
        """The model as plain data with camelCase keys, leaving out unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
