"""The plugin's way into the cluster: the user's kubeconfig, AgentRuns, Job pods and logs.

`_commands` makes one `Cluster` per command. Every call goes through `kube.translated`,
so the commands see `agentrun.kube` errors (NotFound, Forbidden, Conflict...) and never
the client's. Bodies are read as plain JSON: the plugin needs a few fields of each
object and no client models. The kubernetes client is imported on first use, so that
`--help` answers at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from agentrun import api, checkpoint, kube
from agentrun.plugin._errors import PluginError

__all__ = ["Cluster", "Scope"]

# A watch request ends after this long and is renewed, so that a connection dropped
# without a word is noticed within minutes.
_WATCH_SECONDS = 300
# How long `logs -f` waits for a pod that has not started, as kubectl logs does by
# default (--pod-running-timeout=20s).
_POD_START_SECONDS = 20
_RUN = (api.GROUP, api.VERSION)


@dataclasses.dataclass(frozen=True)
class Scope:
    """Where a command acts, as the user gave it; None means what the kubeconfig says."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None

    def over(self, defaults: Scope) -> Scope:
        """This scope, with what it leaves unset taken from `defaults`."""
        return Scope(
            kubeconfig=self.kubeconfig or defaults.kubeconfig,
            context=self.context or defaults.context,
            namespace=self.namespace or defaults.namespace,
        )


class Cluster:
    """The cluster of the user's kubeconfig and context, with the namespace resolved.

    The namespace is the one given, else the context's, else `default`, as in kubectl.
    """

    def __init__(self, scope: Scope) -> None:
        from kubernetes import client, config

        if scope.kubeconfig and not Path(scope.kubeconfig).is_file():
            raise PluginError(f"The kubeconfig {scope.kubeconfig} does not exist.")
        try:
            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=scope.kubeconfig, context=scope.context
            )
            contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=scope.kubeconfig
            )
        except (config.ConfigException, OSError) as error:
            raise PluginError(f"Cannot load the kubeconfig: {error}") from error
        chosen = next((c for c in contexts if c["name"] == scope.context), active)
        settings = chosen.get("context") or {}
        self.namespace: str = scope.namespace or settings.get("namespace") or "default"
        self._kubeconfig_user: str | None = settings.get("user")
        # Any: calls pass `_preload_content=False` and read JSON, bypassing the models.
        self._custom: Any = client.CustomObjectsApi(api_client)
        self._core: Any = client.CoreV1Api(api_client)
        self._auth: Any = client.AuthenticationV1Api(api_client)

    # --- AgentRuns ---------------------------------------------------------------

    def run(self, name: str) -> dict[str, Any]:
        """The AgentRun `name`; raises PluginError when there is none."""
        try:
            with kube.translated():
                response = self._custom.get_namespaced_custom_object(
                    *_RUN, self.namespace, api.PLURAL, name, _preload_content=False
                )
        except kube.NotFound as error:
            message = f"AgentRun {name} not found in namespace {self.namespace}."
            raise PluginError(message) from error
        return _json(response)

    def runs(self, *, all_namespaces: bool = False) -> tuple[list[dict[str, Any]], str]:
        """The runs of the namespace (or of all), and the list's resourceVersion."""
        with kube.translated():
            if all_namespaces:
                response = self._custom.list_cluster_custom_object(
                    *_RUN, api.PLURAL, _preload_content=False
                )
            else:
                response = self._custom.list_namespaced_custom_object(
                    *_RUN, self.namespace, api.PLURAL, _preload_content=False
                )
        found = _json(response)
        return list(found.get("items") or []), str(found["metadata"].get("resourceVersion", ""))

    def patch_run(self, name: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply a JSON patch to the run; raises kube.Conflict when it changed meanwhile."""
        with kube.translated():
            response = self._custom.patch_namespaced_custom_object(
                *_RUN,
                self.namespace,
                api.PLURAL,
                name,
                operations,
                _content_type="application/json-patch+json",
                _preload_content=False,
            )
        return _json(response)

    def watch_runs(
        self, *, name: str | None, all_namespaces: bool, timeout: float | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, run) for every run now, then for each change, until `timeout`.

        The current runs come first as ADDED. When the API server has forgotten where the
        watch was (410 Gone), the runs are listed again and come again as ADDED: callers
        report changes, not events.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            runs, version = self.runs(all_namespaces=all_namespaces)
            for found in runs:
                if name is None or found["metadata"]["name"] == name:
                    yield "ADDED", found
            try:
                yield from self._watch_from(
                    version, name=name, all_namespaces=all_namespaces, deadline=deadline
                )
                return
            except kube.KubeError as error:
                if error.status != 410:
                    raise

    def _watch_from(
        self, version: str, *, name: str | None, all_namespaces: bool, deadline: float | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes import watch

        if all_namespaces:
            listing, where = self._custom.list_cluster_custom_object, [*_RUN, api.PLURAL]
        else:
            listing = self._custom.list_namespaced_custom_object
            where = [*_RUN, self.namespace, api.PLURAL]
        selector = {"field_selector": f"metadata.name={name}"} if name else {}
        while deadline is None or time.monotonic() < deadline:
            left = _WATCH_SECONDS if deadline is None else deadline - time.monotonic()
            seconds = max(1, math.ceil(min(left, _WATCH_SECONDS)))
            watcher: Any = watch.Watch()  # type: ignore[no-untyped-call]
            with kube.translated():
                for event in watcher.stream(
                    listing,
                    *where,
                    resource_version=version,
                    timeout_seconds=seconds,
                    allow_watch_bookmarks=True,
                    _request_timeout=seconds + 30,
                    **selector,
                ):
                    body: dict[str, Any] = event["raw_object"]
                    version = body["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        yield event["type"], body

    # --- who is asking ------------------------------------------------------------

    def username(self) -> str | None:
        """The user the API server authenticates these credentials as.

        Asks the server (SelfSubjectReview, Kubernetes 1.28 and later), since a
        kubeconfig's user entry is only a local name; falls back to that name when the
        server cannot say.
        """
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            with kube.translated():
                response = self._auth.create_self_subject_review(review, _preload_content=False)
        except kube.KubeError:
            return self._kubeconfig_user
        user = (_json(response).get("status") or {}).get("userInfo") or {}
        return str(user["username"]) if user.get("username") else self._kubeconfig_user

    # --- history, pods and logs ---------------------------------------------------

    def history(self, name: str) -> bytes:
        """The run's whole history from its checkpoint: pydantic-ai's message list as JSON."""
        try:
            return checkpoint.load_history_bytes(self._core, self.namespace, name)
        except checkpoint.CheckpointCorrupt as error:
            raise PluginError(str(error)) from error

    def pods(self, job: str, *, wait: bool = False) -> list[dict[str, Any]]:
        """The pods of a Job (by the `job-name` label its controller sets), oldest first.

        `wait` gives a Job that was just created a little time to get its first pod.
        """
        deadline = time.monotonic() + (_POD_START_SECONDS if wait else 0)
        while True:
            with kube.translated():
                response = self._core.list_namespaced_pod(
                    self.namespace, label_selector=f"job-name={job}", _preload_content=False
                )
            pods: list[dict[str, Any]] = _json(response).get("items") or []
            if pods or time.monotonic() >= deadline:
                return sorted(pods, key=lambda pod: pod["metadata"].get("creationTimestamp") or "")
            time.sleep(0.5)

    def wait_started(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Wait a little for a pod that is still Pending, so that its log can be followed;
        the pod as last read."""
        deadline = time.monotonic() + _POD_START_SECONDS
        while (pod.get("status") or {}).get("phase") in (None, "Pending"):
            if time.monotonic() > deadline:
                return pod
            time.sleep(0.5)
            with kube.translated():
                response = self._core.read_namespaced_pod(
                    pod["metadata"]["name"], self.namespace, _preload_content=False
                )
            pod = _json(response)
        return pod

    def log(self, pod: Mapping[str, Any], *, follow: bool) -> Iterator[bytes]:
        """The log of the pod's runner container, in chunks as they come."""
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = "runner" if "runner" in containers else containers[0]
        with kube.translated():
            response = self._core.read_namespaced_pod_log(
                pod["metadata"]["name"],
                self.namespace,
                container=container,
                follow=follow,
                _preload_content=False,
            )
            try:
                yield from response.stream(8192)
            finally:
                response.release_conn()


def _json(response: Any) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(response.data)
    return found
