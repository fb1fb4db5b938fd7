"""The Helm chart installs an operator that runs as a pod under its own RBAC and serves runs."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentrun.modelserver import ScriptedModelServer
from tests.cluster_fixtures import TARGET
from tests.e2e.conftest import CHART, HELM, Operator
from tests.e2e.runs import ROOT, Kubectl, eventually, wait_for_phase

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def helm(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(HELM), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
    return result


@pytest.fixture
def session_operator_paused(operator: Operator) -> Iterator[None]:
    """The session's operator steps aside, so that this test's release alone serves runs
    while the test lasts."""
    operator.stop()
    yield
    operator.start()


@pytest.fixture
def release(
    control_plane: Any,
    kubectl: Kubectl,
    model_server: ScriptedModelServer,
    request: pytest.FixtureRequest,
) -> Iterator[list[str]]:
    """Chart values of this test's release; uninstalled afterwards."""
    name = f"ar-{kubectl.namespace[-12:]}".strip("-")
    values = [
        f"--set=runner.defaultBaseURL={model_server.base_url}",
        f"--set=metrics.port={_free_port()}",
        f"--set=health.port={_free_port()}",
        "--set=fullnameOverride=" + name,
    ]
    if TARGET.external:
        repository, _, tag = TARGET.image.rpartition(":")
        values += [f"--set=image.repository={repository}", f"--set=image.tag={tag}"]
    yield [name, *values]
    helm(
        control_plane.kubeconfig, "uninstall", name, "-n", kubectl.namespace, "--wait", check=False
    )


def operator_logs(kubectl: Kubectl, name: str) -> str:
    return kubectl("logs", f"deployment/{name}", "--tail=-1", check=False).stdout


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_the_chart_operator_runs_as_a_pod_and_an_example_succeeds(
    control_plane: Any,
    kubectl: Kubectl,
    model_server: ScriptedModelServer,
    session_operator_paused: None,
    release: list[str],
    scope: str,
) -> None:
    name, *values = release
    if scope == "namespace":
        values.append(f"--set=watchNamespaces={{{kubectl.namespace}}}")
    model_server.set_script("gpt-4o-mini", [{"text": "installed and working"}])

    helm(control_plane.kubeconfig, "install", name, str(CHART), "-n", kubectl.namespace,
         "--wait", "--timeout=180s", *values)  # fmt: skip
    pod = kubectl.json("get", "pods", "-l", "app.kubernetes.io/name=agentrun-operator")["items"][0]
    kubectl("apply", "-f", str(ROOT / "examples" / "01-minimal.yaml"))
    run = wait_for_phase(kubectl, "minimal", "Succeeded")
    logs = operator_logs(kubectl, name)
    helm(control_plane.kubeconfig, "uninstall", name, "-n", kubectl.namespace, "--wait")

    assert pod["spec"]["serviceAccountName"] == name
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert run["status"]["output"] == "installed and working"
    assert "403" not in logs and "Forbidden" not in logs, logs
    eventually(
        lambda: not kubectl.json("get", "deployments")["items"],
        what="the operator to be uninstalled",
    )


def test_the_rendered_chart_is_accepted_by_the_api_server(
    control_plane: Any, kubectl: Kubectl
) -> None:
    rendered = helm(
        control_plane.kubeconfig, "template", "agentrun", str(CHART), "-n", kubectl.namespace
    )

    applied = kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered.stdout, check=False)

    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc}
    assert applied.returncode == 0, applied.stderr
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds


def test_an_unknown_value_key_fails_the_install_with_the_schemas_message(
    control_plane: Any, kubectl: Kubectl
) -> None:
    result = helm(control_plane.kubeconfig, "install", "typo", str(CHART), "-n", kubectl.namespace,
                  "--set", "replicaCuont=2", check=False)  # fmt: skip

    assert result.returncode != 0
    assert "replicaCuont" in result.stderr
    assert "additional properties" in result.stderr
