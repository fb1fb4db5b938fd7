"""Benchmarks of the runner against a real API server: checkpoint write volume, cold start.

    python -m tests.runner.bench [--kubeconfig PATH] [--steps 200]

Without --kubeconfig (or KUBECONFIG) it starts a local control plane in a temporary
folder (hack/localcluster) and stops it afterwards. It prints:

- write amplification over a scripted run of `--steps` steps (a tool call and its result
  per model turn, each tool reading a different slice of this repository's source, 2 KiB
  unless --slice says otherwise):
  the bytes of every checkpoint request (JSON bodies, chunks in base64, the record of each
  step) and of the history chunks alone, each divided by the history's stored
  (compressed) bytes;
- cold start: seconds from the runner's process start to its first model request, the
  runner holding a ServiceAccount token as in a pod.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from agentrun import kube
from agentrun.modelserver import ScriptedModelServer
from tests.runner.conftest import KUBECTL, ROOT, Runners

SLICE = 2048
WRITES = re.compile(
    r"in (\d+) requests of (\d+) bytes in all, (\d+) of them to segments, carrying (\d+) "
    r"bytes of history chunks; the history is (\d+) bytes compressed in (\d+) segments"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("KUBECONFIG")
    parser.add_argument("--kubeconfig", type=Path, default=Path(default) if default else None)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--slice", type=int, default=SLICE, help="bytes each tool returns")
    parser.add_argument("--starts", type=int, default=5, help="cold starts to measure")
    args = parser.parse_args(argv)
    with cluster(args.kubeconfig) as kubeconfig, ScriptedModelServer() as model:
        subprocess.run(
            [
                str(KUBECTL),
                "--kubeconfig",
                str(kubeconfig),
                "apply",
                "--server-side",
                "-f",
                str(ROOT / "crds"),
            ],
            check=True,
            capture_output=True,
        )
        with tempfile.TemporaryDirectory() as folder:
            runners = _runners(kubeconfig, model, Path(folder))
            write_amplification(runners, steps=args.steps, size=args.slice)
            cold_start(runners, starts=args.starts)


@contextlib.contextmanager
def cluster(kubeconfig: Path | None) -> Iterator[Path]:
    if kubeconfig is not None:
        yield kubeconfig
        return
    sys.path.insert(0, str(ROOT / "hack"))
    from localcluster import cluster as localcluster

    with tempfile.TemporaryDirectory() as state:
        started = localcluster.start(Path(state))
        try:
            yield started.kubeconfig
        finally:
            localcluster.stop(Path(state))


def _runners(kubeconfig: Path, model: ScriptedModelServer, workspace: Path) -> Runners:
    os.environ["KUBECONFIG"] = str(kubeconfig)
    api_client = client.ApiClient(kube.load_config())
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    meta = client.V1ObjectMeta(name=namespace)
    client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=meta))
    return Runners(
        api_client=api_client,
        kubeconfig=kubeconfig,
        namespace=namespace,
        model=model,
        workspace=workspace,
    )


def write_amplification(runners: Runners, *, steps: int, size: int) -> None:
    source = b"".join(path.read_bytes() for path in sorted((ROOT / "operator").rglob("*.py")))
    turns: list[dict[str, Any]] = []
    for number in range(steps // 2):
        start = (number * size) % max(1, len(source) - size)
        (runners.workspace / f"slice{number}.py").write_bytes(source[start : start + size])
        call = {"name": "read_file", "arguments": {"path": f"slice{number}.py"}}
        turns.append({"tool_calls": [call]})
    turns.append({"text": "Read them all."})
    run = runners.create(
        f"amplification-{size}",
        turns=turns,
        tools=[{"name": "read_file"}],
        limits={"maxRequests": steps},
    )

    exited = runners.run(run, 1, timeout=600)

    found = WRITES.search(exited.output)
    if exited.code != 0 or found is None:
        raise SystemExit(f"The run failed ({exited.code}):\n{exited.output[-3000:]}")
    requests, request_bytes, segment_bytes, chunk_bytes, stored, segments = map(int, found.groups())
    record = runners.record(run)
    raw = sum(segment.raw_bytes for segment in record.segments)
    print(f"Scripted run of {record.step} steps, {record.messages} messages:")
    print(f"  history: {raw} bytes of JSON, {stored} bytes compressed in {segments} segment(s)")
    print(f"  checkpoint writes: {requests} requests, {request_bytes} bytes in all")
    print(f"  history chunks written / stored: {chunk_bytes / stored:.2f}")
    print(f"  segment request bytes (base64, JSON) / stored: {segment_bytes / stored:.2f}")
    print(f"  all checkpoint request bytes / stored: {request_bytes / stored:.2f}")
    per_step = request_bytes / record.step
    print(f"  per step: {per_step:.0f} request bytes, {stored / record.step:.0f} stored")


def cold_start(runners: Runners, *, starts: int) -> None:
    """Each runner started as its pod would be: the run's ServiceAccount token, its Role."""
    seconds = []
    for number in range(starts):
        run = runners.create(f"cold-{number}", turns=[{"text": "hi"}])
        credentials = runners.pod_credentials(run, runners.workspace / f".serviceaccount-{number}")
        began = datetime.now(UTC)
        exited = runners.wait(runners.start(run, 1, credentials=credentials))
        if exited.code != 0:
            raise SystemExit(f"The run failed ({exited.code}):\n{exited.output[-3000:]}")
        first = datetime.fromisoformat(runners.requests(run)[0]["time"])
        seconds.append((first - began).total_seconds())
    median = statistics.median(seconds)
    print(
        f"Cold start, process start to first model request: median {median:.2f} s "
        f"(min {min(seconds):.2f}, max {max(seconds):.2f}, {starts} starts)"
    )


if __name__ == "__main__":
    main()
