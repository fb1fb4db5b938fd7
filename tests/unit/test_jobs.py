"""The Job of an attempt: its manifest, and what is read back from it and its pods."""

from __future__ import annotations

from typing import Any

from agentrun import api, jobs, names


def spec(**extra: Any) -> api.AgentRunSpec:
    return api.AgentRunSpec.model_validate({"prompt": "hi", "model": "openai:m", **extra})


def build(**extra: Any) -> dict[str, Any]:
    return jobs.build(
        run_name="demo",
        run_uid="uid-1",
        spec=spec(**extra),
        attempt=2,
        defaults=jobs.RunnerDefaults(),
    )


def test_the_job_runs_the_runner_as_non_root_under_the_restricted_standard() -> None:
    pod = build()["spec"]["template"]["spec"]
    container = pod["containers"][0]

    assert container["command"] == ["agentrun-runner"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_the_api_key_reaches_the_pod_only_by_secret_reference() -> None:
    provider = {"baseURL": "http://m/v1", "apiKeySecretRef": {"name": "s", "key": "k"}}

    env = build(provider=provider)["spec"]["template"]["spec"]["containers"][0]["env"]

    key = next(e for e in env if e["name"] == "AGENTRUN_API_KEY")
    assert key == {
        "name": "AGENTRUN_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
    }


def test_runner_exit_codes_2_and_3_fail_the_job_at_once() -> None:
    rules = build()["spec"]["podFailurePolicy"]["rules"]

    fail_job = next(r for r in rules if r["action"] == "FailJob")
    assert fail_job["onExitCodes"]["values"] == [2, 3]


def test_a_queued_run_gets_a_suspended_job_with_kueues_label() -> None:
    job = build(queueName="team-a")

    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][jobs.KUEUE_QUEUE_LABEL] == "team-a"


def test_the_job_of_a_long_named_run_fits_63_characters() -> None:
    name = "r" * 253

    job = jobs.build(
        run_name=name, run_uid="u", spec=spec(), attempt=12, defaults=jobs.RunnerDefaults()
    )

    assert len(job["metadata"]["name"]) <= names.MAX_NAME
    assert len(job["metadata"]["labels"][jobs.RUN_LABEL]) <= names.MAX_NAME


def pod(name: str, waiting: dict[str, str] | None) -> dict[str, Any]:
    state = {"waiting": waiting} if waiting else {"running": {}}
    return {"metadata": {"name": name}, "status": {"containerStatuses": [{"state": state}]}}


def test_a_pod_stuck_on_a_missing_secret_is_reported() -> None:
    stuck = pod("p1", {"reason": "CreateContainerConfigError", "message": "secret 'k' not found"})

    reason = jobs.waiting_reason([pod("p0", None), stuck])

    assert reason == "pod p1: secret 'k' not found (CreateContainerConfigError)."


def test_a_pod_that_is_merely_being_created_is_not_reported() -> None:
    assert jobs.waiting_reason([pod("p", {"reason": "ContainerCreating"})]) == ""
