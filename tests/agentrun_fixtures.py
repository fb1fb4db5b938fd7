"""Session fixtures that both the runner and the end-to-end tests stand on: the AgentRun
CRD installed in the session's cluster, and one scripted model server that its pods
reach (see tests.cluster_fixtures.Target)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentrun.modelserver import ScriptedModelServer
from tests.cluster_fixtures import TARGET

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "agentrun.dev_agentruns.yaml"
KUBECTL = ROOT / "bin" / "kubectl"


@pytest.fixture(scope="session")
def crd(control_plane: Any) -> Path:
    run = [str(KUBECTL), "--kubeconfig", str(control_plane.kubeconfig)]
    subprocess.run(
        [*run, "apply", "--server-side", "--force-conflicts", "-f", str(CRD)], check=True
    )
    # Polled rather than `kubectl wait`, which gives up when its watch is cut on a busy
    # API server; discovery of the new resource follows Established by a moment.
    deadline = time.monotonic() + 120
    while subprocess.run([*run, "get", "agentruns", "-A"], capture_output=True).returncode:
        if time.monotonic() > deadline:
            raise AssertionError("the AgentRun CRD was not served within 120 s")
        time.sleep(0.5)
    return CRD


@pytest.fixture(scope="session")
def model_server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(host=TARGET.bind, public_host=TARGET.host) as server:
        yield server
