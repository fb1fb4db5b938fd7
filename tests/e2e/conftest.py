"""Fixtures of the end-to-end tests: the CRD installed, the scripted model, the operator.

On the local control plane, the operator runs as a process on the host with the admin
kubeconfig, watching the `e2e-*` namespaces, so that one operator serves the whole
session; the chart tests run it as a pod under its own ServiceAccount instead. Its
runners run as pods through the process-kubelet and reach the scripted model on loopback.

Against an external cluster (AGENTRUN_E2E_KUBECONFIG, `make e2e-kind`), the operator is
the chart release that `make kind-deploy` installed (AGENTRUN_E2E_RELEASE in
AGENTRUN_E2E_RELEASE_NAMESPACE, default agentrun in agentrun-system), upgraded to send
runs to this session's scripted model. The session then owns that release's settings,
so such a session runs its tests one at a time (no -n).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from agentrun.modelserver import ScriptedModelServer
from tests.cluster_fixtures import TARGET
from tests.e2e.marks import MarkServer
from tests.e2e.runs import ROOT, Kubectl

CRD = ROOT / "crds" / "agentrun.dev_agentruns.yaml"
BIN = Path(sys.executable).parent
HELM = ROOT / "bin" / "helm"
CHART = ROOT / "charts" / "agentrun-operator"


class Operator(Protocol):
    """The operator under test, which a test may stop and start again."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def metrics(self) -> str:
        """The text of its Prometheus metrics."""
        ...

    def logs(self) -> str:
        """What it has logged so far (since its last start, for a pod)."""
        ...


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OperatorProcess:
    """The operator as a local process that a test may stop and start again."""

    def __init__(self, kubeconfig: Path, base_url: str, log: Path) -> None:
        self.kubeconfig, self.base_url, self.log = kubeconfig, base_url, log
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self) -> None:
        self.metrics_port, health = _free_port(), _free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "AGENTRUN_DEFAULT_BASE_URL": self.base_url,
            "AGENTRUN_RUNNER_LOG_LEVEL": "DEBUG",
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(BIN / "agentrun-operator"),
                    "-n",
                    "e2e-*",
                    "--metrics-port",
                    str(self.metrics_port),
                    "--health-port",
                    str(health),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited: see {self.log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the operator did not become healthy: see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as answer:
            text: str = answer.read().decode()
            return text

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ChartOperator:
    """The operator of a chart release installed in an external cluster, as a Deployment
    that stop and start scale to zero and back."""

    def __init__(self, kubeconfig: Path, release: str, namespace: str) -> None:
        self.kubeconfig, self.release = kubeconfig, release
        self.kubectl = Kubectl(kubeconfig, namespace)

    def configure(self, base_url: str) -> None:
        """Point the release's runners at the scripted model, keeping its other values."""
        helm = [str(HELM), "--kubeconfig", str(self.kubeconfig), "-n", self.kubectl.namespace]
        subprocess.run(
            [*helm, "upgrade", self.release, str(CHART), "--reuse-values", "--wait",
             "--timeout=300s", f"--set=runner.defaultBaseURL={base_url}",
             "--set=runner.logLevel=DEBUG"],
            check=True,
        )  # fmt: skip

    @property
    def deployment(self) -> str:
        selector = f"app.kubernetes.io/instance={self.release}"
        names = self.kubectl("get", "deployments", "-l", selector, "-o", "name").stdout.split()
        if len(names) != 1:
            raise AssertionError(f"expected one Deployment of release {self.release}: {names}")
        return names[0].removeprefix("deployment.apps/")

    def start(self) -> None:
        self.kubectl("scale", f"deployment/{self.deployment}", "--replicas=1")
        self.kubectl("rollout", "status", f"deployment/{self.deployment}", "--timeout=300s",
                     timeout=320)  # fmt: skip

    def stop(self) -> None:
        self.kubectl("scale", f"deployment/{self.deployment}", "--replicas=0")
        selector = f"app.kubernetes.io/instance={self.release}"
        self.kubectl("wait", "--for=delete", "pod", "-l", selector, "--timeout=120s",
                     timeout=140)  # fmt: skip

    def metrics(self) -> str:
        # Through the API server's service proxy: the test process is outside the cluster.
        service = f"{self.deployment}-metrics:http-metrics"
        path = f"/api/v1/namespaces/{self.kubectl.namespace}/services/{service}/proxy/metrics"
        return self.kubectl("get", "--raw", path).stdout

    def logs(self) -> str:
        return self.kubectl(
            "logs", f"deployment/{self.deployment}", "--tail=-1", check=False
        ).stdout


@pytest.fixture(scope="session")
def operator(
    control_plane: Any,
    crd: Path,
    model_server: ScriptedModelServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    if TARGET.external:
        chart = ChartOperator(
            control_plane.kubeconfig,
            os.environ.get("AGENTRUN_E2E_RELEASE", "agentrun"),
            os.environ.get("AGENTRUN_E2E_RELEASE_NAMESPACE", "agentrun-system"),
        )
        chart.configure(model_server.base_url)
        yield chart
        return
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(control_plane.kubeconfig, model_server.base_url, log)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def marks() -> Iterator[MarkServer]:
    with MarkServer() as server:
        yield server


@pytest.fixture
def kubectl(control_plane: Any, namespace: str, crd: Path) -> Kubectl:
    return Kubectl(control_plane.kubeconfig, namespace)


@pytest.fixture
def model_key(request: pytest.FixtureRequest) -> str:
    """A script key of the scripted model that no other test uses."""
    return re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:60]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    operator = getattr(item, "funcargs", {}).get("operator")
    failed_with_operator = report.when == "call" and report.failed
    if failed_with_operator and isinstance(operator, OperatorProcess | ChartOperator):
        tail = operator.logs().splitlines()[-80:]
        report.sections.append(("operator log (last 80 lines)", "\n".join(tail)))
    return report
