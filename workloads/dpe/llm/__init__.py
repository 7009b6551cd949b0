"""Chat calls to OpenAI-compatible endpoints: limits, retries, accounting, images and typed replies.

The agents and the judge talk to remote models through `ChatClient` (`client`), which admits each
request through its endpoint's shared `EndpointLimiter` (`limits`), retries transient failures
under a `dpe.retry.Backoff`, and charges a `UsageLedger` and a `SpendLimit` (`usage`). Failures are
the exceptions of `errors`; `image_part` (`images`) turns pictures into message parts, `as_data`
(`fencing`) readies generated text for the data blocks of a prompt, and `ask_json` (`structured`)
turns replies into validated pydantic models, each read from the reply's final JSON object.
"""

from dpe.llm.client import (
    CHAT_RETRY,
    MAX_REPLY_BYTES,
    ChatClient,
    ChatReply,
    Message,
    classify_status,
    estimate_prompt_tokens,
)
from dpe.llm.errors import (
    BudgetExceeded,
    FailureKind,
    InvalidReply,
    LLMError,
    PermanentLLMError,
    RetriesExhausted,
)
from dpe.llm.fencing import as_data
from dpe.llm.images import image_part
from dpe.llm.limits import (
    BURST_SECONDS,
    EndpointLimiter,
    LimiterRegistry,
    TokenBucket,
)
from dpe.llm.structured import (
    MAX_JSON_DEPTH,
    ReplyFormatError,
    ask_json,
    extract_json_object,
    final_json_object,
    parse_reply,
    schema_json,
)
from dpe.llm.usage import SpendLimit, UsageLedger

__all__ = [
    "BURST_SECONDS",
    "CHAT_RETRY",
    "MAX_JSON_DEPTH",
    "MAX_REPLY_BYTES",
    "BudgetExceeded",
    "ChatClient",
    "ChatReply",
    "EndpointLimiter",
    "FailureKind",
    "InvalidReply",
    "LLMError",
    "LimiterRegistry",
    "Message",
    "PermanentLLMError",
    "ReplyFormatError",
    "RetriesExhausted",
    "SpendLimit",
    "TokenBucket",
    "UsageLedger",
    "as_data",
    "ask_json",
    "classify_status",
    "estimate_prompt_tokens",
    "extract_json_object",
    "final_json_object",
    "image_part",
    "parse_reply",
    "schema_json",
]
