"""The control plane answers like a real one: health, version, node."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from localcluster import cluster as localcluster
from tests.cluster_fixtures import Kubectl

pytestmark = pytest.mark.e2e

VERSIONS = Path(__file__).resolve().parents[2] / "hack" / "versions.env"


def _pinned_kubernetes_version() -> str:
    match = re.search(r"^KUBERNETES_VERSION=(\S+)$", VERSIONS.read_text(), re.MULTILINE)
    assert match, f"no KUBERNETES_VERSION in {VERSIONS}"
    return match[1]


def test_readyz_answers_ok_through_kubectl(kubeconfig: Path) -> None:
    kubectl = Kubectl(kubeconfig)

    result = kubectl("get", "--raw", "/readyz")

    assert result.stdout.strip() == "ok"


def test_server_and_client_report_the_pinned_version(kubeconfig: Path) -> None:
    kubectl = Kubectl(kubeconfig)

    versions = json.loads(kubectl("version", "--output=json").stdout)

    assert versions["serverVersion"]["gitVersion"] == _pinned_kubernetes_version()
    assert versions["clientVersion"]["gitVersion"] != "v0.0.0"
    assert versions["clientVersion"]["gitVersion"] == _pinned_kubernetes_version()


def test_the_node_is_ready_and_renews_its_lease(control_plane: localcluster.Cluster) -> None:
    kubectl = Kubectl(control_plane.kubeconfig)

    node = kubectl.json("get", "node", control_plane.node_name)
    lease = kubectl.json("get", "lease", control_plane.node_name, "--namespace=kube-node-lease")

    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert node["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    assert lease["spec"]["holderIdentity"] == control_plane.node_name
    assert lease["spec"]["renewTime"]
