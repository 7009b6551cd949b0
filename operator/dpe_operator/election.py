"""Leader election: of the operator's replicas, only the holder of a Lease runs kopf; the others wait.

`dpe-operator KOPF_ARGS...` (the operator image's entrypoint) takes the Lease (coordination.k8s.io/v1)
named by DPE_LEADER_LEASE (`namespace/name`), then runs `kopf KOPF_ARGS` as a child process and
renews the Lease while it runs; without DPE_LEADER_LEASE it is just `kopf KOPF_ARGS`. A standby replica keeps trying and answers
the liveness probe meanwhile. A leader that cannot renew in time stops its kopf and exits, so two
replicas never act at once: the Lease's holder is the only one that writes. On SIGTERM (a rollout)
the leader stops kopf and gives the Lease up, so the next replica takes over at once.

The timing follows client-go's leader election: a Lease lasts 15 s, its holder renews it every 2 s
and gives up leading when 10 s pass without a successful renewal.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

log = logging.getLogger("dpe.operator.election")

LEASE_ENV = "DPE_LEADER_LEASE"
"""`namespace/name` of the Lease the replicas elect their leader with."""
IDENTITY_ENV = "POD_NAME"
"""This replica's name in the Lease (the chart sets it from the pod's name)."""


@dataclass(frozen=True)
class Timing:
    lease_seconds: float = 15.0
    """How long a Lease holds without renewal; another replica takes it after that."""
    renew_seconds: float = 2.0
    """How often the leader renews, and how often a standby tries."""
    deadline_seconds: float = 10.0
    """How long the leader may fail to renew before it stops leading (under lease_seconds, so it stops first)."""


class Leases(Protocol):
    """Reads and writes of one Lease; `replace` fails with `Conflict` when the Lease moved on."""

    def get(self) -> dict[str, Any] | None: ...
    def create(self, spec: dict[str, Any]) -> dict[str, Any]: ...
    def replace(self, lease: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]: ...


class Conflict(Exception):
    """Someone else wrote the Lease first."""


def _micro(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Elector:
    """One replica's side of the election over a `Leases` store."""

    def __init__(self, leases: Leases, identity: str, timing: Timing = Timing(), clock: Callable[[], float] = time.time) -> None:
        self.leases, self.identity, self.timing, self.clock = leases, identity, timing, clock

    def _spec(self, acquired: float, transitions: int) -> dict[str, Any]:
        now = self.clock()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.timing.lease_seconds),
                "acquireTime": _micro(acquired), "renewTime": _micro(now), "leaseTransitions": transitions}

    def try_lead(self) -> bool:
        """Take the Lease if it is free or expired, or renew it if held; whether this replica leads now."""
        try:
            lease = self.leases.get()
            if lease is None:
                self.leases.create(self._spec(self.clock(), 0))
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            if holder == self.identity:
                acquired = _seconds(spec.get("acquireTime")) or self.clock()
                self.leases.replace(lease, self._spec(acquired, int(spec.get("leaseTransitions") or 0)))
                return True
            renewed = _seconds(spec.get("renewTime")) or 0.0
            duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_seconds)
            if holder and self.clock() < renewed + duration:
                return False
            self.leases.replace(lease, self._spec(self.clock(), int(spec.get("leaseTransitions") or 0) + 1))
            return True
        except Conflict:
            return False

    def release(self) -> None:
        """Give the Lease up (when held), so another replica need not wait for it to expire."""
        try:
            lease = self.leases.get()
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                # Times are written back in the API's own form (six fractional digits), whatever the client read.
                spec = {key: value for key, value in lease["spec"].items() if key not in ("holderIdentity", "acquireTime")}
                spec.update(renewTime=_micro(self.clock()), leaseDurationSeconds=1)
                self.leases.replace(lease, spec)
        except Conflict:
            pass


class KubernetesLeases:
    """`Leases` over coordination.k8s.io/v1, with the API server's optimistic concurrency."""

    def __init__(self, client: Any, namespace: str, name: str) -> None:
        import kubernetes

        self.api = kubernetes.client.CoordinationV1Api(client)
        self.client, self.namespace, self.name = client, namespace, name

    def get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(self.client.sanitize_for_serialization(found))

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._write(lambda body: self.api.create_namespaced_lease(self.namespace, body), {"metadata": {"name": self.name}, "spec": spec})

    def replace(self, lease: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        body = {"metadata": {"name": self.name, "resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        return self._write(lambda body: self.api.replace_namespaced_lease(self.name, self.namespace, body), body)

    def _write(self, call: Callable[[dict[str, Any]], Any], body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.client.sanitize_for_serialization(call({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **body})))
        except ApiException as error:
            if error.status == 409:
                raise Conflict(str(error.reason)) from error
            raise


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"standby\n")

    def log_message(self, *_: Any) -> None:
        pass


def _liveness_port(kopf_args: list[str]) -> int | None:
    """The port of kopf's --liveness endpoint, which a standby answers on meanwhile."""
    from urllib.parse import urlsplit

    for arg in kopf_args:
        if arg.startswith("--liveness="):
            return urlsplit(arg.split("=", 1)[1]).port
    return None


def lead(elector: Elector, kopf_args: list[str], stop: threading.Event) -> int:
    """Wait for the Lease, run kopf while it is held, and return kopf's exit status (1 when the Lease was lost)."""
    port = _liveness_port(kopf_args)
    server = None if port is None else ThreadingHTTPServer(("0.0.0.0", port), _Healthy)
    if server is not None:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        while not elector.try_lead():
            if stop.wait(elector.timing.renew_seconds):
                return 0
    except Exception:
        if server is not None:
            server.shutdown()
        raise
    if server is not None:
        server.shutdown()
        server.server_close()
    log.info("leading as %s: starting kopf", elector.identity)
    child = subprocess.Popen([sys.executable, "-m", "kopf", *kopf_args])
    renewed = elector.clock()
    try:
        while child.poll() is None:
            if stop.wait(elector.timing.renew_seconds):
                break
            try:
                if elector.try_lead():
                    renewed = elector.clock()
                    continue
            except Exception as error:  # the API server may be away for a while; the deadline decides
                log.warning("could not renew the Lease: %s", error)
            if elector.clock() - renewed >= elector.timing.deadline_seconds:
                log.error("lost the Lease: stopping kopf so that only one replica acts")
                child.terminate()
                child.wait(timeout=30)
                return 1
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        elector.release()
    return child.returncode or 0


def main(argv: list[str]) -> int:
    """`dpe-operator KOPF_ARGS...`: `kopf KOPF_ARGS`, behind leader election when DPE_LEADER_LEASE is set;
    `dpe-operator uninstall ...`: release the runs before the operator goes (`dpe_operator.uninstall`)."""
    if argv[:1] == ["uninstall"]:
        from dpe_operator import uninstall

        return uninstall.main(argv[1:], os.environ.get("DPE_KUBE_URL") or None)
    lease = os.environ.get(LEASE_ENV, "")
    if not lease:
        os.execv(sys.executable, [sys.executable, "-m", "kopf", *argv])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if "/" not in lease:
        print(f"{LEASE_ENV} must be namespace/name, got {lease!r}", file=sys.stderr)
        return 2
    namespace, name = lease.split("/", 1)
    from dpe_operator.cluster import api_client

    identity = os.environ.get(IDENTITY_ENV) or socket.gethostname()
    try:
        timing = Timing(**{field: float(os.environ[variable]) for field, variable in
                           (("lease_seconds", "DPE_LEASE_SECONDS"), ("renew_seconds", "DPE_LEASE_RENEW_SECONDS"),
                            ("deadline_seconds", "DPE_LEASE_DEADLINE_SECONDS")) if os.environ.get(variable)})
    except ValueError as error:
        print(f"DPE_LEASE_*: {error}", file=sys.stderr)
        return 2
    elector = Elector(KubernetesLeases(api_client(os.environ.get("DPE_KUBE_URL") or None), namespace, name), identity, timing)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return lead(elector, argv, stop)


def cli() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    cli()
