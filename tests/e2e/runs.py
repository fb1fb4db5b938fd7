"""Helpers of the end-to-end tests: kubectl bound to a test's namespace, AgentRun manifests,
and waiting for what the operator does."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / "bin" / "kubectl"

T = TypeVar("T")


class Kubectl:
    """`kubectl` with the test cluster's kubeconfig and the test's namespace."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    def __call__(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def apply(self, obj: dict[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("apply", "-f", "-", stdin=yaml.safe_dump(obj), check=check)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def run(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.json("get", "agentrun", name)
        return result

    def events(self, name: str) -> list[dict[str, Any]]:
        found = self.json("get", "events", "--field-selector", f"involvedObject.name={name}")
        items: list[dict[str, Any]] = found["items"]
        return sorted(items, key=lambda e: e.get("firstTimestamp") or "")


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name},
        "spec": spec,
    }


def eventually(probe: Callable[[], T | None], *, timeout: float = 120, what: str = "") -> T:
    """Poll `probe` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None and last is not False:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}; last: {last!r}")


def wait_for_phase(
    kubectl: Kubectl, name: str, phase: str, *, timeout: float = 180
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        run = kubectl.run(name)
        return run if (run.get("status") or {}).get("phase") == phase else None

    return eventually(probe, timeout=timeout, what=f"AgentRun {name} to reach {phase}")
