"""The controller's wiring: which watch events wake a run's supervisor, and the order in
which a new attempt's objects are created."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any, cast

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from agentrun import api, controller, jobs, kube


@pytest.mark.parametrize(
    ("read", "generation", "woken"),
    [(None, 1, True), (1, 1, False), (1, 2, True)],
    ids=["never-read", "own-writes-and-finalizer", "spec-edited-since"],
)
def test_only_a_spec_the_supervisor_has_not_read_wakes_it(
    read: int | None, generation: int, woken: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = operator_state(FakeCluster())
    if read is not None:
        state.read_generations["uid-1"] = read
    monkeypatch.setattr(controller, "_operator", state)

    unread = controller._spec_unread("uid-1", cast(Any, {"generation": generation}))

    assert unread is woken


class FakeCluster:
    """The client calls `_start_attempt` makes, recorded in order; `refuse` names a kind
    whose create is forbidden."""

    def __init__(self, refuse: str = "") -> None:
        self.created: list[str] = []
        self.bodies: dict[str, dict[str, Any]] = {}
        self.refuse = refuse

    def _create(self, kind: str, body: dict[str, Any]) -> urllib3.HTTPResponse:
        if kind == self.refuse:
            raise ApiException(status=403, reason="Forbidden")
        self.created.append(kind)
        self.bodies[kind] = body
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


def operator_state(cluster: FakeCluster) -> controller._Operator:
    fake = cast(Any, cluster)
    return controller._Operator(
        clients=controller._Clients(core=fake, batch=fake, custom=fake, rbac=fake),
        defaults=jobs.RunnerDefaults(),
        identity="test",
    )


def start_attempt(cluster: FakeCluster, state: controller._Operator | None = None) -> None:
    run = {"metadata": {"namespace": "ns", "name": "demo", "uid": "uid-1"}}
    spec = api.AgentRunSpec.model_validate({"prompt": "hi", "model": "openai:m"})

    controller._start_attempt(state or operator_state(cluster), run, spec, 1)


def test_the_creation_and_bookkeeping_of_a_job_do_not_wake_its_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = FakeCluster()
    state = operator_state(cluster)
    monkeypatch.setattr(controller, "_operator", state)
    start_attempt(cluster, state)
    job = cluster.bodies["Job"]

    added = controller._job_view_changed("uid-1", job)
    running = controller._job_view_changed("uid-1", {**job, "status": {"active": 1}})

    assert (added, running) == (False, False)


def test_a_job_that_finishes_wakes_its_supervisor_once(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = FakeCluster()
    state = operator_state(cluster)
    monkeypatch.setattr(controller, "_operator", state)
    start_attempt(cluster, state)
    finished = {
        **cluster.bodies["Job"],
        "status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1},
    }

    first = controller._job_view_changed("uid-1", finished)
    again = controller._job_view_changed("uid-1", finished)

    assert (first, again) == (True, False)


def test_a_new_attempt_gets_its_job_only_after_its_rbac_and_checkpoint_claim() -> None:
    cluster = FakeCluster()

    start_attempt(cluster)

    assert cluster.created == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]


def test_a_refused_rbac_object_stops_the_attempt_before_its_job() -> None:
    cluster = FakeCluster(refuse="Role")

    with pytest.raises(kube.Forbidden):
        start_attempt(cluster)

    assert cluster.created == ["ServiceAccount"]


def test_a_namespace_created_while_the_operator_starts_is_still_watched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf's namespace watch lists the namespaces again when it starts; that listing
    must count, or a namespace created just before it is never watched."""
    from kopf._cogs.structs import references
    from kopf._core.reactor import observation

    original = observation.process_discovered_namespace_event
    monkeypatch.setattr(observation, "process_discovered_namespace_event", original)
    controller._watch_namespaces_created_during_startup()
    insights = references.Insights()
    listed = {"type": None, "object": {"metadata": {"name": "team-late"}}}
    other = {"type": None, "object": {"metadata": {"name": "kube-system"}}}

    async def second_listing() -> None:
        for event in (listed, other):
            await observation.process_discovered_namespace_event(
                raw_event=cast(Any, event), namespaces=["team-*"], insights=insights
            )

    asyncio.run(second_listing())

    assert insights.namespaces == {"team-late"}
