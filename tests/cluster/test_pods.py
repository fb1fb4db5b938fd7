"""Pods run as local processes, and report failures to start instead of hanging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localcluster import processes
from tests.cluster_fixtures import Kubectl, wait_until

pytestmark = pytest.mark.e2e


def _pid(status: dict[str, Any]) -> int:
    return int(status["containerStatuses"][0]["containerID"].removeprefix("process://"))


def test_a_deployment_created_with_kubectl_runs_its_pod_as_a_process(kubectl: Kubectl) -> None:
    command = ["python3", "-c", "import time; print('serving', flush=True); time.sleep(3600)"]

    kubectl("create", "deployment", "web", "--image=nginx", "--", *command)
    kubectl("rollout", "status", "deployment/web", "--timeout=120s", timeout=150)
    (pod,) = kubectl.json("get", "pods", "--selector=app=web")["items"]

    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    pid = _pid(pod["status"])
    assert processes.alive(pid)
    assert b"time.sleep(3600)" in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_a_container_whose_command_does_not_exist_fails_its_pod_with_a_reason(
    kubectl: Kubectl,
) -> None:
    kubectl("run", "missing", "--image=busybox", "--restart=Never", "--command", "--",
            "no-such-command-anywhere")  # fmt: skip

    status = wait_until(
        lambda: (
            (s := kubectl.json("get", "pod", "missing")["status"]).get("phase") == "Failed" and s
        ),
        what="the pod to fail",
    )

    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "StartError"
    assert terminated["exitCode"] == 128
    assert "no-such-command-anywhere" in terminated["message"]
