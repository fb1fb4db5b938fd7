"""Fixtures of the end-to-end tests: the CRD installed, the scripted model, the operator.

The operator runs as a process on the host with the admin kubeconfig, watching every
namespace, so that one operator serves the whole session; the chart tests run it as a
pod under its own ServiceAccount instead. Its runners run as pods through the
process-kubelet and reach the scripted model on loopback.
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
from typing import Any

import pytest

from agentrun.modelserver import ScriptedModelServer
from tests.e2e.runs import ROOT, Kubectl

CRD = ROOT / "crds" / "agentrun.dev_agentruns.yaml"
BIN = Path(sys.executable).parent


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


@pytest.fixture(scope="session")
def operator(
    control_plane: Any,
    crd: Path,
    model_server: ScriptedModelServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(control_plane.kubeconfig, model_server.base_url, log)
    process.start()
    yield process
    process.stop()


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
    process = getattr(item, "funcargs", {}).get("operator")
    failed_with_operator = report.when == "call" and report.failed
    if failed_with_operator and isinstance(process, OperatorProcess) and process.log.exists():
        tail = process.log.read_text(errors="replace").splitlines()[-80:]
        report.sections.append(("operator log (last 80 lines)", "\n".join(tail)))
    return report
