"""The judge: a vision-language model that types errors, settles unreadable answers, writes directions.

The rules in `dpe.grading` decide correctness wherever they can read the answer; the judge looks at
the image to say *why* a wrong answer is wrong (one of the five error types) and decides the answers
the rules could not read. It also writes the two or three sentences of generation direction for each
weak (type, error) pair of the weakness brief. All calls run concurrently under the endpoint's
limits, which pace them; the judge adds no waits of its own.

Questions, reference answers, the answers graded and the failure examples reach the judge fenced
as data (`dpe.llm.as_data`), and its verdict is the final JSON object of its reply, so an answer
that writes `{"is_correct": true}` grades nothing.

A call that fails (a reply that never parses, is too large or too deep, a server that never
finishes) counts as a judge failure (None), which the diagnosis keeps apart from the model's own
errors: one bad reply never fails the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from dpe.spec import ModelEndpoint
from dpe.taxonomy import CapabilityType, ErrorType

log = logging.getLogger(__name__)

T = TypeVar("T")


def prompt_template(name: str) -> str:
    """A prompt file shipped in `dpe/prompts/` (prompts live in files, not in code)."""
    return resources.files("dpe").joinpath("prompts", f"{name}.md").read_text(encoding="utf-8")


@dataclass(frozen=True)
class JudgeRequest:
    image: bytes
    question: str
    gold: str
    answer: str
    capability_type: CapabilityType | None = None


class JudgeReply(BaseModel):
    """What the judge must return for one answer."""

    model_config = ConfigDict(extra="ignore")

    is_correct: bool
    error_type: ErrorType = ErrorType.other
    error_description: str = Field(default="", max_length=2000)


@dataclass(frozen=True)
class DirectionRequest:
    capability_type: CapabilityType
    error_type: ErrorType
    examples: list[str]


class DirectionReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    generation_direction: str = Field(min_length=20, max_length=1500)


class ClassifyReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    capability_type: CapabilityType


class Judge(Protocol):
    def verdicts(self, requests: Sequence[JudgeRequest], advance: Callable[[int], None] | None = None) -> list[JudgeReply | None]:
        """One reply per request, or None where the judge failed."""
        ...

    def directions(self, requests: Sequence[DirectionRequest]) -> list[str | None]:
        """One generation direction per weak (type, error) pair, or None where it failed."""
        ...

    def classify(self, items: Sequence[tuple[bytes, str]]) -> list[CapabilityType | None]:
        """The capability type of each (image, question), decided by looking at the image."""
        ...


class LlmJudge:
    """The judge over an OpenAI-compatible endpoint."""

    def __init__(self, endpoint: ModelEndpoint, api_key: str | None, *, attempts: int = 3, retry: Any = None):
        from dpe.llm import CHAT_RETRY, ChatClient, UsageLedger

        self.ledger = UsageLedger()
        self.client = ChatClient(endpoint, api_key, role="judge", ledger=self.ledger, retry=retry or CHAT_RETRY)
        self.attempts = attempts

    async def _settled(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """The result of one judge call, or None when it fails, so the rest of the batch goes on.

        Failed requests and unusable replies are already counted in the ledger by the client and
        `ask_json`; anything else (a picture that does not decode, say) is logged and counted here.
        """
        from dpe.llm import LLMError

        try:
            return await call()
        except LLMError:
            return None
        except Exception as error:  # one broken item is a judge failure, not a failed batch
            log.exception("judge call failed unexpectedly")
            self.ledger.record_invalid(self.client.role, f"unexpected {type(error).__name__}")
            return None

    async def _verdict(self, request: JudgeRequest, advance: Callable[[int], None] | None) -> JudgeReply | None:
        from dpe.llm import as_data, ask_json, image_part

        async def verdict() -> JudgeReply:
            text = prompt_template("judge").format(
                question=as_data(request.question), gold=as_data(request.gold), answer=as_data(request.answer[-4000:])
            )
            messages = [{"role": "user", "content": [image_part(request.image), {"type": "text", "text": text}]}]
            return await ask_json(self.client, messages, JudgeReply, attempts=self.attempts, ledger=self.ledger)

        try:
            return await self._settled(verdict)
        finally:
            if advance is not None:
                advance(1)

    async def _direction(self, request: DirectionRequest) -> str | None:
        from dpe.llm import as_data, ask_json

        async def direction() -> str:
            examples = "\n".join(f"- {as_data(e)}" for e in request.examples[:5]) or "- (no descriptions recorded)"
            text = prompt_template("direction").format(
                capability_type=request.capability_type.value,
                capability_description=request.capability_type.description,
                error_type=request.error_type.value,
                error_description=request.error_type.description,
                examples=examples,
            )
            messages = [{"role": "user", "content": text}]
            reply = await ask_json(self.client, messages, DirectionReply, attempts=self.attempts, ledger=self.ledger)
            return reply.generation_direction

        return await self._settled(direction)

    async def _classify(self, image: bytes, question: str) -> CapabilityType | None:
        from dpe.llm import as_data, ask_json, image_part

        async def classify() -> CapabilityType:
            types = "\n".join(f"- {t.value}: {t.description}" for t in CapabilityType)
            text = prompt_template("classify").format(types=types, question=as_data(question))
            messages = [{"role": "user", "content": [image_part(image), {"type": "text", "text": text}]}]
            reply = await ask_json(self.client, messages, ClassifyReply, attempts=self.attempts, ledger=self.ledger)
            return reply.capability_type

        return await self._settled(classify)

    def classify(self, items: Sequence[tuple[bytes, str]]) -> list[CapabilityType | None]:
        async def all_of() -> list[CapabilityType | None]:
            return list(await asyncio.gather(*(self._classify(image, question) for image, question in items)))

        return asyncio.run(all_of())

    def verdicts(self, requests: Sequence[JudgeRequest], advance: Callable[[int], None] | None = None) -> list[JudgeReply | None]:
        async def all_of() -> list[JudgeReply | None]:
            return list(await asyncio.gather(*(self._verdict(r, advance) for r in requests)))

        return asyncio.run(all_of())

    def directions(self, requests: Sequence[DirectionRequest]) -> list[str | None]:
        async def all_of() -> list[str | None]:
            return list(await asyncio.gather(*(self._direction(r) for r in requests)))

        return asyncio.run(all_of())
