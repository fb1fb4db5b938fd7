"""`kube` and `apiserver`, which the checkpoint stands on: credentials, calls and errors."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError

from agentrun import apiserver, kube


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


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An API server stand-in: records each request, answers with `answer`."""

    requests: ClassVar[list[tuple[str, str, str | None, str | None]]] = []
    answer: ClassVar[tuple[int, dict[str, Any]]] = (200, {"metadata": {"resourceVersion": "7"}})

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        headers = self.headers
        _Recorder.requests.append(
            (self.command, self.path, headers.get("Content-Type"), headers.get("Authorization"))
        )
        status, body = _Recorder.answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _record

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[str]:
    _Recorder.requests = []
    _Recorder.answer = (200, {"metadata": {"resourceVersion": "7"}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token)
    return path


def test_the_runners_calls_go_where_the_generated_api_sends_them(
    api_server: str, tmp_path: Path
) -> None:
    calls = apiserver.connect(
        apiserver.Credentials(server=api_server, token_file=token_file(tmp_path, "tok-1"))
    )

    calls.read_namespaced_config_map("cp", "ns")
    calls.create_namespaced_config_map("ns", {"metadata": {"name": "cp"}})
    calls.patch_namespaced_config_map(
        "cp", "ns", {"data": {}}, _content_type="application/merge-patch+json"
    )
    calls.get_namespaced_custom_object("agentrun.dev", "v1alpha1", "ns", "agentruns", "demo")

    assert _Recorder.requests == [
        ("GET", "/api/v1/namespaces/ns/configmaps/cp", None, "Bearer tok-1"),
        ("POST", "/api/v1/namespaces/ns/configmaps", "application/json", "Bearer tok-1"),
        (
            "PATCH",
            "/api/v1/namespaces/ns/configmaps/cp",
            "application/merge-patch+json",
            "Bearer tok-1",
        ),
        ("GET", "/apis/agentrun.dev/v1alpha1/namespaces/ns/agentruns/demo", None, "Bearer tok-1"),
    ]


def test_a_call_refused_by_the_api_server_raises_our_error_with_its_words(
    api_server: str,
) -> None:
    _Recorder.answer = (404, {"kind": "Status", "reason": "NotFound", "message": "gone"})
    calls = apiserver.connect(apiserver.Credentials(server=api_server, token="t"))

    with pytest.raises(kube.NotFound, match="gone"), kube.translated():
        calls.read_namespaced_config_map("cp", "ns")


def test_a_rotated_token_is_sent_once_the_refresh_interval_passes(
    api_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = token_file(tmp_path, "before")
    calls = apiserver.connect(apiserver.Credentials(server=api_server, token_file=path))
    calls.read_namespaced_config_map("cp", "ns")

    path.write_text("after")
    calls.read_namespaced_config_map("cp", "ns")
    monkeypatch.setattr(apiserver, "TOKEN_REFRESH_SECONDS", 0.0)
    calls.read_namespaced_config_map("cp", "ns")

    sent = [authorization for *_, authorization in _Recorder.requests]
    assert sent == ["Bearer before", "Bearer before", "Bearer after"]


def test_an_api_server_that_does_not_answer_a_runner_is_unavailable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    calls = apiserver.connect(apiserver.Credentials(server=f"http://127.0.0.1:{port}"))

    with pytest.raises(kube.Unavailable) as raised:
        calls.read_namespaced_config_map("cp", "ns")

    assert raised.value.status == 0


@pytest.mark.parametrize(
    ("host", "server"),
    [("10.96.0.1", "https://10.96.0.1:443"), ("fd00::1", "https://[fd00::1]:443")],
)
def test_a_pods_credentials_are_its_token_folder_and_the_services_address(
    host: str, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRUN_SERVICEACCOUNT_DIR", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    found = apiserver.credentials()

    assert found == apiserver.Credentials(
        server=server, ca_file=str(tmp_path / "ca.crt"), token_file=tmp_path / "token"
    )
