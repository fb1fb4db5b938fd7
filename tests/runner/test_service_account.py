"""The runner as a pod runs it: a ServiceAccount token and only the run's own Role."""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from agentrun import api, rbac, runner

from .conftest import Runners

pytestmark = pytest.mark.e2e


def service_account_folder(runners: Runners, account: str, folder: Path) -> dict[str, str]:
    """What the process-kubelet gives a pod: a token folder and the service's address."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    answer: Any = runners.core.create_namespaced_service_account_token(
        account, runners.namespace, request
    )
    kubeconfig = yaml.safe_load(runners.kubeconfig.read_text())
    cluster = kubeconfig["clusters"][0]["cluster"]
    folder.mkdir()
    (folder / "token").write_text(answer.status.token)
    (folder / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    (folder / "namespace").write_text(runners.namespace)
    server = urllib.parse.urlsplit(cluster["server"])
    return {
        "AGENTRUN_SERVICEACCOUNT_DIR": str(folder),
        "KUBERNETES_SERVICE_HOST": str(server.hostname),
        "KUBERNETES_SERVICE_PORT": str(server.port),
    }


def test_the_runner_needs_no_more_than_the_role_the_operator_grants(
    runners: Runners, tmp_path: Path
) -> None:
    run = runners.create(
        "least-privilege",
        turns=[
            {"tool_calls": [{"name": "write_file", "arguments": {"path": "a", "content": "x"}}]},
            {"text": "done"},
        ],
        tools=[{"name": "write_file"}],
    )
    objects = rbac.objects(run_name=run.name, run_uid=run.uid)
    for obj in objects:
        runners.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(obj))
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    credentials = service_account_folder(runners, account, tmp_path / "serviceaccount")

    exited = runners.wait(runners.start(run, 1, credentials=credentials))

    assert exited.code == runner.EXIT_OK, exited.output
    assert runners.record(run).outcome == api.Outcome.SUCCEEDED
