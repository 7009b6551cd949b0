"""Prometheus metrics of the operator, served on /metrics.

Per-run series (phase, per-capability accuracy, mixture weights, last progress) exist only while the
run does: `forget_run` removes them when the run is deleted, so dashboards never show ghosts.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

RUN_PHASE = Gauge("dpe_run_phase", "1 for the phase each EvolutionRun is in.", ["namespace", "run", "phase"], registry=REGISTRY)
RUN_ITERATION = Gauge("dpe_run_current_iteration", "Highest iteration started per run.", ["namespace", "run"], registry=REGISTRY)
RUN_BEST_SCORE = Gauge("dpe_run_best_score", "Best evaluation score so far per run.", ["namespace", "run"], registry=REGISTRY)
RUN_LAST_PROGRESS = Gauge(
    "dpe_run_last_progress_timestamp_seconds",
    "Unix time of the run's latest progress: an iteration started, a stage attempt started or finished, "
    "the run resumed or finished.",
    ["namespace", "run"],
    registry=REGISTRY,
)
ITERATIONS = Gauge("dpe_iterations", "Iterations per run by phase.", ["namespace", "run", "phase"], registry=REGISTRY)
STAGES = Gauge("dpe_stages", "Stages of a run's iterations by outcome.", ["namespace", "run", "phase"], registry=REGISTRY)
STAGE_ATTEMPTS = Counter("dpe_stage_attempts", "Finished stage attempts by stage and outcome.", ["stage", "outcome"], registry=REGISTRY)
STAGE_DURATION = Histogram(
    "dpe_stage_duration_seconds",
    "Wall time of successful stage attempts (Job creation to completion).",
    ["stage"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
    registry=REGISTRY,
)
RETRIES = Counter("dpe_stage_retries", "Stage attempts started after a failure or disruption, by reason.", ["reason"], registry=REGISTRY)
CAPABILITY_ACCURACY = Gauge("dpe_capability_accuracy", "Probe accuracy per capability type at the latest diagnosis.", ["namespace", "run", "capability"], registry=REGISTRY)
MIXTURE_WEIGHT = Gauge("dpe_mixture_weight", "Generation weight per capability type at the latest diagnosis.", ["namespace", "run", "capability"], registry=REGISTRY)
STORE_ERRORS = Counter("dpe_store_errors", "Errors talking to the artifact store.", ["kind"], registry=REGISTRY)
API_ERRORS = Counter("dpe_api_errors", "Errors talking to the Kubernetes API.", ["status"], registry=REGISTRY)
PASSES = Counter("dpe_operator_passes", "Reconcile passes by trigger (event or timer) and what they did (full, or skipped: "
                 "a timer pass over a quiet run, one unchanged since a pass that found nothing to do).", ["trigger", "kind"], registry=REGISTRY)

PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")
OUTCOMES = ("Pending", "Running", "Succeeded", "Failed")
"""Phases of an iteration and outcomes of a stage."""
_per_run: dict[tuple[str, str], set[str]] = {}
_progress_known: set[tuple[str, str]] = set()
"""Runs whose progress time this process has set (by a transition or from the status)."""
_progress_guard = threading.Lock()
served_port: int | None = None
"""Port of the latest /metrics endpoint started (tests start it on a free port)."""


def serve(port: int, address: str = "0.0.0.0") -> int:
    """Start the /metrics endpoint; returns the port it listens on (0 picks a free one)."""
    global served_port
    server, _ = start_http_server(port, addr=address, registry=REGISTRY)
    served_port = int(server.server_port)
    return served_port


def observe_run(namespace: str, run: str, phase: str, iteration: int, best: float | None,
                iterations: dict[str, int], stages: dict[str, int], accuracy: dict[str, float], weights: dict[str, float]) -> None:
    """Set every per-run series from the run's current view."""
    for candidate in PHASES:
        RUN_PHASE.labels(namespace, run, candidate).set(1.0 if candidate == phase else 0.0)
    RUN_ITERATION.labels(namespace, run).set(iteration)
    if best is not None:
        RUN_BEST_SCORE.labels(namespace, run).set(best)
    for candidate in OUTCOMES:
        ITERATIONS.labels(namespace, run, candidate).set(iterations.get(candidate, 0))
        STAGES.labels(namespace, run, candidate).set(stages.get(candidate, 0))
    known = _per_run.setdefault((namespace, run), set())
    for capability in known - set(accuracy):
        CAPABILITY_ACCURACY.remove(namespace, run, capability)
        MIXTURE_WEIGHT.remove(namespace, run, capability)
    for capability, value in accuracy.items():
        CAPABILITY_ACCURACY.labels(namespace, run, capability).set(value)
        MIXTURE_WEIGHT.labels(namespace, run, capability).set(weights.get(capability, 0.0))
    _per_run[(namespace, run)] = set(accuracy)


def progressed(namespace: str, run: str, at: float | None = None) -> None:
    """The run made progress now (or at `at`, seconds since the epoch)."""
    with _progress_guard:
        RUN_LAST_PROGRESS.labels(namespace, run).set(time.time() if at is None else at)
        _progress_known.add((namespace, run))


def progress_from_status(namespace: str, run: str, at: float | None) -> None:
    """Set the run's progress time from what its status holds, unless this process already knows it.

    After a restart the operator has seen no transition yet; the newest time in the status (see
    `observe.last_progress`) keeps the run from looking stuck, or fresh, until the next one.
    """
    if at is None:
        return
    with _progress_guard:
        if (namespace, run) not in _progress_known:
            RUN_LAST_PROGRESS.labels(namespace, run).set(at)
            _progress_known.add((namespace, run))


def forget_run(namespace: str, run: str) -> None:
    """Drop every series of a deleted run."""
    for phase in PHASES:
        _remove(RUN_PHASE, namespace, run, phase)
    _remove(RUN_ITERATION, namespace, run)
    _remove(RUN_BEST_SCORE, namespace, run)
    with _progress_guard:
        _remove(RUN_LAST_PROGRESS, namespace, run)
        _progress_known.discard((namespace, run))
    for phase in OUTCOMES:
        _remove(ITERATIONS, namespace, run, phase)
        _remove(STAGES, namespace, run, phase)
    for capability in _per_run.pop((namespace, run), set()):
        _remove(CAPABILITY_ACCURACY, namespace, run, capability)
        _remove(MIXTURE_WEIGHT, namespace, run, capability)


def _remove(metric: Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
