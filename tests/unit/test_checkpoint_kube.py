"""`kube`, which the checkpoint (and the operator) stand on: credentials and errors."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration
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


class Answers:
    """Stands in for the ApiClient's HTTP call: records each request, answers `status`."""

    def __init__(self, status: int = 200, body: object = None) -> None:
        self.status = status
        self.body = body if body is not None else {"metadata": {"resourceVersion": "7"}}
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []

    def __call__(self, method: str, url: str, headers: dict[str, str], body: Any, *_: Any) -> Any:
        self.requests.append((method, url, headers, body))
        data = json.dumps(self.body).encode()
        return types.SimpleNamespace(
            status=self.status, reason="", data=data, headers={}, read=lambda: data
        )


def json_api(answers: Answers, monkeypatch: pytest.MonkeyPatch) -> kube.JsonApi:
    configuration = Configuration(host="https://api.test:6443")
    configuration.api_key = {"BearerToken": "Bearer tok-1"}
    api_client = ApiClient(configuration)
    monkeypatch.setattr(api_client, "call_api", answers)
    return kube.JsonApi(api_client)


def test_the_runners_json_calls_go_where_the_generated_api_sends_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = Answers()
    calls = json_api(answers, monkeypatch)

    calls.read_namespaced_config_map("cp", "ns")
    calls.create_namespaced_config_map("ns", {"metadata": {"name": "cp"}})
    calls.patch_namespaced_config_map(
        "cp", "ns", {"data": {}}, _content_type="application/merge-patch+json"
    )
    calls.get_namespaced_custom_object("agentrun.dev", "v1alpha1", "ns", "agentruns", "demo")

    sent = [
        (method, url, headers.get("Content-Type")) for method, url, headers, _ in answers.requests
    ]
    assert sent == [
        ("GET", "https://api.test:6443/api/v1/namespaces/ns/configmaps/cp", None),
        ("POST", "https://api.test:6443/api/v1/namespaces/ns/configmaps", "application/json"),
        (
            "PATCH",
            "https://api.test:6443/api/v1/namespaces/ns/configmaps/cp",
            "application/merge-patch+json",
        ),
        (
            "GET",
            "https://api.test:6443/apis/agentrun.dev/v1alpha1/namespaces/ns/agentruns/demo",
            None,
        ),
    ]
    assert all(headers["authorization"] == "Bearer tok-1" for _, _, headers, _ in answers.requests)


def test_a_json_call_refused_by_the_api_server_raises_our_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = Answers(404, {"kind": "Status", "reason": "NotFound", "message": "gone"})
    calls = json_api(answers, monkeypatch)

    with pytest.raises(kube.NotFound, match="gone"), kube.translated():
        calls.read_namespaced_config_map("cp", "ns")
