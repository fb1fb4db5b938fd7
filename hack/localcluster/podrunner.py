"""Runs one pod's containers as local processes and reports the pod's status.

kubelet.py starts one PodRunner thread per pod bound to its node and hands it each newer
version of the pod through observe(); the log server asks it for log files and whether a
container still runs.

Images are not pulled: each container's command runs on the host, in its own process
group, from the pod's folder <state>/pods/<namespace>_<name>_<uid>/:

    volumes/<volume>/          one folder per emptyDir volume
    containers/<container>/    the working directory, unless workingDir lies in an emptyDir
    serviceaccount/            token, ca.crt and namespace, when the pod mounts a token
    tmp/                       TMPDIR
    <container>.log            stdout and stderr of the current process
    <container>.previous.log   the same for the process before the last restart
    <container>.pid            while the process runs

Every container gets PATH (the kubelet's Python's bin folder first, then the host's),
HOME (the pod's folder), HOSTNAME, TMPDIR, KUBERNETES_SERVICE_HOST and _PORT (the
apiserver on loopback), PYTHONUNBUFFERED=1 (standing in for the image's ENV, so logs are
live), a few locale and CA variables of the host, and AGENTRUN_SERVICEACCOUNT_DIR when it
has a token. That variable is the documented override of the fixed in-cluster path
/var/run/secrets/kubernetes.io/serviceaccount; code in a pod loads its config with:

    from kubernetes.config.incluster_config import InClusterConfigLoader
    directory = os.environ["AGENTRUN_SERVICEACCOUNT_DIR"]
    InClusterConfigLoader(
        token_filename=f"{directory}/token", cert_filename=f"{directory}/ca.crt"
    ).load_and_set()

Limitations, stated plainly: probes are ignored (a running container is ready); only
emptyDir volumes exist, and only through workingDir (a process that opens a mount path
by its absolute name reaches the host's file system); resources are not enforced.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from localcluster import podenv, podstatus, processes

__all__ = ["NodeContext", "PodRunner", "delete_now"]

log = logging.getLogger("localcluster.kubelet")

Pod = dict[str, Any]

TOKEN_SECONDS = 3600
POLL_SECONDS = 0.2
CONFIG_RETRY_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 30.0
ABANDON_GRACE_SECONDS = 2.0
DEFAULT_GRACE_SECONDS = 30
_HOST_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
_API_ERRORS = (ApiException, urllib3.exceptions.HTTPError)


@dataclass(frozen=True)
class NodeContext:
    """What every runner on the node shares."""

    core: Any
    """A CoreV1Api over the kubelet's credentials."""
    node_name: str
    pods_dir: Path
    apiserver_host: str
    apiserver_port: str
    ca_pem: bytes
    """The cluster CA, written into each pod's serviceaccount/ca.crt."""
    python_dir: str
    """The folder of the kubelet's Python: the project's console scripts live there."""


@dataclass
class _Slot:
    """One container of the pod and the process running it, if any."""

    spec: dict[str, Any]
    record: podstatus.ContainerRecord
    policy: str
    """Always, OnFailure or Never: when this container restarts after its process ends."""
    sidecar: bool = False
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    next_start: float = 0.0
    done: bool = False
    config_error: str = ""

    @property
    def name(self) -> str:
        return self.record.name


class PodRunner:
    """Runs one pod from its binding to its end, in a thread of its own."""

    def __init__(self, pod: Pod, context: NodeContext) -> None:
        metadata = pod["metadata"]
        self.namespace: str = metadata["namespace"]
        self.pod_name: str = metadata["name"]
        self.uid: str = metadata["uid"]
        self._thread = threading.Thread(target=self._run_safely, name=f"pod {self.label}")
        self._thread.daemon = True
        self.dir = context.pods_dir / f"{self.namespace}_{self.pod_name}_{self.uid}"
        self._context = context
        self._pod = pod
        self._wake = threading.Event()
        self._abandoned = False
        self._phase = "Pending"
        self._reason = ""
        self._message = ""
        self._init_done = False
        self._conditions = podstatus.Conditions()
        self._start_time = podstatus.now()
        self._began = time.monotonic()
        self._token_renewal: float | None = None
        self._dirty = False
        self._init = [self._slot(c, init=True) for c in pod["spec"].get("initContainers") or []]
        self._main = [self._slot(c, init=False) for c in pod["spec"]["containers"]]

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

    # Called from other threads.

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def observe(self, pod: Pod) -> None:
        """Take a newer version of the pod (a deletion timestamp, a shorter deadline)."""
        self._pod = pod
        self._wake.set()

    def abandon(self) -> None:
        """Stop the processes without reporting: the pod is gone or the kubelet stops."""
        self._abandoned = True
        self._wake.set()

    def is_running(self, container: str) -> bool:
        return any(s.name == container and s.process is not None for s in self._slots())

    def log_path(self, container: str, *, previous: bool = False) -> Path:
        return self.dir / f"{container}{'.previous' if previous else ''}.log"

    # The runner's thread.

    def _run_safely(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception(
                "Pod %s: the runner failed; its processes are stopped and the pod is "
                "reported Failed.", self.label,
            )  # fmt: skip
            self._stop_processes(grace=0)
            self._phase, self._reason = "Failed", "ProcessKubeletError"
            self._message = "The process-kubelet failed to run this pod; see its log."
            self._report()

    def _run(self) -> None:
        self._prepare()
        if self._run_init_containers():
            self._init_done = True
            sidecars = [slot for slot in self._init if slot.sidecar]
            self._supervise([*sidecars, *self._main], until=lambda: all(s.done for s in self._main))
        self._finish()

    def _prepare(self) -> None:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        for volume in self._pod["spec"].get("volumes") or []:
            if "emptyDir" in volume:
                (self.dir / "volumes" / volume["name"]).mkdir(parents=True, exist_ok=True)
        images = sorted({slot.record.image for slot in self._slots()})
        log.info(
            "Pod %s: bound to this node; image %s ignored, its commands run as host "
            "processes in %s.", self.label, ", ".join(images), self.dir,
        )  # fmt: skip
        for slot in self._main:
            slot.record.state = podstatus.waiting(
                "PodInitializing" if self._init else "ContainerCreating"
            )
        self._report()

    def _run_init_containers(self) -> bool:
        """Run init containers in order; False when one failed for good or the pod stops.

        A sidecar (an init container with restartPolicy Always) only has to start; it
        keeps running beside the main containers and stops after them.
        """
        sidecars: list[_Slot] = []
        for slot in self._init:
            if slot.sidecar:
                sidecars.append(slot)
                if not self._supervise(sidecars, until=_started(slot)):
                    return False
                continue
            if not self._supervise([*sidecars, slot], until=_done(slot)):
                return False
            if slot.record.exit_code() != 0:
                self._phase = "Failed"
                return False
        return True

    def _supervise(self, slots: list[_Slot], *, until: Callable[[], bool]) -> bool:
        """Start, watch and restart slots until `until` holds (True) or the pod stops."""
        while not self._stop_requested():
            changed = [self._tend(slot) for slot in slots]
            if any(changed) or self._dirty:
                self._update_phase()
                self._report()
            if until():
                return True
            self._renew_token_if_due()
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
        return False

    def _tend(self, slot: _Slot) -> bool:
        """Move one slot along; whether its status changed."""
        if slot.process is not None:
            returncode = slot.process.poll()
            if returncode is None:
                return False
            self._exited(slot, returncode)
            return True
        if slot.done or time.monotonic() < slot.next_start:
            return False
        return self._start(slot)

    def _start(self, slot: _Slot) -> bool:
        try:
            env = podenv.resolve(
                self._pod, slot.spec, base=self._base_env(), core=self._context.core
            )
            argv = podenv.command_line(slot.spec, env)
        except podenv.ConfigError as error:
            slot.next_start = time.monotonic() + CONFIG_RETRY_SECONDS
            if str(error) == slot.config_error:
                return False
            slot.config_error = str(error)
            log.warning(
                "Pod %s: container %s cannot start yet: %s. Will retry every %g s.",
                self.label, slot.name, error, CONFIG_RETRY_SECONDS,
            )  # fmt: skip
            slot.record.state = podstatus.waiting("CreateContainerConfigError", str(error))
            return True
        except podenv.StartError as error:
            self._failed_to_start(slot, str(error))
            return True
        if slot.record.restart_count and self.log_path(slot.name).exists():
            self.log_path(slot.name).replace(self.log_path(slot.name, previous=True))
        try:
            slot.process = processes.spawn(
                argv, log=self.log_path(slot.name), env=env, cwd=self._workdir(slot.spec)
            )
        except OSError as error:
            self._failed_to_start(slot, f"cannot run {argv[0]!r}: {error.strerror or error}")
            return True
        pid = slot.process.pid
        (self.dir / f"{slot.name}.pid").write_text(f"{pid}\n")
        slot.started_at = podstatus.now()
        slot.record.container_id = f"process://{pid}"
        slot.record.state = podstatus.running(slot.started_at)
        slot.config_error = ""
        log.info(
            "Pod %s: container %s started as process %d: %s",
            self.label, slot.name, pid, shlex.join(argv),
        )  # fmt: skip
        return True

    def _failed_to_start(self, slot: _Slot, message: str) -> None:
        log.warning("Pod %s: container %s could not start: %s.", self.label, slot.name, message)
        state = podstatus.terminated(
            exit_code=128, reason="StartError", message=message, started_at=podstatus.now()
        )
        self._record_end(slot, state, exit_code=128, may_restart=True)

    def _exited(self, slot: _Slot, returncode: int, *, may_restart: bool = True) -> None:
        assert slot.process is not None
        exit_code, signal = podstatus.exit_details(returncode)
        log.info(
            "Pod %s: container %s (process %d) exited with code %d.",
            self.label, slot.name, slot.process.pid, exit_code,
        )  # fmt: skip
        slot.process = None
        (self.dir / f"{slot.name}.pid").unlink(missing_ok=True)
        state = podstatus.terminated(
            exit_code=exit_code, started_at=slot.started_at, signal=signal,
            container_id=slot.record.container_id,
        )  # fmt: skip
        self._record_end(slot, state, exit_code=exit_code, may_restart=may_restart)

    def _record_end(
        self, slot: _Slot, state: podstatus.State, *, exit_code: int, may_restart: bool
    ) -> None:
        slot.record.state = state
        restart = slot.policy == "Always" or (slot.policy == "OnFailure" and exit_code != 0)
        if not (restart and may_restart):
            slot.done = True
            return
        # Kubernetes doubles the delay from 10 s up to 5 min; shorter here, for tests.
        delay = min(2.0**slot.record.restart_count, MAX_BACKOFF_SECONDS)
        slot.record.last_state = state
        slot.record.restart_count += 1
        slot.record.state = podstatus.waiting(
            "CrashLoopBackOff", f"back-off {delay:g}s restarting failed container {slot.name}"
        )
        slot.next_start = time.monotonic() + delay

    def _stop_requested(self) -> bool:
        deadline = self._pod["spec"].get("activeDeadlineSeconds")
        return (
            self._abandoned
            or bool(self._pod["metadata"].get("deletionTimestamp"))
            or (deadline is not None and time.monotonic() - self._began > deadline)
        )

    def _update_phase(self) -> None:
        # Terminal phases are decided in _finish, once every process has stopped.
        if self._phase == "Pending" and any(s.record.container_id for s in self._main):
            self._phase = "Running"

    def _finish(self) -> None:
        metadata, spec = self._pod["metadata"], self._pod["spec"]
        if self._abandoned:
            self._stop_processes(grace=ABANDON_GRACE_SECONDS)
            log.info("Pod %s: stopped its processes; nothing more to report.", self.label)
            return
        deleting = bool(metadata.get("deletionTimestamp"))
        overdue = not deleting and self._phase != "Failed" and not all(s.done for s in self._main)
        grace = metadata.get("deletionGracePeriodSeconds") if deleting else None
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        # Sidecars, and every container of a deleted or overdue pod, stop here.
        self._stop_processes(grace=float(grace))
        if overdue:
            self._phase, self._reason = "Failed", "DeadlineExceeded"
            self._message = "Pod was active on the node longer than the specified deadline"
        elif self._phase != "Failed":
            succeeded = all(s.record.exit_code() == 0 for s in self._main)
            self._phase = "Succeeded" if succeeded else "Failed"
        log.info("Pod %s: finished, phase %s.", self.label, self._phase)
        self._report_until_done()
        if deleting:
            self._delete()

    def _stop_processes(self, *, grace: float) -> None:
        running = [slot for slot in self._slots() if slot.process is not None]
        processes.terminate_groups([s.process.pid for s in running if s.process], grace=grace)
        for slot in running:
            assert slot.process is not None
            self._exited(slot, slot.process.wait(), may_restart=False)

    def _report(self) -> bool:
        """Patch pods/status with what the runner knows; False when worth trying again."""
        status = podstatus.pod_status(
            phase=self._phase,
            start_time=self._start_time,
            initialized=self._init_done,
            conditions=self._conditions,
            init_containers=[slot.record for slot in self._init],
            containers=[slot.record for slot in self._main],
            reason=self._reason,
            message=self._message,
        )
        # The uid makes the patch fail on a newer pod of the same name, as the kubelet's own.
        patch = {"metadata": {"uid": self.uid}, "status": status}
        try:
            self._context.core.patch_namespaced_pod_status(
                self.pod_name, self.namespace, patch, _preload_content=False
            )
        except _API_ERRORS as error:
            code = error.status if isinstance(error, ApiException) else None
            if code in (404, 409):
                log.info("Pod %s: gone from the API; stopping its processes.", self.label)
                self._abandoned = True
                return True
            # Server trouble passes; a refused status (422) would be refused again.
            retry = code is None or code == 429 or code >= 500
            log.log(
                logging.WARNING if retry else logging.ERROR,
                "Pod %s: could not report status %s (%s)%s.", self.label, self._phase,
                _describe(error), "; will try again" if retry else "",
            )  # fmt: skip
            self._dirty = retry
            return not retry
        self._dirty = False
        return True

    def _report_until_done(self) -> None:
        # The terminal status is what the Job controller waits for: worth retrying.
        for _ in range(60):
            if self._report() or self._abandoned:
                return
            time.sleep(1)

    def _delete(self) -> None:
        try:
            delete_now(
                self._context.core, namespace=self.namespace, name=self.pod_name, uid=self.uid
            )
        except _API_ERRORS as error:
            if not (isinstance(error, ApiException) and error.status in (404, 409)):
                log.warning("Pod %s: could not delete it: %s.", self.label, _describe(error))
            return
        log.info("Pod %s: processes stopped; deleted the pod with grace period 0.", self.label)

    def _base_env(self) -> dict[str, str]:
        host_path = os.environ.get("PATH", os.defpath)
        env = {name: os.environ[name] for name in _HOST_VARIABLES if name in os.environ}
        env.update(
            PATH=f"{self._context.python_dir}{os.pathsep}{host_path}",
            HOME=str(self.dir),
            HOSTNAME=self.pod_name,
            TMPDIR=str(self.dir / "tmp"),
            KUBERNETES_SERVICE_HOST=self._context.apiserver_host,
            KUBERNETES_SERVICE_PORT=self._context.apiserver_port,
            KUBERNETES_SERVICE_PORT_HTTPS=self._context.apiserver_port,
            PYTHONUNBUFFERED="1",
        )
        if self._wants_token():
            if self._token_renewal is None:
                self._write_token()
            env["AGENTRUN_SERVICEACCOUNT_DIR"] = str(self.dir / "serviceaccount")
        return env

    def _wants_token(self) -> bool:
        # ServiceAccount admission adds the kube-api-access-* volume exactly when the pod
        # and its ServiceAccount allow a token; an explicit true covers a pod made
        # without that admission plugin.
        spec = self._pod["spec"]
        projected = any(
            volume["name"].startswith("kube-api-access-") and "projected" in volume
            for volume in spec.get("volumes") or []
        )
        return projected or spec.get("automountServiceAccountToken") is True

    def _write_token(self) -> None:
        account = self._pod["spec"].get("serviceAccountName") or "default"
        bound = {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid}
        request = {
            "spec": {"audiences": [], "expirationSeconds": TOKEN_SECONDS, "boundObjectRef": bound}
        }
        try:
            answer = self._context.core.create_namespaced_service_account_token(
                account, self.namespace, request, _preload_content=False
            )
        except _API_ERRORS as error:
            raise podenv.ConfigError(
                f"cannot get a token for serviceaccount {account!r}: {_describe(error)}"
            ) from error
        folder = self.dir / "serviceaccount"
        folder.mkdir(exist_ok=True)
        _write_atomically(folder / "token", json.loads(answer.data)["status"]["token"].encode())
        _write_atomically(folder / "ca.crt", self._context.ca_pem)
        _write_atomically(folder / "namespace", self.namespace.encode())
        # Renew at 80 % of the lifetime, as the kubelet does for projected tokens.
        self._token_renewal = time.monotonic() + TOKEN_SECONDS * 0.8

    def _renew_token_if_due(self) -> None:
        if self._token_renewal is None or time.monotonic() < self._token_renewal:
            return
        try:
            self._write_token()
        except podenv.ConfigError as error:
            log.warning("Pod %s: %s; will try again in a minute.", self.label, error)
            self._token_renewal = time.monotonic() + 60

    def _workdir(self, container: dict[str, Any]) -> Path:
        folder = self._mapped_workdir(container) or self.dir / "containers" / container["name"]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _mapped_workdir(self, container: dict[str, Any]) -> Path | None:
        """The folder standing for workingDir when it lies in an emptyDir volume."""
        if not (wanted := container.get("workingDir")):
            return None
        path = PurePosixPath(wanted)
        empty_dirs = {
            volume["name"]
            for volume in self._pod["spec"].get("volumes") or []
            if "emptyDir" in volume
        }
        for mount in container.get("volumeMounts") or []:
            mount_path = PurePosixPath(mount["mountPath"])
            if mount["name"] in empty_dirs and (path == mount_path or mount_path in path.parents):
                folder = self.dir / "volumes" / str(mount["name"]) / str(mount.get("subPath", ""))
                return folder / path.relative_to(mount_path)
        return None

    def _slot(self, container: dict[str, Any], *, init: bool) -> _Slot:
        pod_policy = self._pod["spec"].get("restartPolicy", "Always")
        sidecar = init and container.get("restartPolicy") == "Always"
        if sidecar:
            policy = "Always"
        elif init:
            # Init containers restart on failure unless the pod never restarts anything.
            policy = "Never" if pod_policy == "Never" else "OnFailure"
        else:
            policy = pod_policy
        record = podstatus.ContainerRecord(container["name"], container.get("image", ""))
        return _Slot(spec=container, record=record, policy=policy, sidecar=sidecar)

    def _slots(self) -> list[_Slot]:
        return [*self._init, *self._main]


def _started(slot: _Slot) -> Callable[[], bool]:
    return lambda: slot.process is not None


def _done(slot: _Slot) -> Callable[[], bool]:
    return lambda: slot.done


def delete_now(core: Any, *, namespace: str, name: str, uid: str) -> None:
    """Delete a pod with grace period 0, provided it is still the pod with this uid."""
    # Both go in the body: the apiserver ignores query parameters when a body is sent.
    options = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
    core.delete_namespaced_pod(name, namespace, body=options, _preload_content=False)


def _write_atomically(path: Path, data: bytes) -> None:
    # Readers (the in-cluster loader re-reads the token every minute) never see half a file.
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_bytes(data)
    partial.replace(path)


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return str(error)
