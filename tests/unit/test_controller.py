"""The controller's wiring: which watch events wake a run's supervisor, and the order in
which a new attempt's objects are created."""

from __future__ import annotations

import io
import json
from typing import Any, cast

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from agentrun import api, controller, jobs, kube


@pytest.mark.parametrize(
    ("generation", "status", "unobserved"),
    [
        (1, {}, True),
        (1, {"observedGeneration": 1, "phase": "Running"}, False),
        (2, {"observedGeneration": 1, "phase": "Running"}, True),
    ],
    ids=["never-acted-on", "own-status-write", "spec-edited"],
)
def test_only_a_spec_the_operator_has_not_acted_on_wakes_the_supervisor(
    generation: int, status: dict[str, Any], unobserved: bool
) -> None:
    meta = {"name": "demo", "generation": generation}

    woken = controller._spec_unobserved(cast(Any, meta), cast(Any, status))

    assert woken is unobserved


class FakeCluster:
    """The client calls `_start_attempt` makes, recorded in order; `refuse` names a kind
    whose create is forbidden."""

    def __init__(self, refuse: str = "") -> None:
        self.created: list[str] = []
        self.refuse = refuse

    def _create(self, kind: str, body: dict[str, Any]) -> urllib3.HTTPResponse:
        if kind == self.refuse:
            raise ApiException(status=403, reason="Forbidden")
        self.created.append(kind)
        answer = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        return urllib3.HTTPResponse(io.BytesIO(json.dumps(answer).encode()), status=201)

    def read_namespaced_config_map(self, name: str, namespace: str, **_: Any) -> Any:
        raise ApiException(status=404, reason="Not Found")

    def create_namespaced_config_map(self, namespace: str, body: Any, **_: Any) -> Any:
        return self._create("ConfigMap", body)

    def __getattr__(self, method: str) -> Any:
        kinds = {
            "create_namespaced_service_account": "ServiceAccount",
            "create_namespaced_role": "Role",
            "create_namespaced_role_binding": "RoleBinding",
            "create_namespaced_job": "Job",
        }
        if method not in kinds:
            raise AttributeError(method)
        return lambda namespace, body, **_: self._create(kinds[method], body)


def start_attempt(cluster: FakeCluster) -> None:
    fake = cast(Any, cluster)
    state = controller._Operator(
        clients=controller._Clients(core=fake, batch=fake, custom=fake, rbac=fake),
        defaults=jobs.RunnerDefaults(),
        identity="test",
    )
    run = {"metadata": {"namespace": "ns", "name": "demo", "uid": "uid-1"}}
    spec = api.AgentRunSpec.model_validate({"prompt": "hi", "model": "openai:m"})

    controller._start_attempt(state, run, spec, 1)


def test_a_new_attempt_gets_its_job_only_after_its_rbac_and_checkpoint_claim() -> None:
    cluster = FakeCluster()

    start_attempt(cluster)

    assert cluster.created == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]


def test_a_refused_rbac_object_stops_the_attempt_before_its_job() -> None:
    cluster = FakeCluster(refuse="Role")

    with pytest.raises(kube.Forbidden):
        start_attempt(cluster)

    assert cluster.created == ["ServiceAccount"]
