"""The API server enforces the AgentRun schema: bad manifests are refused, naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.runs import Kubectl, manifest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"model": "openai:m"}, "spec.prompt"),
        ({"prompt": "", "model": "openai:m"}, "spec.prompt"),
        ({"prompt": "hi", "model": ""}, "spec.model"),
        (
            {"prompt": "hi", "model": "openai:m", "limits": {"maxRequests": 0}},
            "spec.limits.maxRequests",
        ),
        (
            {"prompt": "hi", "model": "openai:m", "limits": {"maxTotalTokens": -5}},
            "spec.limits.maxTotalTokens",
        ),
        ({"prompt": "hi", "model": "openai:m", "tools": [{"name": "rm_rf"}]}, "spec.tools[0].name"),
        (
            {
                "prompt": "hi",
                "model": "openai:m",
                "approvals": [{"toolCallId": "c1", "decision": "Maybe"}],
            },
            "spec.approvals[0].decision",
        ),
        (
            {
                "prompt": "hi",
                "model": "openai:m",
                "limits": {"timeoutSeconds": 5, "toolTimeoutSeconds": 9},
            },
            "spec.limits.toolTimeoutSeconds",
        ),
    ],
)
def test_an_invalid_run_is_refused_with_the_field_named(
    kubectl: Kubectl, spec: dict[str, Any], named: str
) -> None:
    result = kubectl.apply(manifest("bad", spec), check=False)

    assert result.returncode != 0
    assert named in result.stderr


def test_explain_describes_the_limits(kubectl: Kubectl) -> None:
    result = kubectl("explain", "agentrun.spec.limits")

    assert "maxRequests" in result.stdout
    assert "Most model requests over the run" in result.stdout
    assert "toolTimeoutSeconds" in result.stdout


@pytest.mark.parametrize(
    ("path", "value"),
    [("/spec/prompt", "something else"), ("/spec/model", "openai:other")],
)
def test_prompt_and_model_cannot_change_once_the_run_exists(
    kubectl: Kubectl, path: str, value: str
) -> None:
    kubectl.apply(manifest("fixed", {"prompt": "hi", "model": "openai:m", "suspend": True}))

    patch = json.dumps([{"op": "replace", "path": path, "value": value}])
    result = kubectl("patch", "agentrun", "fixed", "--type", "json", "-p", patch, check=False)

    assert result.returncode != 0
    assert "immutable" in result.stderr


def test_a_decided_approval_can_be_neither_changed_nor_removed(kubectl: Kubectl) -> None:
    spec = {
        "prompt": "hi",
        "model": "openai:m",
        "suspend": True,
        "approvals": [{"toolCallId": "c1", "decision": "Approve"}],
    }
    kubectl.apply(manifest("decided", spec))

    changed = kubectl(
        "patch",
        "agentrun",
        "decided",
        "--type",
        "merge",
        "-p",
        json.dumps({"spec": {"approvals": [{"toolCallId": "c1", "decision": "Deny"}]}}),
        check=False,
    )
    dropped = kubectl(
        "patch",
        "agentrun",
        "decided",
        "--type",
        "merge",
        "-p",
        json.dumps({"spec": {"approvals": []}}),
        check=False,
    )
    appended = kubectl(
        "patch",
        "agentrun",
        "decided",
        "--type",
        "json",
        "-p",
        json.dumps(
            [
                {
                    "op": "add",
                    "path": "/spec/approvals/-",
                    "value": {"toolCallId": "c2", "decision": "Deny", "reason": "no"},
                }
            ]
        ),
        check=False,
    )

    assert changed.returncode != 0
    assert "a decided approval cannot be changed" in changed.stderr
    assert dropped.returncode != 0
    assert "append-only" in dropped.stderr
    assert appended.returncode == 0, appended.stderr
