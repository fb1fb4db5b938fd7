"""hack/cluster-up.sh and hack/cluster-down.sh, as `make cluster-up` and `cluster-down` run them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from localcluster import processes
from tests.cluster_fixtures import Kubectl, wait_until

pytestmark = pytest.mark.e2e

HACK = Path(__file__).resolve().parents[2] / "hack"


def _run(script: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HACK / script)],
        env={**os.environ, "LOCALCLUSTER_STATE": str(state)},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )


def _sleeper_pid(kubectl: Kubectl) -> int | None:
    statuses = kubectl.json("get", "pod", "sleeper")["status"].get("containerStatuses") or []
    running = [s for s in statuses if "running" in s["state"]]
    return int(running[0]["containerID"].removeprefix("process://")) if running else None


def test_cluster_down_leaves_no_process_running_and_a_second_up_works(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _run("cluster-up.sh", state)
    try:
        kubectl = Kubectl(state / "kubeconfig", "default")
        kubectl("run", "sleeper", "--image=busybox", "--restart=Never", "--command", "--",
                "python3", "-c", "import time; time.sleep(3600)")  # fmt: skip
        pod_pid = wait_until(lambda: _sleeper_pid(kubectl), what="the sleeper pod to run")
        ours = [int(line.split()[1]) for line in (state / "pids").read_text().splitlines()]

        _run("cluster-down.sh", state)
        left_running = [pid for pid in [*ours, pod_pid] if processes.alive(pid)]
        _run("cluster-up.sh", state)
        readyz = Kubectl(state / "kubeconfig")("get", "--raw", "/readyz")
    finally:
        _run("cluster-down.sh", state)

    assert len(ours) == 4
    assert left_running == []
    assert readyz.stdout.strip() == "ok"
