"""Admission works as on a real cluster: PodSecurity enforces namespace levels."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster import manifests
from tests.cluster_fixtures import Kubectl

pytestmark = pytest.mark.e2e

_RESTRICTED_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod(name: str, security_context: dict[str, Any]) -> dict[str, Any]:
    spec = manifests.pod_spec("print('hello')")
    spec["containers"][0]["securityContext"] = security_context
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_a_restricted_namespace_refuses_a_privileged_pod(kubectl: Kubectl, namespace: str) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # Privileged containers may escalate: the API refuses allowPrivilegeEscalation false.
    escalating = {k: v for k, v in _RESTRICTED_CONTEXT.items() if k != "allowPrivilegeEscalation"}
    privileged = _pod("privileged", {**escalating, "privileged": True})
    compliant = _pod("compliant", _RESTRICTED_CONTEXT)

    refused = kubectl("create", "--filename=-", input=json.dumps(privileged), check=False)
    admitted = kubectl("create", "--dry-run=server", "--filename=-", input=json.dumps(compliant))

    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr
    assert "must not set securityContext.privileged=true" in refused.stderr
    assert "pod/compliant created" in admitted.stdout
