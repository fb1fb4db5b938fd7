"""Pod and container status documents, built from what the runner observed.

Pure functions and small records, called by podrunner.py (live pods) and kubelet.py
(pods whose processes were lost in a kubelet restart). The shapes follow the pod status
a real kubelet writes, because the Job controller and kubectl read them: exit codes,
reasons, times and the Ready condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "HOST_IP",
    "Conditions",
    "ContainerRecord",
    "exit_details",
    "lost_status",
    "now",
    "pod_status",
    "running",
    "terminated",
    "waiting",
]

HOST_IP = "127.0.0.1"
"""The node's address and every pod's: pods share the host's network."""

State = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def waiting(reason: str, message: str = "") -> State:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def running(started_at: str) -> State:
    return {"running": {"startedAt": started_at}}


def terminated(
    *,
    exit_code: int,
    started_at: str,
    reason: str = "",
    message: str = "",
    signal: int | None = None,
    container_id: str = "",
) -> State:
    """A terminated state; reason defaults to Completed (exit 0) or Error."""
    state: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": now(),
    }
    if message:
        state["message"] = message
    if signal is not None:
        state["signal"] = signal
    if container_id:
        state["containerID"] = container_id
    return {"terminated": state}


def exit_details(returncode: int) -> tuple[int, int | None]:
    """(exit code, signal) from a Popen return code, with the shell's 128+N convention."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


@dataclass
class ContainerRecord:
    """What the runner knows of one container, in the API's terms."""

    name: str
    image: str
    state: State = field(default_factory=lambda: waiting("ContainerCreating"))
    last_state: State = field(default_factory=dict)
    restart_count: int = 0
    container_id: str = ""
    """process://PID of the current or last process."""

    @property
    def is_running(self) -> bool:
        return "running" in self.state

    def exit_code(self) -> int | None:
        return self.state["terminated"]["exitCode"] if "terminated" in self.state else None

    def as_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            # No image is pulled; the id says so rather than pretending a digest.
            "imageID": f"process://{self.image}",
            "ready": self.is_running,
            "started": self.is_running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


class Conditions:
    """The pod's conditions, keeping each one's transition time while it holds."""

    def __init__(self) -> None:
        self._conditions: dict[str, dict[str, str | None]] = {}

    def set(self, kind: str, ok: bool, reason: str = "", message: str = "") -> None:
        status = "True" if ok else "False"
        previous = self._conditions.get(kind)
        held = previous is not None and previous["status"] == status
        self._conditions[kind] = {
            "type": kind,
            "status": status,
            "lastTransitionTime": previous["lastTransitionTime"] if previous and held else now(),
            # Conditions are merged by type in a strategic merge patch: null removes a
            # reason or message that no longer applies.
            "reason": reason or None,
            "message": message or None,
        }

    def as_list(self) -> list[dict[str, str | None]]:
        return list(self._conditions.values())


def pod_status(
    *,
    phase: str,
    start_time: str,
    initialized: bool,
    conditions: Conditions,
    init_containers: list[ContainerRecord],
    containers: list[ContainerRecord],
    reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    """The status document for pods/status, conditions updated from the records."""
    not_ready = [record.name for record in containers if not record.is_running]
    conditions.set("PodScheduled", True)
    conditions.set("Initialized", initialized, "" if initialized else "ContainersNotInitialized")
    if phase == "Succeeded":
        ready_reason, ready_message = "PodCompleted", ""
    elif not_ready:
        ready_reason = "ContainersNotReady"
        ready_message = f"containers with unready status: [{' '.join(not_ready)}]"
    else:
        ready_reason, ready_message = "", ""
    for kind in ("ContainersReady", "Ready"):
        conditions.set(kind, not not_ready, ready_reason, ready_message)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions.as_list(),
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": HOST_IP,
        "podIPs": [{"ip": HOST_IP}],
        "startTime": start_time,
        "containerStatuses": [record.as_status() for record in containers],
    }
    if init_containers:
        status["initContainerStatuses"] = [record.as_status() for record in init_containers]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status


def lost_status(pod: dict[str, Any]) -> dict[str, Any]:
    """Failed, every container terminated: the kubelet restarted and its processes are gone.

    Mirrors what a real kubelet reports for a container it can no longer find.
    """
    previous = pod.get("status") or {}
    started = previous.get("startTime") or now()

    def lost(container: dict[str, Any]) -> ContainerRecord:
        state = terminated(
            exit_code=137,
            started_at=started,
            reason="ContainerStatusUnknown",
            message="The container could not be located when the pod was terminated",
        )
        return ContainerRecord(container["name"], container.get("image", ""), state=state)

    spec = pod["spec"]
    return pod_status(
        phase="Failed",
        start_time=started,
        initialized=False,
        conditions=Conditions(),
        init_containers=[lost(c) for c in spec.get("initContainers") or []],
        containers=[lost(c) for c in spec["containers"]],
        reason="ProcessesLost",
        message="The process-kubelet restarted and this pod's processes were gone.",
    )
