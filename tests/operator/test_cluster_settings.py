"""The operator's settings from its environment, and how `KubernetesCluster` tells API failures apart.

The API answers are raised by hand (`ApiException`, a dropped connection) inside the call the
cluster makes: what is tested is the classification and the retry around it, without a server.
"""

from __future__ import annotations

import pytest
import urllib3
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from dpe.retry import Backoff
from dpe_operator.cluster import ClusterError, KubernetesCluster
from dpe_operator.settings import OperatorSettings, SettingsError


def test_settings_come_from_the_charts_variables_and_default_the_rest() -> None:
    settings = OperatorSettings.from_env({"DPE_RECONCILE_SECONDS": "5", "DPE_WORKLOAD_IMAGE": "registry/dpe:1", "DPE_METRICS_PORT": "0"})
    assert settings.reconcile_seconds == 5.0 and settings.workload_image == "registry/dpe:1" and settings.metrics_port == 0
    assert settings.missing_reference_grace_seconds == OperatorSettings().missing_reference_grace_seconds
    assert settings.kube_url is None
    with pytest.raises(AttributeError):
        settings.reconcile_seconds = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(("name", "value"), [("DPE_RECONCILE_SECONDS", "soon"), ("DPE_WORKERS", "1.5"), ("DPE_UNSCHEDULABLE_GRACE_SECONDS", "-1")])
def test_a_bad_setting_is_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        OperatorSettings.from_env({name: value})


def cluster(sleeps: list[float]) -> KubernetesCluster:
    configuration = Configuration()
    configuration.host = "http://127.0.0.1:9"
    return KubernetesCluster(ApiClient(configuration), backoff=Backoff(max_attempts=3, base_delay=0.1, max_delay=0.1, max_elapsed=5.0, jitter=0.0),
                             sleep=sleeps.append)


def failing(*errors: Exception):  # type: ignore[no-untyped-def]
    remaining = list(errors)

    def call() -> str:
        if remaining:
            raise remaining.pop(0)
        return "done"

    return call


@pytest.mark.parametrize("error", [ApiException(status=503, reason="Unavailable"), ApiException(status=429, reason="Too Many Requests"),
                                   urllib3.exceptions.ProtocolError("connection reset")])
def test_a_transient_failure_is_retried_with_backoff(error: Exception) -> None:
    sleeps: list[float] = []
    assert cluster(sleeps)._call("list Jobs", failing(error)) == "done"
    assert sleeps == [0.1]


def test_a_transient_failure_that_lasts_is_raised_as_transient() -> None:
    sleeps: list[float] = []
    with pytest.raises(ClusterError) as raised:
        cluster(sleeps)._call("list Jobs", failing(*[ApiException(status=500, reason="Internal")] * 5))
    assert raised.value.transient and raised.value.status == 500 and len(sleeps) == 2


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_a_refusal_is_raised_at_once_with_the_servers_words(status: int) -> None:
    sleeps: list[float] = []
    error = ApiException(status=status, reason="Refused")
    error.body = '{"kind": "Status", "message": "jobs.batch is forbidden: cannot create"}'
    with pytest.raises(ClusterError) as raised:
        cluster(sleeps)._call("create Job demo-i1-diagnose-a1", failing(error))
    assert not raised.value.transient and not sleeps
    assert raised.value.request == "create Job demo-i1-diagnose-a1" and "cannot create" in raised.value.detail


def test_an_expected_answer_is_returned_not_raised() -> None:
    assert cluster([])._call("create Job x", failing(ApiException(status=409, reason="Conflict")), allow=(409,)) == 409
