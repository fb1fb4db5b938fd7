"""Credentials for the Kubernetes API, and its errors in our own words.

Both programs call `load_config` once at start-up and go through `translated()` (or
`translate`) wherever they call the kubernetes client and want to tell a conflict from a
missing object. The runner makes its few calls through `JsonApi`, which spares it the
import of the client's generated API classes. This is the one place that knows the
client's exception types::

    KubeError                 any failed call; `status` is the HTTP status (0: no answer)
    ├── NotFound              404: the object does not exist
    ├── Conflict              409: resourceVersion precondition failed; re-read and decide
    │   └── AlreadyExists     409 on create: the name is taken
    ├── Forbidden             401, 403: the caller's RBAC or credentials do not allow it
    ├── Invalid               400, 413, 422: the API server refused the object as written
    └── Unavailable           429, 5xx, timeouts, refused connections: try again later
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Forbidden",
    "Invalid",
    "JsonApi",
    "KubeError",
    "NotFound",
    "Unavailable",
    "bearer_token",
    "load_config",
    "translate",
    "translated",
]

# Set by the local process-kubelet of the test cluster, which runs pods as processes: a
# folder holding `token`, `ca.crt` and `namespace`, as a pod's projected volume would.
SERVICEACCOUNT_DIR_ENV = "AGENTRUN_SERVICEACCOUNT_DIR"
IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(Exception):
    """A call to the Kubernetes API failed. The original exception is chained."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        """The HTTP status of the answer; 0 when no answer came."""
        self.reason = reason
        """The API server's one-word reason (`Conflict`, `AlreadyExists`...), if it gave one."""


class NotFound(KubeError):
    """The object does not exist."""


class Conflict(KubeError):
    """The object changed since it was read (resourceVersion precondition failed)."""


class AlreadyExists(Conflict):
    """An object of that name already exists."""


class Forbidden(KubeError):
    """The caller's credentials or RBAC rules do not allow the request."""


class Invalid(KubeError):
    """The API server refused the object as written (validation, size)."""


class Unavailable(KubeError):
    """The API server did not answer usefully now; the same request may work later."""


def load_config() -> Configuration:
    """Client configuration for wherever this process runs.

    In order: the folder named by `AGENTRUN_SERVICEACCOUNT_DIR` (the local process-kubelet
    sets it along with KUBERNETES_SERVICE_HOST/PORT); a pod's own ServiceAccount at the
    standard in-cluster paths; else the kubeconfig (`KUBECONFIG` or ~/.kube/config).
    """
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration

    configuration = Configuration()
    folder = os.environ.get(SERVICEACCOUNT_DIR_ENV)
    if folder:
        _load_service_account(configuration, Path(folder))
        return configuration
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (IN_CLUSTER_DIR / "token").is_file():
        _load_service_account(configuration, IN_CLUSTER_DIR)
        return configuration
    # KUBECONFIG as it is now: the client reads it once, when first imported.
    kube_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
    )
    return configuration


def _load_service_account(configuration: Configuration, folder: Path) -> None:
    from kubernetes.config.incluster_config import InClusterConfigLoader

    loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=str(folder / "token"), cert_filename=str(folder / "ca.crt")
    )
    loader.load_and_set(configuration)  # type: ignore[no-untyped-call]


def bearer_token(configuration: Configuration) -> str | None:
    """The bearer token a configuration sends, without its scheme; None for client certs.

    Both loaders keep it under the `BearerToken` key, with or without a `Bearer ` prefix.
    """
    keys = configuration.api_key or {}
    value = keys.get("BearerToken") or keys.get("authorization") or ""
    scheme, _, token = str(value).partition(" ")
    token = token if scheme.lower() == "bearer" else str(value)
    return token.strip() or None


class JsonApi:
    """The runner's few calls of CoreV1Api and CustomObjectsApi, under the same names and
    arguments, sent as plain JSON through the client's ApiClient.

    The generated API classes import a pydantic model for every kind they name (about 250
    for CoreV1Api) and wrap each method in `validate_call`: 0.5 s of CPU at each runner's
    start on two cores, for calls whose bodies `checkpoint` handles as JSON anyway. The
    kubernetes library still does the rest (credentials, TLS, connection pooling), and
    failed calls raise its ApiException, as the generated classes do. The
    `_preload_content` arguments are accepted for the same signatures and ignored: bodies
    are never turned into models here.
    """

    def __init__(self, api_client: ApiClient) -> None:
        self._client = api_client

    def read_namespaced_config_map(
        self, name: str, namespace: str, *, _preload_content: bool = False
    ) -> Any:
        return self._call("GET", _configmaps(namespace, name))

    def create_namespaced_config_map(
        self, namespace: str, body: dict[str, Any], *, _preload_content: bool = False
    ) -> Any:
        return self._call("POST", _configmaps(namespace), body=body)

    def patch_namespaced_config_map(
        self,
        name: str,
        namespace: str,
        body: dict[str, Any],
        *,
        _content_type: str = "application/merge-patch+json",
        _preload_content: bool = False,
    ) -> Any:
        path = _configmaps(namespace, name)
        return self._call("PATCH", path, body=body, content_type=_content_type)

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        path = f"/apis/{group}/{version}/namespaces/{_quoted(namespace)}/{plural}/{_quoted(name)}"
        body: dict[str, Any] = json.loads(self._call("GET", path).data)
        return body

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """The read response (its bytes in `.data`); raises ApiException unless 2xx."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self._client.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self._client.call_api(*request)
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response


def _configmaps(namespace: str, name: str = "") -> str:
    path = f"/api/v1/namespaces/{_quoted(namespace)}/configmaps"
    return f"{path}/{_quoted(name)}" if name else path


def _quoted(segment: str) -> str:
    return quote(segment, safe="")


def translate(error: BaseException) -> KubeError:
    """Our error for one the kubernetes client (or urllib3 under it) raised."""
    from kubernetes.client.exceptions import ApiException

    if not isinstance(error, ApiException):
        return Unavailable(f"The Kubernetes API did not answer: {error}")
    status = int(error.status or 0)
    reason, message = _status_body(error.body)
    text = message or f"HTTP {status} {error.reason or ''}".strip()
    kind: type[KubeError]
    if status == 404:
        kind = NotFound
    elif status == 409:
        kind = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif status in (401, 403):
        kind = Forbidden
    elif status in (400, 413, 422):
        kind = Invalid
    else:
        kind = Unavailable
    return kind(text, status=status, reason=reason)


def _status_body(body: object) -> tuple[str, str]:
    """(reason, message) of a Kubernetes Status body, or empty strings."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return "", ""
    try:
        status = json.loads(body)
    except ValueError:
        return "", body[:500]
    if not isinstance(status, dict):
        return "", ""
    return str(status.get("reason") or ""), str(status.get("message") or "")


@contextmanager
def translated() -> Iterator[None]:
    """Run a block of client calls, raising our errors (chained) instead of the client's."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except (ApiException, HTTPError) as error:
        raise translate(error) from error
