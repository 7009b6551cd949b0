"""Leader election over a Lease: one leader at a time, takeover after expiry, release on shutdown.

`MemoryLeases` keeps one Lease with the API server's optimistic concurrency (a replace of a stale
resourceVersion is a conflict); the clock is the test's.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from dpe_operator.election import Conflict, Elector, Timing, lead


class MemoryLeases:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def get(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise Conflict("exists")
        self.version += 1
        self.lease = {"metadata": {"resourceVersion": str(self.version)}, "spec": dict(spec)}
        return copy.deepcopy(self.lease)

    def replace(self, lease: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        assert self.lease is not None
        if lease["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise Conflict("moved on")
        self.version += 1
        self.lease = {"metadata": {"resourceVersion": str(self.version)}, "spec": {k: v for k, v in spec.items() if v is not None}}
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_one_replica_leads_and_the_other_waits_until_the_lease_expires() -> None:
    leases, clock = MemoryLeases(), Clock()
    first, second = Elector(leases, "a", clock=clock), Elector(leases, "b", clock=clock)
    assert first.try_lead() and not second.try_lead()
    clock.now += 10
    assert first.try_lead(), "the holder renews"
    clock.now += 14
    assert not second.try_lead(), "renewed 14 s ago: still held"
    clock.now += 2
    assert second.try_lead(), "not renewed for 16 s: taken over"
    assert leases.lease["spec"]["holderIdentity"] == "b" and leases.lease["spec"]["leaseTransitions"] == 1
    assert not first.try_lead(), "the old leader sees it lost the Lease"


def test_two_replicas_racing_for_a_free_lease_leave_one_leader() -> None:
    leases, clock = MemoryLeases(), Clock()
    first, second = Elector(leases, "a", clock=clock), Elector(leases, "b", clock=clock)
    assert first.try_lead()
    clock.now += 20
    stale = leases.get()
    assert second.try_lead()
    leases.get = lambda: copy.deepcopy(stale)  # type: ignore[method-assign]
    assert not first.try_lead(), "a replace from a stale read conflicts"


def test_a_released_lease_is_taken_at_once() -> None:
    leases, clock = MemoryLeases(), Clock()
    first, second = Elector(leases, "a", clock=clock), Elector(leases, "b", clock=clock)
    assert first.try_lead()
    first.release()
    clock.now += 1.5
    assert second.try_lead()


def test_a_leader_that_cannot_renew_stops_its_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    """`lead` runs a stand-in for kopf (a sleeping child) and must stop it once renewals fail past the deadline."""
    import subprocess
    import sys

    leases, clock = MemoryLeases(), Clock()
    timing = Timing(lease_seconds=15, renew_seconds=0.01, deadline_seconds=10)
    elector = Elector(leases, "a", timing, clock=clock)
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        child = real_popen([sys.executable, "-c", "import time; time.sleep(60)"])
        started.append(child)
        return child

    monkeypatch.setattr(subprocess, "Popen", popen)
    calls = {"n": 0}
    renew = elector.try_lead

    def flaky() -> bool:
        calls["n"] += 1
        if calls["n"] > 1:
            clock.now += 3
            raise ConnectionError("API server away")
        return renew()

    elector.try_lead = flaky  # type: ignore[method-assign]
    assert lead(elector, ["run"], threading.Event()) == 1
    assert started and started[0].poll() is not None, "kopf was stopped"
