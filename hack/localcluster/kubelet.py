"""The process-kubelet: registers a Node and runs the pods bound to it as local processes.

cluster.py starts it as
`python hack/localcluster/kubelet.py --kubeconfig K --node-name N --state DIR --tls-cert C
--tls-key K --client-ca CA` (`python -m localcluster.kubelet` with hack on sys.path works
too). It uses the admin kubeconfig it is given (system:masters), not a node credential:
the Node authorizer and NodeRestriction are not what the project's tests exercise.

It registers the Node (Ready, capacity, 127.0.0.1, its log server's port) and renews
the node's Lease every ten seconds; binds every pod that has no node (there is no
scheduler); runs each pod bound to its node through a PodRunner; and serves container
logs for `kubectl logs`. Pods bound to another node are ignored. Pods it finds bound to
its node at start are reported Failed: their processes went away with the previous
kubelet.

Threads, because they are simple and good enough for tens of pods: the main thread waits
for SIGTERM, one watches pods, one beats the heartbeat, one serves logs, and one runs each
pod. A failure on one pod is logged and never stops the kubelet. On SIGTERM every pod's
processes are stopped (SIGTERM, then SIGKILL after two seconds) and nothing is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    # Run as a file: import the package from hack/, and keep this folder off sys.path so
    # that its module names cannot shadow anyone else's.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localcluster import logserver, node, podrunner, podstatus, processes

__all__ = ["Kubelet", "main"]

log = logging.getLogger("localcluster.kubelet")

Pod = dict[str, Any]

HEARTBEAT_SECONDS = 10
WATCH_SECONDS = 300
HANDLE_ATTEMPTS = 5
_TERMINAL = ("Succeeded", "Failed")


class Kubelet:
    """The pods of one node: which run here, which are finished, and their runners."""

    def __init__(self, api: Any, *, node_name: str, state_dir: Path) -> None:
        # Any: calls here pass _preload_content=False and get raw responses, which the
        # typed signatures do not describe; raw JSON also spares the strict models.
        self._core: Any = client.CoreV1Api(api)
        self._api = api
        self._node_name = node_name
        self._pods_dir = state_dir / "pods"
        self._lock = threading.Lock()
        self._stopping = False
        self._runners: dict[str, podrunner.PodRunner] = {}
        self._finished: set[str] = set()
        """Uids of pods that will not run here (again)."""
        self._deleted: set[str] = set()
        """Uids of finished pods this kubelet already deleted with grace period 0."""
        server = urlsplit(api.configuration.host)
        self.context = podrunner.NodeContext(
            core=self._core,
            node_name=node_name,
            pods_dir=self._pods_dir,
            apiserver_host=server.hostname or "127.0.0.1",
            apiserver_port=str(server.port or 443),
            ca_pem=Path(api.configuration.ssl_ca_cert).read_bytes(),
            python_dir=str(Path(sys.executable).parent),
        )

    def run(self, stop: threading.Event, *, tls: argparse.Namespace) -> None:
        """Serve until stop is set, then stop every pod's processes."""
        port = logserver.serve(
            locate=self.locate, cert=tls.tls_cert, key=tls.tls_key, client_ca=tls.client_ca
        )
        log.info("Serving container logs on 127.0.0.1:%d.", port)
        registered = self._register(port, stop)
        if registered is None:
            return
        self._fail_lost_pods()
        threading.Thread(
            target=self._beat, args=(registered, stop), name="heartbeat", daemon=True
        ).start()
        threading.Thread(target=self._watch, args=(stop,), name="pod watch", daemon=True).start()
        while not stop.wait(1):
            pass
        self._shutdown()

    def locate(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> tuple[Path, Callable[[], bool]] | None:
        """Where a container's log is and whether it still grows (for the log server)."""
        with self._lock:
            runners = [
                r for r in self._runners.values() if (r.namespace, r.pod_name) == (namespace, pod)
            ]
        if runners:
            runner = max(runners, key=lambda r: r.is_alive())
            return runner.log_path(container, previous=previous), partial(
                runner.is_running, container
            )
        # A pod run by an earlier kubelet: its folder is still there.
        folders = sorted(
            self._pods_dir.glob(f"{namespace}_{pod}_*"), key=lambda p: p.stat().st_mtime
        )
        if not folders:
            return None
        suffix = ".previous.log" if previous else ".log"
        return folders[-1] / f"{container}{suffix}", lambda: False

    def _register(self, port: int, stop: threading.Event) -> node.Node | None:
        # The kubelet starts alongside the apiserver: wait for it quietly.
        waited = False
        while not stop.is_set():
            try:
                version = client.VersionApi(self._api).get_code().git_version
                registered = node.Node(
                    core=self._core, coordination=client.CoordinationV1Api(self._api),
                    name=self._node_name, port=port, version=version,
                    state_dir=self._pods_dir.parent,
                )  # fmt: skip
                registered.register()
            except Exception as error:
                if not waited:
                    log.info(
                        "Waiting for the apiserver to register node %s (%s).",
                        self._node_name,
                        error,
                    )
                waited = True
                stop.wait(0.5)
                continue
            log.info("Registered node %s (Kubernetes %s), Ready.", self._node_name, version)
            return registered
        return None

    def _beat(self, registered: node.Node, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                registered.heartbeat()
            except Exception as error:
                log.warning(
                    "The node heartbeat failed (%s); will try again in %d s.",
                    error,
                    HEARTBEAT_SECONDS,
                )

    def _fail_lost_pods(self) -> None:
        selector = f"spec.nodeName={self._node_name}"
        answer = self._core.list_pod_for_all_namespaces(
            field_selector=selector, _preload_content=False
        )
        for pod in json.loads(answer.data)["items"]:
            self._finished.add(pod["metadata"]["uid"])
            if (pod.get("status") or {}).get("phase") not in _TERMINAL:
                self._fail_lost(pod)

    def _fail_lost(self, pod: Pod) -> None:
        namespace, name, uid = (pod["metadata"][key] for key in ("namespace", "name", "uid"))
        # A kubelet killed without its shutdown may have left processes behind.
        leftovers = self._pods_dir.glob(f"{namespace}_{name}_{uid}/*.pid")
        processes.terminate_groups(processes.recorded_pids(leftovers), grace=2)
        patch = {"metadata": {"uid": uid}, "status": podstatus.lost_status(pod)}
        try:
            self._core.patch_namespaced_pod_status(name, namespace, patch, _preload_content=False)
        except ApiException as error:
            log.warning("Pod %s/%s: could not report it Failed: %s.", namespace, name, error.reason)
            return
        log.warning(
            "Pod %s/%s: its processes were gone after a kubelet restart; reported it Failed.",
            namespace,
            name,
        )

    def _watch(self, stop: threading.Event) -> None:
        version: str | None = None
        while not stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._follow(version, stop)
            except Exception as error:
                log.warning("The pod watch failed (%s); listing pods again in a second.", error)
                version = None
                stop.wait(1)

    def _list(self) -> str:
        answer = self._core.list_pod_for_all_namespaces(_preload_content=False)
        pods = json.loads(answer.data)
        for pod in pods["items"]:
            self._handle(pod, deleted=False)
        return str(pods["metadata"]["resourceVersion"])

    def _follow(self, version: str, stop: threading.Event) -> str | None:
        """Handle watch events from version on; the version to resume from, None to relist."""
        answer = self._core.list_pod_for_all_namespaces(
            watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS, _preload_content=False,
            _request_timeout=(10, WATCH_SECONDS + 30),
        )  # fmt: skip
        try:
            for line in _lines(answer):
                event = json.loads(line)
                pod = event["object"]
                if event["type"] == "ERROR":
                    if pod.get("code") == 410:  # our version is too old: relist
                        return None
                    raise RuntimeError(pod.get("message", "watch error"))
                version = pod["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self._handle(pod, deleted=event["type"] == "DELETED")
                if stop.is_set():
                    break
        finally:
            answer.release_conn()
        return version

    def _handle(self, pod: Pod, *, deleted: bool, attempt: int = 1) -> None:
        try:
            with self._lock:
                if not self._stopping:
                    self._dispatch(pod, deleted=deleted)
        except Exception:
            metadata = pod.get("metadata", {})
            retry = attempt < HANDLE_ATTEMPTS
            log.exception(
                "Pod %s/%s: handling its change failed%s.",
                metadata.get("namespace"), metadata.get("name"),
                f"; will try again in {attempt} s" if retry else ", for the last time",
            )  # fmt: skip
            # A change may be the last one for a while (a pod waiting for its binding):
            # retry it rather than wait for the next.
            if retry:
                again = threading.Timer(
                    attempt, self._handle, (pod,), {"deleted": deleted, "attempt": attempt + 1}
                )
                again.daemon = True
                again.start()

    def _dispatch(self, pod: Pod, *, deleted: bool) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        uid = metadata["uid"]
        runner = self._runners.get(uid)
        if deleted:
            if runner is not None:
                runner.abandon()
                del self._runners[uid]
            self._finished.discard(uid)
            self._deleted.discard(uid)
            return
        if not spec.get("nodeName"):
            if not metadata.get("deletionTimestamp"):
                self._bind(pod)
            return
        if spec["nodeName"] != self._node_name:
            return
        if runner is not None and runner.is_alive():
            runner.observe(pod)
        elif runner is not None or uid in self._finished:
            self._delete_if_requested(pod)
        elif _past_running(pod):
            self._finished.add(uid)
            self._delete_if_requested(pod)
        else:
            runner = podrunner.PodRunner(pod, self.context)
            self._runners[uid] = runner
            runner.start()

    def _bind(self, pod: Pod) -> None:
        metadata = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": metadata["name"], "uid": metadata["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self._node_name},
        }
        # _preload_content=False: the client fails to deserialise the Binding it gets back.
        try:
            self._core.create_namespaced_pod_binding(
                metadata["name"], metadata["namespace"], binding, _preload_content=False
            )
        except ApiException as error:
            # 409: bound already, the next event says where; 404: gone already.
            if error.status in (404, 409):
                return
            raise
        log.info(
            "Pod %s/%s: bound to node %s.", metadata["namespace"], metadata["name"], self._node_name
        )

    def _delete_if_requested(self, pod: Pod) -> None:
        """Finish the deletion of a pod that runs nothing here any more."""
        metadata = pod["metadata"]
        if not metadata.get("deletionTimestamp") or metadata["uid"] in self._deleted:
            return
        self._deleted.add(metadata["uid"])
        try:
            podrunner.delete_now(
                self._core,
                namespace=metadata["namespace"],
                name=metadata["name"],
                uid=metadata["uid"],
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def _shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            runners = [runner for runner in self._runners.values() if runner.is_alive()]
        log.info("Stopping: stopping the processes of %d running pods.", len(runners))
        for runner in runners:
            runner.abandon()
        for runner in runners:
            runner.join(timeout=podrunner.ABANDON_GRACE_SECONDS + 3)
        # A runner stuck in a long grace period leaves its processes: stop them here.
        processes.terminate_groups(processes.recorded_pids(self._pods_dir.glob("*/*.pid")), grace=0)


def _past_running(pod: Pod) -> bool:
    """Whether a pod this kubelet has no runner for should not start: over, or deleted."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in _TERMINAL or bool(pod["metadata"].get("deletionTimestamp"))


def _lines(answer: Any) -> Iterator[bytes]:
    """The lines of a streamed response body, as they arrive (one watch event each)."""
    pending = b""
    for chunk in answer.stream(amt=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(args.kubeconfig), client_configuration=configuration, persist_config=False
    )
    # One connection per pod thread plus the watch: the default pool of 4 would churn.
    configuration.connection_pool_maxsize = 64
    kubelet = Kubelet(
        client.ApiClient(configuration), node_name=args.node_name, state_dir=args.state
    )
    kubelet.run(stop, tls=args)
    log.info("Stopped.")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--state", type=Path, required=True, help="the cluster's state directory")
    parser.add_argument("--tls-cert", type=Path, required=True, help="the log server's certificate")
    parser.add_argument("--tls-key", type=Path, required=True)
    parser.add_argument("--client-ca", type=Path, required=True, help="CA of allowed clients")
    return parser


if __name__ == "__main__":
    sys.exit(main())
