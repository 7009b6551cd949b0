"""What a reconcile pass is given and what it leaves behind, shared by its two halves (fold, reconcile)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dpe.spec import EvolutionRun
from dpe.store import ArtifactStore
from dpe_operator.cluster import Cluster
from dpe_operator.settings import OperatorSettings


class StaleRead(Exception):
    """An object changed between the pass's read and its write (another writer): the pass starts over."""


class BuildError(Exception):
    """The run's spec passed validation but cannot be made into a child object: no retry can help."""


def building(what: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`build()`, its ValueError turned into a BuildError that says what was being built."""
    try:
        return build()
    except ValueError as error:
        raise BuildError(f"{what} cannot be built from the spec: {error}") from error


def iso_time(seconds: float) -> str:
    """An RFC 3339 UTC time to the second, as the API server writes them (`2026-12-05T12:00:00Z`)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RunEvent:
    """A Kubernetes Event about the run."""

    reason: str
    message: str
    warning: bool = False


Announcement = RunEvent | Callable[[], None]
"""An Event or a metric update for a transition."""


@dataclass
class PassContext:
    """Everything a pass touches outside itself, injected so that a test supplies fakes."""

    cluster: Cluster
    settings: OperatorSettings
    store_of: Callable[[EvolutionRun], ArtifactStore]
    """The store client of a run's storage setting."""
    clock: Callable[[], float]
    """Seconds since the epoch."""
    post: Callable[[RunEvent], None]
    """Posts an Event about the run at once."""
    published: dict[str, int] = field(default_factory=dict)
    """Run uid -> the generation whose spec this process last wrote into the run's ConfigMap."""
    post_once: Callable[[RunEvent], None] = lambda event: None
    """Posts an Event about the run unless it was posted already (by this process or an earlier one)."""

    def now_iso(self) -> str:
        return iso_time(self.clock())

    def announce(self, announcements: list[Announcement]) -> None:
        for item in announcements:
            if isinstance(item, RunEvent):
                self.post(item)
            else:
                item()


def owner_of(body: Any) -> dict[str, Any]:
    """The run as the owner of its children."""
    return {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": body["metadata"]["name"], "uid": body["metadata"]["uid"]}


@dataclass
class PassResult:
    """What one pass leaves to do once it has decided: write the status, then announce, then wake up."""

    patch: dict[str, Any]
    """The run's status merge patch; empty when nothing changed."""
    announce: list[Announcement] = field(default_factory=list)
    """Events and counters of the transitions the patch records."""
    requeue: float | None = None
    """Seconds until the spiral wants another look (a retry's back-off), if it does."""
