"""The reconciler of the operator process: one pass at a time per run, failures told apart, wake-ups.

Every trigger (the run's own events, its timer, a Job or pod of it changing, a wake-up the spiral
asked for) comes to `Reconciler.reconcile`, which reads the run inside the run's lock and writes
its status itself, so no pass works from, or writes back, a status older than the one before it.
The Events and counters of the run's transitions go out only once that status is written.

The timer is a safety net, and a quiet run needs none: when a pass changed nothing, asked for no
later pass, and left every Job of the run settled (`observe.settled`), the run is marked quiet with
the version of the run and of each of its Jobs it saw. A timer pass that finds the same versions
does no work at all (no API call); any change of the run or of one of its Jobs, and every pass not
started by the timer, goes the full way.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from dpe import layout
from dpe import status
from dpe.spec import EvolutionRun, RunPhase
from dpe.status import run_status_patch
from dpe.store import ArtifactStore, PermanentStoreError, StoreError, open_store
from dpe_operator import metrics, names, observe
from dpe_operator.cluster import Cluster, ClusterError
from dpe_operator.passes import BuildError, PassContext, RunEvent, StaleRead, iso_time
from dpe_operator.reconcile import reconcile_pass
from dpe_operator.settings import OperatorSettings

log = logging.getLogger("dpe.operator")

STALE_RETRY_SECONDS = 1.0
"""Wait before a pass that met a newer write starts over: the other writer is done or nearly."""
JobsByRun = Mapping[tuple[str, str], Iterable[dict[str, Any]]]
"""The operator's stage Jobs by (namespace, run label), as its watch last saw them."""
QuietMark = tuple[str, frozenset[tuple[str, str]]]
"""A quiet run as its last pass saw it: the run's resourceVersion and each Job's (name, resourceVersion)."""


def quiet_mark(run_version: str, jobs: Iterable[Mapping[str, Any]]) -> QuietMark:
    return run_version, frozenset((j["metadata"]["name"], j["metadata"].get("resourceVersion", "")) for j in jobs)
Poster = Callable[[Mapping[str, Any], RunEvent], None]
"""Posts an Event about a run (its body as read)."""


class RetryLater(Exception):
    """The pass could not finish; the run is to be looked at again in `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Reconciler:
    def __init__(self, settings: OperatorSettings, cluster: Cluster, post: Poster, *,
                 store_of: Callable[[EvolutionRun], ArtifactStore] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.cluster = cluster
        self.post = post
        self.clock = clock
        self._store_of = store_of or self._cached_store
        self._stores: dict[str, ArtifactStore] = {}
        self._stores_guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._posted: set[tuple[str, str, str]] = set()
        """(run uid, reason, message) of the Events this process posted or found posted."""
        self._events_listed: set[str] = set()
        """Runs (uid) whose Events this process has read into `_posted`."""
        self.published: dict[str, int] = {}
        """Run uid -> the generation whose spec this process last wrote into the run's ConfigMap."""
        self._quiet: dict[tuple[str, str], QuietMark] = {}
        """Runs whose last pass found nothing to do, as it saw them (module doc)."""
        self.wakeups = Wakeups(self.reconcile)

    def _post(self, body: Mapping[str, Any], event: RunEvent) -> None:
        self._posted.add((body["metadata"]["uid"], event.reason, event.message))
        self.post(body, event)

    def _post_once(self, body: Mapping[str, Any], event: RunEvent) -> None:
        """An Event for a step found already done: a process that died between the step and its
        Event never posted it, so it goes out unless this process or the API server has it. The
        run's Events are listed once per process: what they hold joins what this process posted."""
        uid = body["metadata"]["uid"]
        if uid not in self._events_listed:
            found = self.cluster.events(body["metadata"]["namespace"], "EvolutionRun", body["metadata"]["name"])
            self._posted |= {(uid, e.get("reason"), e.get("message")) for e in found}
            self._events_listed.add(uid)
        if (uid, event.reason, event.message) not in self._posted:
            self._post(body, event)

    def _cached_store(self, run: EvolutionRun) -> ArtifactStore:
        """One store client per storage setting (a client holds a connection pool)."""
        key = run.spec.storage.model_dump_json()
        with self._stores_guard:
            if key not in self._stores:
                self._stores[key] = open_store(run.spec.storage)
            return self._stores[key]

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        """Timers, run events and Job events all reconcile; one pass at a time per run keeps actions single."""
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def reconcile(self, namespace: str, name: str, jobs_by_run: JobsByRun, *, timer_version: str | None = None) -> None:
        """One pass of the spiral for one run, on its freshest state.

        `timer_version` is the run's resourceVersion as the timer that started the pass saw it; a
        timer pass over a quiet run that has not changed since does nothing (module doc).
        Raises `RetryLater` when the pass could not finish: soon for an outage of the API server or
        the store, after `refused_backoff_seconds` when the API server refused a request (the run's
        RequestsAccepted condition and an Event then name it).
        """
        body: dict[str, Any] | None = None
        key = (namespace, name)
        trigger = "event" if timer_version is None else "timer"
        try:
            with self._lock(namespace, name):
                jobs = [*jobs_by_run.get((namespace, names.label_value(name)), [])]
                if timer_version is not None and self._quiet.get(key) == quiet_mark(timer_version, jobs):
                    metrics.PASSES.labels(trigger, "skipped").inc()
                    return
                self._quiet.pop(key, None)
                metrics.PASSES.labels(trigger, "full").inc()
                body = self.cluster.get_run(namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return
                posted = body
                ctx = PassContext(self.cluster, self.settings, self._store_of, self.clock, lambda event: self._post(posted, event), self.published,
                                  lambda event: self._post_once(posted, event))
                result = reconcile_pass(ctx, body, jobs)
                if result.patch and not self.cluster.patch_run_status(namespace, name, result.patch, body["metadata"]["resourceVersion"]):
                    log.debug("run %s/%s changed during the pass; the next pass writes its status", namespace, name)
                else:
                    ctx.announce(result.announce)
                if result.requeue is not None:
                    self.wakeups.schedule(namespace, name, result.requeue, jobs_by_run)
                elif not result.patch and not result.announce and observe.settled(jobs):
                    self._quiet[key] = quiet_mark(body["metadata"]["resourceVersion"], jobs)
        except StaleRead as error:
            raise RetryLater(str(error), STALE_RETRY_SECONDS) from error
        except ClusterError as error:
            metrics.API_ERRORS.labels(str(error.status or "none")).inc()
            if error.transient or body is None:
                self._trouble(body, "ApiUnavailable", f"Kubernetes API: {error}")
                raise RetryLater(f"Kubernetes API: {error}", self.settings.reconcile_seconds) from error
            self._refused(body, error)
            raise RetryLater(f"Kubernetes API refused a request: {error}", self.settings.refused_backoff_seconds) from error
        except PermanentStoreError as error:
            metrics.STORE_ERRORS.labels(type(error).__name__).inc()
            self._fail(body, "StoreRefused", f"the artifact store refused the operator: {error}")
        except StoreError as error:
            metrics.STORE_ERRORS.labels(type(error).__name__).inc()
            self._trouble(body, "StoreUnavailable", f"artifact store: {error}")
            raise RetryLater(f"artifact store: {error}", self.settings.reconcile_seconds) from error
        except BuildError as error:
            self._fail(body, "ReconcileFailed", str(error))
        except Exception as error:
            # A fault of the operator itself: say so on the run and look again later, when a fixed
            # operator may be running; failing the run would make the fault permanent.
            log.exception("pass over run %s/%s failed", namespace, name)
            self._trouble(body, "OperatorError", f"{type(error).__name__}: {error}")
            raise RetryLater(f"operator error: {type(error).__name__}: {error}", self.settings.refused_backoff_seconds) from error

    def _write_conditions(self, body: Mapping[str, Any], fields: dict[str, Any], replace: dict[str, dict[str, Any]]) -> None:
        """Patch the run's status with `fields` and the conditions in `replace` (by type), keeping the others."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        current = body.get("status") or {}
        conditions = [c for c in current.get("conditions") or [] if c.get("type") not in replace] + list(replace.values())
        try:
            self.cluster.patch_run_status(namespace, name, run_status_patch(current, {**fields, "conditions": conditions}),
                                          body["metadata"]["resourceVersion"])
        except ClusterError as error:
            log.warning("run %s/%s: could not record in its status why the pass stopped: %s", namespace, name, error)

    def _trouble(self, body: Mapping[str, Any] | None, reason: str, message: str) -> None:
        """A pass that will be tried again: Progressing carries why, and one Event says so when that changes."""
        if body is None:
            return
        previous = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
        progressing = previous.get("Progressing")
        if progressing is not None and progressing.get("reason") == reason:
            return
        generation = body["metadata"].get("generation")
        now = self._now_iso()
        flag = progressing is not None and progressing.get("status") == "True"
        condition = status.condition("Progressing", flag, reason, f"{message}; retrying", generation, list(previous.values()), now)
        self._write_conditions(body, {}, {"Progressing": condition})
        self.post(body, RunEvent(reason, condition["message"][:1000], warning=True))

    def _fail(self, body: Mapping[str, Any] | None, reason: str, message: str) -> None:
        """A pass no retry can finish: the run fails, saying why."""
        if body is None:
            return
        generation = body["metadata"].get("generation")
        previous = list((body.get("status") or {}).get("conditions") or [])
        now = self._now_iso()
        self._write_conditions(body, {"phase": RunPhase.failed.value, "stopReason": reason, "message": status.capped(message),
                                      "completionTime": (body.get("status") or {}).get("completionTime") or now}, {
            "Ready": status.condition("Ready", False, reason, message, generation, previous, now),
            "Progressing": status.condition("Progressing", False, reason, message, generation, previous, now),
            "Failed": status.condition("Failed", True, reason, message, generation, previous, now),
        })
        self.post(body, RunEvent("RunFailed", f"{reason}: {message}"[:1000], warning=True))

    def _now_iso(self) -> str:
        return iso_time(self.clock())

    def _refused(self, body: Mapping[str, Any], error: ClusterError) -> None:
        """Say in the run's status and in an Event which request the API server refused, and why."""
        previous = list((body.get("status") or {}).get("conditions") or [])
        refused = observe.refused_condition(error.request, error.status, error.detail, body["metadata"].get("generation"), previous,
                                            self._now_iso())
        self._write_conditions(body, {}, {observe.ACCEPTED_CONDITION: refused})
        self.post(body, RunEvent("RequestRefused", refused["message"][:1000], warning=True))

    def delete(self, body: Mapping[str, Any], on_removed: Callable[[int], None]) -> None:
        """Remove the run's Jobs and Iterations, and its store prefix when the spec asks for it."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        # Under the run's lock: a pass already under way finishes first, and later ones see the deletion.
        with self._lock(namespace, name):
            metrics.forget_run(namespace, name)
            self.wakeups.forget(namespace, name)
            self._quiet.pop((namespace, name), None)
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
        self.published.pop(body["metadata"]["uid"], None)
        self._posted = {key for key in self._posted if key[0] != body["metadata"]["uid"]}
        self._events_listed.discard(body["metadata"]["uid"])
        for job in self.cluster.jobs(namespace, name):
            self.cluster.delete_job(namespace, job["metadata"]["name"])
        for item in self.cluster.iterations(namespace, name):
            self.cluster.delete_iteration(namespace, item["metadata"]["name"])
        try:
            run = EvolutionRun.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        except ValidationError:
            return
        if run.spec.storage.delete_on_run_deletion:
            on_removed(self._store_of(run).delete_prefix(layout.run_prefix(namespace, name)))


class Wakeups:
    """Passes the spiral asked for at a later time (a retry's back-off), run when they fall due
    rather than at the next safety-net timer.

    Each runs in a copy of the context of the pass that asked for it, where kopf's Event posting works.
    """

    def __init__(self, reconcile: Callable[[str, str, JobsByRun], None]) -> None:
        self._reconcile = reconcile
        self._due: dict[tuple[str, str], tuple[float, contextvars.Context, JobsByRun]] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, namespace: str, name: str, after: float, jobs_by_run: JobsByRun) -> None:
        """A pass of the run in `after` seconds, unless an earlier one is already due."""
        when = time.monotonic() + after
        with self._changed:
            current = self._due.get((namespace, name))
            if current is None or when < current[0]:
                self._due[(namespace, name)] = (when, contextvars.copy_context(), jobs_by_run)
                self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dpe-wakeups", daemon=True)
                self._thread.start()

    def forget(self, namespace: str, name: str) -> None:
        with self._changed:
            self._due.pop((namespace, name), None)

    def _loop(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                ready = [(key, entry) for key, entry in self._due.items() if entry[0] <= now]
                if not ready:
                    self._changed.wait(timeout=min((entry[0] for entry in self._due.values()), default=now + 60.0) - now)
                    continue
                for key, _ in ready:
                    del self._due[key]
            for (namespace, name), (_, context, jobs_by_run) in ready:
                try:
                    context.run(self._reconcile, namespace, name, jobs_by_run)
                except Exception as error:  # the safety-net timer passes again soon; this wake-up is spent
                    log.warning("wake-up pass of run %s/%s failed: %s", namespace, name, error)
