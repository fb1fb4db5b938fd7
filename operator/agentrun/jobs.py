"""Builds the Job that runs one attempt of a run, and reads back what decisions need.

Called by `controller` when a `Plan` starts an attempt. The Job is owned by the
AgentRun, runs `agentrun-runner` as a non-root user under the restricted Pod Security
Standard, and maps the runner's exit codes to Job outcomes (see `RUNNER_EXIT_*`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agentrun import api, decisions, names

__all__ = ["RunnerDefaults", "build", "labels", "view", "waiting_reason"]

RUN_UID_LABEL = "agentrun.dev/run-uid"
RUN_LABEL = "agentrun.dev/run"
ATTEMPT_LABEL = "agentrun.dev/attempt"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# The runner's exit codes. 2: the attempt failed and the runner recorded why in the
# checkpoint (model error, limit reached, corrupt history). 3: another attempt owns the
# checkpoint (fencing). Neither gets better by running the same pod again, so both
# fail the Job at once; any other failure (a killed or crashed pod) is retried by the
# Job from the checkpoint, up to POD_RETRIES times.
RUNNER_EXIT_ATTEMPT_FAILED = 2
RUNNER_EXIT_FENCED = 3
POD_RETRIES = 3

WORKSPACE = "/workspace"


@dataclasses.dataclass(frozen=True)
class RunnerDefaults:
    """How the operator was configured to run runners (from the Helm chart's values)."""

    image: str = "ghcr.io/agentrun-dev/agentrun-operator:0.1.0"
    command: tuple[str, ...] = ("agentrun-runner",)
    image_pull_policy: str = "IfNotPresent"
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    base_url: str | None = None
    """Model endpoint for runs that name none."""
    api_key_secret: api.SecretKeyRef | None = None
    """API key Secret for runs that name none; looked up in the run's namespace."""
    log_level: str = "INFO"


def labels(*, run_name: str, run_uid: str, attempt: int | None = None) -> dict[str, str]:
    """Labels of everything a run owns. The uid identifies; the name helps people."""
    out = {RUN_UID_LABEL: run_uid, RUN_LABEL: names.label_value(run_name)}
    if attempt is not None:
        out[ATTEMPT_LABEL] = str(attempt)
    return out


def owner_reference(*, run_name: str, run_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "name": run_name,
        "uid": run_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build(
    *,
    run_name: str,
    run_uid: str,
    spec: api.AgentRunSpec,
    attempt: int,
    defaults: RunnerDefaults,
) -> dict[str, Any]:
    """The Job manifest of `attempt`."""
    job_labels = labels(run_name=run_name, run_uid=run_uid, attempt=attempt)
    template = spec.template or api.PodTemplate()
    if spec.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": template.service_account_name or names.service_account(run_name),
        "automountServiceAccountToken": True,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(run_name, run_uid, spec, attempt, defaults)],
        "volumes": [
            {"name": "workspace", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if template.node_selector:
        pod_spec["nodeSelector"] = template.node_selector
    if template.tolerations:
        pod_spec["tolerations"] = template.tolerations

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.job(run_name, attempt),
            "labels": job_labels,
            "ownerReferences": [owner_reference(run_name=run_name, run_uid=run_uid)],
        },
        "spec": {
            # Kueue admits a queued Job by unsuspending it; we never do.
            "suspend": bool(spec.queue_name),
            "backoffLimit": POD_RETRIES,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "runner",
                            "operator": "In",
                            "values": [RUNNER_EXIT_ATTEMPT_FAILED, RUNNER_EXIT_FENCED],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": job_labels}, "spec": pod_spec},
        },
    }


def _container(
    run_name: str, run_uid: str, spec: api.AgentRunSpec, attempt: int, defaults: RunnerDefaults
) -> dict[str, Any]:
    template = spec.template or api.PodTemplate()
    return {
        "name": "runner",
        "image": template.image or defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": list(defaults.command),
        "workingDir": WORKSPACE,
        "env": _env(run_name, run_uid, spec, attempt, defaults) + list(template.env),
        "envFrom": _mcp_headers(spec),
        "resources": template.resources or defaults.resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _env(
    run_name: str, run_uid: str, spec: api.AgentRunSpec, attempt: int, defaults: RunnerDefaults
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "AGENTRUN_NAME", "value": run_name},
        {
            "name": "AGENTRUN_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "AGENTRUN_UID", "value": run_uid},
        {"name": "AGENTRUN_ATTEMPT", "value": str(attempt)},
        {"name": "AGENTRUN_LOG_LEVEL", "value": defaults.log_level},
        {"name": "HOME", "value": "/tmp"},
    ]
    provider = spec.provider or api.Provider()
    if provider.base_url is None and defaults.base_url:
        env.append({"name": "AGENTRUN_DEFAULT_BASE_URL", "value": defaults.base_url})

    # The API key travels only from the Secret into the pod's environment.
    secret = provider.api_key_secret_ref or defaults.api_key_secret
    if secret is not None:
        ref = {"name": secret.name, "key": secret.key}
        env.append({"name": "AGENTRUN_API_KEY", "valueFrom": {"secretKeyRef": ref}})
    return env


def _mcp_headers(spec: api.AgentRunSpec) -> list[dict[str, Any]]:
    """Each MCP server's header Secret, as variables `AGENTRUN_MCP_<index>_<header>`."""
    return [
        {"prefix": f"AGENTRUN_MCP_{index}_", "secretRef": {"name": server.headers_secret_ref.name}}
        for index, server in enumerate(spec.mcp_servers)
        if server.headers_secret_ref is not None
    ]


def view(job: dict[str, Any]) -> decisions.JobView:
    """What decisions need to know of a Job, from its manifest."""
    status = job.get("status") or {}
    conditions = {
        c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"
    }
    failed = conditions.get("Failed")
    return decisions.JobView(
        name=job["metadata"]["name"],
        succeeded="Complete" in conditions,
        failed=failed is not None,
        suspended=bool((job.get("spec") or {}).get("suspend")),
        deleting=bool(job["metadata"].get("deletionTimestamp")),
        failure=f"{failed.get('reason', '')}: {failed.get('message', '')}".strip(": ")
        if failed
        else "",
    )


# Waiting reasons a pod gets over by itself; any other one is worth telling people.
_PASSING = {"ContainerCreating", "PodInitializing"}


def waiting_reason(pods: list[dict[str, Any]]) -> str:
    """Why a pod of the Job cannot start, from its containers' waiting states; "" if none."""
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for container in statuses:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            if reason and reason not in _PASSING:
                detail = waiting.get("message") or "no detail given"
                return f"pod {pod['metadata']['name']}: {detail} ({reason})."
    return ""
