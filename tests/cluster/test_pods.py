"""Pods run as local processes, and report failures to start instead of hanging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localcluster import processes
from tests.cluster import manifests
from tests.cluster_fixtures import Kubectl

pytestmark = pytest.mark.e2e

_WAIT = ("--timeout=120s",)


# Reports what the process sees: its arguments, environment and working directory.
_REPORT = """
import json, os, sys
print(json.dumps({
    "argv": sys.argv[1:],
    "env": {name: os.environ.get(name) for name in
            ["GREETING", "PHRASE", "CM_COLOUR", "OPTIONAL", "POD", "KUBERNETES_SERVICE_HOST"]},
    "cwd": os.path.relpath(os.getcwd(), os.environ["HOME"]),
    "path_starts_with_python": os.environ["PATH"].split(":")[0] == os.path.dirname(sys.executable),
}))
"""


def _pid(status: dict[str, Any]) -> int:
    return int(status["containerStatuses"][0]["containerID"].removeprefix("process://"))


def test_a_deployment_created_with_kubectl_runs_its_pod_as_a_process(kubectl: Kubectl) -> None:
    command = ["python3", "-c", "import time; print('serving', flush=True); time.sleep(3600)"]

    kubectl("create", "deployment", "web", "--image=nginx", "--", *command)
    kubectl("rollout", "status", "deployment/web", "--timeout=120s")
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

    kubectl("wait", "--for=jsonpath={.status.phase}=Failed", "pod/missing", *_WAIT)
    status = kubectl.json("get", "pod", "missing")["status"]

    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "StartError"
    assert terminated["exitCode"] == 128
    assert "no-such-command-anywhere" in terminated["message"]


def test_a_container_gets_its_environment_and_arguments_as_kubernetes_builds_them(
    kubectl: Kubectl,
) -> None:
    kubectl("create", "configmap", "settings", "--from-literal=COLOUR=blue")
    spec = manifests.pod_spec(
        _REPORT,
        env=[
            {"name": "GREETING", "value": "hello"},
            {"name": "PHRASE", "value": "$(GREETING) world, $$(GREETING), $(UNKNOWN)"},
            {
                "name": "OPTIONAL",
                "valueFrom": {
                    "configMapKeyRef": {"name": "settings", "key": "absent", "optional": True}
                },
            },
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    container = spec["containers"][0]
    container["args"] = ["$(GREETING)", "$$(GREETING)", "$(UNKNOWN)"]
    container["envFrom"] = [
        {"configMapRef": {"name": "settings"}, "prefix": "CM_"},
        {"secretRef": {"name": "absent", "optional": True}},
    ]
    container["workingDir"] = "/workspace/sub"
    container["volumeMounts"] = [{"name": "work", "mountPath": "/workspace"}]

    kubectl.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "env"}, "spec": spec})
    kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/env", *_WAIT)
    seen = json.loads(kubectl("logs", "env").stdout)

    assert seen["argv"] == ["hello", "$(GREETING)", "$(UNKNOWN)"]
    assert seen["env"] == {
        "GREETING": "hello",
        "PHRASE": "hello world, $(GREETING), $(UNKNOWN)",
        "CM_COLOUR": "blue",
        "OPTIONAL": None,
        "POD": "env",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
    }
    assert seen["cwd"] == "volumes/work/sub"
    assert seen["path_starts_with_python"] is True
