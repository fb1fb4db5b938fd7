"""A pod's process acts in the cluster as its ServiceAccount, with a real bound token."""

from __future__ import annotations

import json

import pytest

from tests.cluster import manifests
from tests.cluster_fixtures import Kubectl

pytestmark = pytest.mark.e2e

# In-cluster configuration through the kubelet's documented override of the token path.
_PROBE = """
import json, os
from kubernetes import client
from kubernetes.config.incluster_config import InClusterConfigLoader

directory = os.environ["AGENTRUN_SERVICEACCOUNT_DIR"]
InClusterConfigLoader(
    token_filename=f"{directory}/token", cert_filename=f"{directory}/ca.crt"
).load_and_set()
core = client.CoreV1Api()
namespace = open(f"{directory}/namespace").read()
attempts = {
    "get allowed": lambda: core.read_namespaced_config_map("allowed", namespace),
    "get other": lambda: core.read_namespaced_config_map("other", namespace),
    "list": lambda: core.list_namespaced_config_map(namespace),
}
outcomes = {}
for name, attempt in attempts.items():
    try:
        attempt()
        outcomes[name] = 200
    except client.ApiException as error:
        outcomes[name] = error.status
print(json.dumps(outcomes))
"""


def test_a_pod_may_do_what_its_role_allows_and_is_refused_the_rest(
    kubectl: Kubectl, namespace: str
) -> None:
    account = f"system:serviceaccount:{namespace}:reader"
    kubectl("create", "serviceaccount", "reader")
    kubectl("create", "configmap", "allowed", "--from-literal=key=value")
    kubectl("create", "configmap", "other", "--from-literal=key=value")
    kubectl("create", "role", "read-allowed", "--verb=get", "--resource=configmaps",
            "--resource-name=allowed")  # fmt: skip
    kubectl("create", "rolebinding", "reader", "--role=read-allowed",
            f"--serviceaccount={namespace}:reader")  # fmt: skip
    probe = manifests.pod_spec(_PROBE, serviceAccountName="reader")

    kubectl.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"}, "spec": probe})
    kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/probe", "--timeout=120s")
    outcomes = json.loads(kubectl("logs", "probe").stdout)
    answers = {
        request: kubectl("auth", "can-i", *request.split(), f"--as={account}", check=False).stdout
        for request in ("get configmap/allowed", "get configmap/other", "list configmaps")
    }

    assert outcomes == {"get allowed": 200, "get other": 403, "list": 403}
    assert {request: answer.strip() for request, answer in answers.items()} == {
        "get configmap/allowed": "yes",
        "get configmap/other": "no",
        "list configmaps": "no",
    }
