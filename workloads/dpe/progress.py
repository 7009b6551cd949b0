"""Progress for long operations: a rich bar on a terminal, structured log lines in a Job.

Stages call `progress(total, what)` and `advance(n)`; where stderr is not a terminal (a Kubernetes
Job, CI) the same calls emit one JSON log line per tenth of the work instead of redrawing a bar.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

log = logging.getLogger("dpe.progress")


class Advance(Protocol):
    def __call__(self, n: int = 1) -> None: ...


@contextmanager
def progress(total: int, what: str) -> Iterator[Advance]:
    """Report progress of `total` units of work described by `what`."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
        ) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    done = 0
    started = time.monotonic()
    next_report = max(total // 10, 1)

    def advance(n: int = 1) -> None:
        nonlocal done, next_report
        done += n
        if done >= next_report or done >= total:
            log.info(json.dumps({"event": "progress", "what": what, "done": done, "total": total,
                                 "elapsed_s": round(time.monotonic() - started, 2)}))
            next_report = done + max(total // 10, 1)

    yield advance
