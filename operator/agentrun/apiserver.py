"""The runner's few calls to the Kubernetes API, as plain JSON over httpx2.

`runner` connects once at start (`connect`) and hands the connection to `checkpoint`,
which calls it under the method names of the kubernetes client's CoreV1Api and
CustomObjectsApi, so the same checkpoint code runs on either. Failed calls raise the
errors of `kube`.

Why not the kubernetes client: importing its package costs 0.2 to 0.3 s of CPU at every
runner's start on two cores (it loads its configuration modules, yaml and urllib3
whatever is used), a third of the runner's cold start beyond the agent itself, for five
kinds of request whose bodies `checkpoint` handles as JSON anyway. httpx2 is loaded
already: it is the openai SDK's HTTP client. Credentials come from the pod's
ServiceAccount; only off-cluster (a developer's kubeconfig) is the kubernetes client's
loader imported, to read the kubeconfig.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2

from agentrun import kube

__all__ = ["Connection", "Credentials", "connect"]

TOKEN_REFRESH_SECONDS = 60.0
"""How often a token file is read again. The kubelet rotates a projected token well
before it expires (at 80% of a lifetime of at least 10 minutes); the kubernetes client
re-reads it every minute too."""

_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are."""

    server: str
    """Base URL, for example `https://10.96.0.1:443`."""
    ca_file: str | None = None
    """CA bundle that signs the server's certificate; None uses the system's."""
    verify: bool = True
    token_file: Path | None = None
    """A ServiceAccount token file, read again every TOKEN_REFRESH_SECONDS."""
    token: str | None = None
    """A fixed bearer token (from a kubeconfig)."""
    cert_file: str | None = None
    key_file: str | None = None


def credentials() -> Credentials:
    """Credentials for wherever this process runs, in `kube.load_config`'s order.

    A kubeconfig's token (an exec plugin's included) is taken once, at start: a runner
    off-cluster whose token expires mid-attempt fails its calls as Forbidden.
    """
    folder = os.environ.get(kube.SERVICEACCOUNT_DIR_ENV)
    in_cluster = (kube.IN_CLUSTER_DIR / "token").is_file()
    if not folder and os.environ.get("KUBERNETES_SERVICE_HOST") and in_cluster:
        folder = str(kube.IN_CLUSTER_DIR)
    if folder:
        return Credentials(
            server=_in_cluster_server(),
            ca_file=str(Path(folder) / "ca.crt"),
            token_file=Path(folder) / "token",
        )

    configuration = kube.load_config()
    return Credentials(
        server=configuration.host,
        ca_file=configuration.ssl_ca_cert,
        verify=bool(configuration.verify_ssl),
        token=kube.bearer_token(configuration),
        cert_file=configuration.cert_file,
        key_file=configuration.key_file,
    )


def _in_cluster_server() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise kube.Unavailable("KUBERNETES_SERVICE_HOST is not set: no API server to call.")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"https://{host}:{port}"


def connect(given: Credentials | None = None) -> Connection:
    """A connection with `given` credentials, or those of `credentials()`."""
    return Connection(given or credentials())


class Connection:
    """Get, create and merge-patch ConfigMaps, and get a custom object, as JSON.

    The methods take the arguments of the kubernetes client's generated ones; the
    `_preload_content` ones are accepted and ignored, since nothing here turns bodies into
    models. ConfigMap calls return the answer's bytes, the custom object its JSON.
    """

    def __init__(self, given: Credentials) -> None:
        self._credentials = given
        self._token = given.token
        self._token_read_at = -TOKEN_REFRESH_SECONDS
        self._http = httpx2.Client(
            base_url=given.server,
            verify=_tls_context(given),
            timeout=_TIMEOUT,
            # The API server is reached directly, as the kubernetes client does: a proxy
            # from the environment is meant for the model endpoint, not for it.
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def read_namespaced_config_map(
        self, name: str, namespace: str, *, _preload_content: bool = False
    ) -> bytes:
        return self._call("GET", _configmaps(namespace, name))

    def create_namespaced_config_map(
        self, namespace: str, body: dict[str, Any], *, _preload_content: bool = False
    ) -> bytes:
        return self._call("POST", _configmaps(namespace), body=body)

    def patch_namespaced_config_map(
        self,
        name: str,
        namespace: str,
        body: dict[str, Any],
        *,
        _content_type: str = "application/merge-patch+json",
        _preload_content: bool = False,
    ) -> bytes:
        path = _configmaps(namespace, name)
        return self._call("PATCH", path, body=body, content_type=_content_type)

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        path = f"/apis/{group}/{version}/namespaces/{_quoted(namespace)}/{plural}/{_quoted(name)}"
        body: dict[str, Any] = json.loads(self._call("GET", path))
        return body

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> bytes:
        """The answer's bytes; raises a `kube.KubeError` unless the status is 2xx."""
        headers = {"Accept": "application/json"}
        token = self._bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        content = None
        if body is not None:
            headers["Content-Type"] = content_type
            content = json.dumps(body, separators=(",", ":")).encode()

        try:
            response = self._http.request(method, path, headers=headers, content=content)
        except httpx2.TransportError as error:
            raise kube.Unavailable(f"The Kubernetes API did not answer: {error}") from error

        if not response.is_success:
            raise kube.error_for(
                response.status_code, response.content, http_reason=response.reason_phrase
            )
        return response.content

    def _bearer_token(self) -> str | None:
        token_file = self._credentials.token_file
        if token_file is None:
            return self._token
        if time.monotonic() - self._token_read_at >= TOKEN_REFRESH_SECONDS:
            try:
                self._token = token_file.read_text().strip() or None
            except OSError as error:
                message = f"The token {str(token_file)!r} is unreadable: {error}"
                raise kube.Forbidden(message) from error
            self._token_read_at = time.monotonic()
        return self._token


def _tls_context(given: Credentials) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=given.ca_file if given.verify else None)
    if not given.verify:  # a kubeconfig's insecure-skip-tls-verify
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if given.cert_file:
        context.load_cert_chain(given.cert_file, given.key_file)
    return context


def _configmaps(namespace: str, name: str = "") -> str:
    path = f"/api/v1/namespaces/{_quoted(namespace)}/configmaps"
    return f"{path}/{_quoted(name)}" if name else path


def _quoted(segment: str) -> str:
    return quote(segment, safe="")
