"""`kube`, which the checkpoint (and the operator) stand on: credentials and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError

from agentrun import kube


def api_error(status: int, reason: str = "") -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"kind": "Status", "reason": reason, "message": f"it is {reason}"})
    return error


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (404, "NotFound", kube.NotFound),
        (409, "AlreadyExists", kube.AlreadyExists),
        (409, "Conflict", kube.Conflict),
        (403, "Forbidden", kube.Forbidden),
        (401, "Unauthorized", kube.Forbidden),
        (422, "Invalid", kube.Invalid),
        (429, "TooManyRequests", kube.Unavailable),
        (503, "ServiceUnavailable", kube.Unavailable),
    ],
)
def test_api_errors_become_ours_with_the_servers_words(
    status: int, reason: str, kind: type[kube.KubeError]
) -> None:
    with pytest.raises(kind) as raised, kube.translated():
        raise api_error(status, reason)

    assert (raised.value.status, raised.value.reason) == (status, reason)
    assert str(raised.value) == f"it is {reason}"
    assert isinstance(raised.value.__cause__, ApiException)


def test_an_api_server_that_does_not_answer_is_unavailable() -> None:
    with pytest.raises(kube.Unavailable) as raised, kube.translated():
        raise MaxRetryError(None, "/api", "connection refused")  # type: ignore[arg-type]

    assert raised.value.status == 0


def test_a_service_account_folder_is_used_when_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("tok-123")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("AGENTRUN_SERVICEACCOUNT_DIR", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")

    configuration = kube.load_config()

    assert configuration.host == "https://127.0.0.1:6443"
    assert configuration.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert kube.bearer_token(configuration) == "tok-123"


def test_a_kubeconfig_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://10.1.2.3:6443"}}],
                "users": [{"name": "u", "user": {"token": "from-kubeconfig"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.delenv("AGENTRUN_SERVICEACCOUNT_DIR", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    configuration = kube.load_config()

    assert configuration.host == "https://10.1.2.3:6443"
    assert kube.bearer_token(configuration) == "from-kubeconfig"
