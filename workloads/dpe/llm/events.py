"""Structured log lines of the chat layer, all under the one `dpe.llm` logger."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("dpe.llm")


def log_event(level: int, event: str, **fields: Any) -> None:
    """One structured log line: the fields go both into the text and onto the record."""
    text = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    logger.log(level, "%s %s", event, text, extra=fields)
