"""Manifests the cluster tests apply: Jobs and pods whose containers run Python.

The process-kubelet ignores images and runs each command on the host, where `python3`
is the project's virtualenv Python (first on the PATH it gives pods).
"""

from __future__ import annotations

from typing import Any

__all__ = ["job", "pod_spec"]

Manifest = dict[str, Any]


def pod_spec(
    script: str,
    *,
    env: list[dict[str, Any]] | None = None,
    restart_policy: str = "Never",
    **extra: Any,
) -> Manifest:
    """A pod spec with one container running `python3 -c script`."""
    container = {
        "name": "main",
        "image": "python:3.12-slim",
        "command": ["python3", "-c", script],
        "env": env or [],
    }
    return {"restartPolicy": restart_policy, "containers": [container], **extra}


def job(
    name: str,
    script: str,
    *,
    env: list[dict[str, Any]] | None = None,
    backoff_limit: int = 6,
    owner: Manifest | None = None,
) -> Manifest:
    """A Job of one pod running script; owner (an object as read back) owns it."""
    metadata: Manifest = {"name": name}
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
            }
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {"spec": pod_spec(script, env=env)},
        },
    }
