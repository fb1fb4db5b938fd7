"""Jobs run to the end on the process-kubelet, driven by the real Job controller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cluster import manifests
from tests.cluster_fixtures import Kubectl, wait_until

pytestmark = pytest.mark.e2e

# Stops only through SIGTERM, and leaves proof of it where MARKER_DIR/POD_NAME points.
_WAITS_FOR_SIGTERM = """
import os, signal, sys, time

def stop(signum, frame):
    with open(os.path.join(os.environ["MARKER_DIR"], os.environ["POD_NAME"]), "w") as marker:
        marker.write("SIGTERM")
    sys.exit(143)

signal.signal(signal.SIGTERM, stop)
print("waiting for SIGTERM", flush=True)
time.sleep(3600)
"""


def _pods(kubectl: Kubectl, job: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json("get", "pods", f"--selector=job-name={job}")["items"]
    return items


def _running_pod(kubectl: Kubectl, job: str, *, besides: str = "") -> str | None:
    for pod in _pods(kubectl, job):
        name: str = pod["metadata"]["name"]
        if name != besides and pod["status"].get("phase") == "Running":
            return name
    return None


def test_a_job_reading_a_secret_through_env_completes_and_logs_the_value(kubectl: Kubectl) -> None:
    kubectl("create", "secret", "generic", "greeting", "--from-literal=text=hello from a secret")
    env = [{"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "greeting", "key": "text"}}}]
    script = "import os; print('greeting:', os.environ['GREETING'])"

    kubectl.apply(manifests.job("greeter", script, env=env))
    kubectl("wait", "--for=condition=Complete", "job/greeter", "--timeout=120s")
    logs = kubectl("logs", "job/greeter")

    assert logs.stdout.strip() == "greeting: hello from a secret"


def test_a_job_whose_process_exits_3_fails_after_two_pods_reporting_code_3(
    kubectl: Kubectl,
) -> None:
    job = manifests.job("quitter", "import sys; sys.exit(3)", backoff_limit=1)

    kubectl.apply(job)
    # The Job controller waits about ten seconds before it replaces a failed pod.
    kubectl("wait", "--for=condition=Failed", "job/quitter", "--timeout=180s")
    status = kubectl.json("get", "job", "quitter")["status"]
    pods = _pods(kubectl, "quitter")

    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert status["failed"] == 2
    assert [pod["status"]["phase"] for pod in pods] == ["Failed", "Failed"]
    exits = [pod["status"]["containerStatuses"][0]["state"]["terminated"] for pod in pods]
    assert [(t["exitCode"], t["reason"]) for t in exits] == [(3, "Error"), (3, "Error")]


def test_deleting_a_running_job_pod_sends_sigterm_and_the_job_replaces_it(
    kubectl: Kubectl, tmp_path: Path
) -> None:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MARKER_DIR", "value": str(tmp_path)},
    ]
    kubectl.apply(manifests.job("sleeper", _WAITS_FOR_SIGTERM, env=env))
    first = wait_until(lambda: _running_pod(kubectl, "sleeper"), what="the Job's first pod")
    # SIGTERM must not arrive before the handler is installed.
    wait_until(
        lambda: "waiting" in kubectl("logs", first).stdout, what="the handler to be installed"
    )

    kubectl("delete", "pod", first, "--timeout=90s")
    # The Job controller backs off about ten seconds before it replaces a failed pod.
    replacement = wait_until(
        lambda: _running_pod(kubectl, "sleeper", besides=first), what="a replacement pod"
    )

    assert (tmp_path / first).read_text() == "SIGTERM"
    assert replacement != first


def test_deleting_the_owner_of_a_job_collects_the_job_and_its_pods(kubectl: Kubectl) -> None:
    kubectl("create", "configmap", "owner")
    owner = kubectl.json("get", "configmap", "owner")
    kubectl.apply(manifests.job("owned", "import time; time.sleep(3600)", owner=owner))
    wait_until(lambda: _running_pod(kubectl, "owned"), what="the owned Job's pod")

    kubectl("delete", "configmap", "owner")

    wait_until(
        lambda: not kubectl("get", "job", "owned", "--ignore-not-found", "--output=name").stdout,
        what="the garbage collector to delete the Job",
    )
    wait_until(lambda: not _pods(kubectl, "owned"), what="the Job's pods to be gone")
