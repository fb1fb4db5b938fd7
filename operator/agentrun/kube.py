"""Credentials for the Kubernetes API, and its errors in our own words.

The operator calls `load_config` once at start-up and goes through `translated()` (or
`translate`) wherever it calls the kubernetes client and wants to tell a conflict from a
missing object. The runner's calls (`apiserver`) raise these errors themselves, through
`error_for`. This is the one place that knows the client's exception types::

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
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubernetes.client import Configuration

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Forbidden",
    "Invalid",
    "KubeError",
    "NotFound",
    "Unavailable",
    "bearer_token",
    "error_for",
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


def translate(error: BaseException) -> KubeError:
    """Our error for one the kubernetes client (or urllib3 under it) raised."""
    from kubernetes.client.exceptions import ApiException

    if not isinstance(error, ApiException):
        return Unavailable(f"The Kubernetes API did not answer: {error}")
    return error_for(int(error.status or 0), error.body, http_reason=error.reason or "")


def error_for(status: int, body: object, *, http_reason: str = "") -> KubeError:
    """Our error for an answer of HTTP `status` whose body is `body` (a Status, usually)."""
    reason, message = _status_body(body)
    text = message or f"HTTP {status} {http_reason}".strip()
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
    try:
        yield
    except KubeError:
        raise
    except Exception as error:
        if not _raised_by_the_client(error):
            raise
        raise translate(error) from error


def _raised_by_the_client(error: Exception) -> bool:
    """Whether the kubernetes client or urllib3 raised `error`.

    Looked up among the loaded modules: a process that never imported the client (the
    runner, see `apiserver`) cannot have got one of its errors, and importing the client
    here to find out would cost what `apiserver` saves.
    """
    exceptions = sys.modules.get("kubernetes.client.exceptions")
    urllib3_exceptions = sys.modules.get("urllib3.exceptions")
    kinds = tuple(
        kind
        for kind in (
            getattr(exceptions, "ApiException", None),
            getattr(urllib3_exceptions, "HTTPError", None),
        )
        if isinstance(kind, type)
    )
    return bool(kinds) and isinstance(error, kinds)
