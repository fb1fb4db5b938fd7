"""The Node the process-kubelet registers, and the heartbeat that keeps it Ready.

Called by kubelet.py: register() once at start, heartbeat() about every ten seconds
from its own thread. The heartbeat renews the node's Lease in kube-node-lease, as a
real kubelet does, and refreshes the Ready condition's lastHeartbeatTime.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from localcluster import podstatus

__all__ = ["LEASE_NAMESPACE", "Node"]

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
MAX_PODS = 110


class Node:
    """One node, registered through the admin's API clients (core and coordination)."""

    def __init__(
        self,
        *,
        core: Any,
        coordination: Any,
        name: str,
        port: int,
        version: str,
        state_dir: Path,
    ) -> None:
        self.name = name
        self._version = version
        self._core = core
        self._coordination = coordination
        self._port = port
        self._state_dir = state_dir
        self._since = podstatus.now()
        self._uid = ""

    def register(self) -> None:
        """Create the Node (or take over an existing one) and report it Ready."""
        metadata = {"name": self.name, "labels": _labels(self.name)}
        try:
            self._core.create_node({"metadata": metadata}, _preload_content=False)
        except ApiException as error:
            if error.status != 409:
                raise
        # The TaintNodesByCondition admission plugin taints a new Node not-ready, and only
        # the node lifecycle controller (not run here) would lift it. Pods are bound
        # without a scheduler, but kubectl describe should not show a stale taint.
        answer = self._core.patch_node(
            self.name, {"spec": {"taints": None}}, _preload_content=False
        )
        self._uid = json.loads(answer.data)["metadata"]["uid"]
        self._core.patch_node_status(self.name, {"status": self._status()}, _preload_content=False)
        self.heartbeat()

    def heartbeat(self) -> None:
        """Renew the Lease and the conditions' heartbeat times."""
        try:
            self._renew_lease()
        except ApiException as error:
            if error.status != 404:
                raise
            self._create_lease()
            self._renew_lease()
        self._core.patch_node_status(
            self.name, {"status": {"conditions": self._conditions()}}, _preload_content=False
        )

    def _renew_lease(self) -> None:
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": _micro_now(),
        }
        self._coordination.patch_namespaced_lease(
            self.name, LEASE_NAMESPACE, {"spec": spec}, _preload_content=False
        )

    def _create_lease(self) -> None:
        owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._uid}
        body = {
            "metadata": {
                "name": self.name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [owner],
            },
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS},
        }
        # renewTime is left to the patch that follows: the typed create serialises a
        # datetime without its fraction when that is zero, which the apiserver refuses.
        self._coordination.create_namespaced_lease(LEASE_NAMESPACE, body, _preload_content=False)

    def _conditions(self) -> list[dict[str, str]]:
        beat = podstatus.now()

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": beat, "lastTransitionTime": self._since,
            }  # fmt: skip

        return [
            condition("Ready", "True", "KubeletReady", "process-kubelet is posting ready status"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no pressure"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "no pressure"),
        ]

    def _status(self) -> dict[str, Any]:
        capacity = _capacity(self._state_dir)
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": self._conditions(),
            "addresses": [
                {"type": "InternalIP", "address": podstatus.HOST_IP},
                {"type": "Hostname", "address": self.name},
            ],
            # The apiserver reaches the kubelet's log server here (kubectl logs).
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._port}},
            "nodeInfo": {
                "machineID": _machine_id(),
                "systemUUID": _machine_id(),
                "bootID": _boot_id(),
                "kernelVersion": platform.release(),
                "osImage": "process-kubelet (containers run as host processes)",
                "containerRuntimeVersion": "process://",
                "kubeletVersion": self._version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _architecture(),
            },
        }


def _labels(name: str) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": _architecture(),
    }


def _capacity(state_dir: Path) -> dict[str, str]:
    memory_kib = "0"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = line.split()[1]
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib}Ki",
        "pods": str(MAX_PODS),
        "ephemeral-storage": str(shutil.disk_usage(state_dir).total),
    }


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        return "unknown"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _micro_now() -> str:
    # MicroTime wants exactly six fractional digits.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
