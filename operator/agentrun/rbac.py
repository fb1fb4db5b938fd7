"""The ServiceAccount, Role and RoleBinding each run's pods act as.

Called by `controller` before a run's first attempt. The Role reaches only the run's
own AgentRun (read) and its own checkpoint ConfigMaps (read and write), named one by
one: a runner cannot read another run's history.
"""

from __future__ import annotations

from typing import Any

from agentrun import api, checkpoint, jobs, names

__all__ = ["objects"]


def objects(*, run_name: str, run_uid: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of a run, in the order they must exist."""
    name = names.service_account(run_name)
    meta = {
        "name": name,
        "labels": jobs.labels(run_name=run_name, run_uid=run_uid),
        "ownerReferences": [jobs.owner_reference(run_name=run_name, run_uid=run_uid)],
    }
    own_configmaps = [names.checkpoint_index(run_name), *checkpoint.segment_names(run_name)]
    rules = [
        {
            "apiGroups": [api.GROUP],
            "resources": [api.PLURAL],
            "resourceNames": [run_name],
            "verbs": ["get"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": own_configmaps,
            "verbs": ["get", "update", "patch"],
        },
        # RBAC cannot limit create to names (the name is not known before the request),
        # so the runner may create ConfigMaps; it can still read and change only its own.
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta,
            "automountServiceAccountToken": True,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name}],
        },
    ]
