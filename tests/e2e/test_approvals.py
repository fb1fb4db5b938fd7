"""Gated tool calls stop the run until a human decides, through spec.approvals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from agentrun.modelserver import ScriptedModelServer
from tests.e2e.marks import MarkServer
from tests.e2e.mcp_server import CalculatorMcpServer
from tests.e2e.runs import ROOT, Kubectl, eventually, manifest, wait_for_phase

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]


def gated_spec(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "prompt": "Use your tools.",
        "model": f"openai:{key}",
        "tools": [{"name": "shell"}, {"name": "read_file"}],
        **extra,
    }


def shell_call(command: str, call_id: str) -> dict[str, Any]:
    return {"id": call_id, "name": "shell", "arguments": {"command": command}}


def decide(kubectl: Kubectl, run: str, call_id: str, decision: str, **extra: Any) -> None:
    entry = {"toolCallId": call_id, "decision": decision, **extra}
    patch = [{"op": "add", "path": "/spec/approvals/-", "value": entry}]
    kubectl("patch", "agentrun", run, "--type", "json", "-p", json.dumps(patch))


def tool_results(request: dict[str, Any]) -> dict[str, str]:
    """Tool results in a recorded model request, by tool call id."""
    return {
        m["tool_call_id"]: m["content"] for m in request["body"]["messages"] if m["role"] == "tool"
    }


def last_request(server: ScriptedModelServer, key: str) -> dict[str, Any]:
    return [r for r in server.requests(key) if r["status"] == 200][-1]


def test_a_gated_call_waits_while_the_others_run_then_runs_once_when_approved(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, marks: MarkServer
) -> None:
    mark = f"{model_key}-ran"
    model_server.set_script(
        model_key,
        [
            {
                "tool_calls": [
                    shell_call(marks.command(mark), "call-shell"),
                    {"id": "call-read", "name": "read_file", "arguments": {"path": "missing.txt"}},
                ]
            },
            {"text": "All done."},
        ],
    )

    kubectl.apply(manifest("gated", gated_spec(model_key)))
    paused = wait_for_phase(kubectl, "gated", "AwaitingApproval")
    wide = kubectl("get", "agentrun", "gated", "-o", "wide").stdout.splitlines()
    ran_before = marks.count(mark)
    decide(kubectl, "gated", "call-shell", "Approve", approver="admin")
    run = wait_for_phase(kubectl, "gated", "Succeeded")

    final_results = tool_results(last_request(model_server, model_key))
    assert [p["toolCallId"] for p in paused["status"]["pendingApprovals"]] == ["call-shell"]
    assert wide[1].split()[-1] == "1"
    assert wide[0].split()[-1] == "PENDING"
    assert ran_before == 0
    assert marks.count(mark) == 1
    assert set(final_results) == {"call-shell", "call-read"}
    assert run["status"]["output"] == "All done."
    assert run["status"]["attempt"] == 2
    assert "ApprovalRequired" in [e["reason"] for e in kubectl.events("gated")]


def test_a_denied_call_reaches_the_model_with_its_reason(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, marks: MarkServer
) -> None:
    mark = f"{model_key}-denied"
    model_server.set_script(
        model_key,
        [{"tool_calls": [shell_call(marks.command(mark), "call-1")]}, {"text": "Understood."}],
    )

    kubectl.apply(manifest("denied", gated_spec(model_key)))
    wait_for_phase(kubectl, "denied", "AwaitingApproval")
    decide(kubectl, "denied", "call-1", "Deny", reason="not on a Friday")
    wait_for_phase(kubectl, "denied", "Succeeded")

    result = tool_results(last_request(model_server, model_key))["call-1"]
    assert "not on a Friday" in result
    assert marks.count(mark) == 0


def test_an_approval_with_arguments_runs_the_tool_with_them(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, marks: MarkServer
) -> None:
    proposed, replaced = f"{model_key}-proposed", f"{model_key}-replaced"
    model_server.set_script(
        model_key,
        [{"tool_calls": [shell_call(marks.command(proposed), "call-1")]}, {"text": "ok"}],
    )

    kubectl.apply(manifest("edited", gated_spec(model_key)))
    wait_for_phase(kubectl, "edited", "AwaitingApproval")
    edited = {"command": marks.command(replaced)}
    decide(kubectl, "edited", "call-1", "Approve", arguments=edited)
    wait_for_phase(kubectl, "edited", "Succeeded")

    assert marks.count(replaced) == 1
    assert marks.count(proposed) == 0


def test_a_run_resumes_only_once_every_pending_call_is_decided(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(
        model_key,
        [
            {"tool_calls": [shell_call("echo one", "call-a"), shell_call("echo two", "call-b")]},
            {"text": "both ran"},
        ],
    )
    kubectl.apply(manifest("pair", gated_spec(model_key)))
    wait_for_phase(kubectl, "pair", "AwaitingApproval")

    decide(kubectl, "pair", "call-a", "Approve")
    eventually(lambda: kubectl.run("pair")["status"].get("pendingCount") == 1, what="count 1")
    halfway = kubectl.run("pair")
    decide(kubectl, "pair", "call-b", "Approve")
    run = wait_for_phase(kubectl, "pair", "Succeeded")

    assert halfway["status"]["phase"] == "AwaitingApproval"
    assert halfway["status"]["attempt"] == 1
    assert run["status"]["attempt"] == 2
    assert set(tool_results(last_request(model_server, model_key))) == {"call-a", "call-b"}


def test_a_decision_for_an_unknown_call_is_ignored_with_a_warning(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(
        model_key, [{"tool_calls": [shell_call("true", "call-1")]}, {"text": "ok"}]
    )
    kubectl.apply(manifest("stray", gated_spec(model_key)))
    wait_for_phase(kubectl, "stray", "AwaitingApproval")

    decide(kubectl, "stray", "call-nobody-made", "Approve")
    decide(kubectl, "stray", "call-1", "Approve")
    wait_for_phase(kubectl, "stray", "Succeeded")

    warnings = [e for e in kubectl.events("stray") if e["type"] == "Warning"]
    assert any("call-nobody-made" in e["message"] for e in warnings)


@pytest.mark.parametrize(("on_timeout", "phase"), [("Deny", "Succeeded"), ("Fail", "Failed")])
def test_an_undecided_call_times_out_as_the_policy_says(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, on_timeout: str, phase: str
) -> None:
    model_server.set_script(
        model_key, [{"tool_calls": [shell_call("true", "call-1")]}, {"text": "ok"}]
    )
    policy = {"timeoutSeconds": 3, "onTimeout": on_timeout}

    kubectl.apply(manifest("slow-review", gated_spec(model_key, approvalPolicy=policy)))
    run = wait_for_phase(kubectl, "slow-review", phase)

    if on_timeout == "Deny":
        result = tool_results(last_request(model_server, model_key))["call-1"]
        assert "timed out" in result
    else:
        assert run["status"]["reason"] == "ApprovalTimeout"


@pytest.fixture
def approver_policy(kubectl: Kubectl) -> Iterator[None]:
    """deploy/approver-policy.yaml, bound to this test's namespace only (it is
    cluster-scoped, and other tests run beside this one)."""
    docs = [
        d for d in yaml.safe_load_all((ROOT / "deploy" / "approver-policy.yaml").read_text()) if d
    ]
    suffix = kubectl.namespace[-20:]
    applied = []
    for doc in docs:
        if doc["kind"] not in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            continue
        doc["metadata"]["name"] = f"{doc['metadata']['name']}-{suffix}"
        if doc["kind"] == "ValidatingAdmissionPolicyBinding":
            doc["spec"]["policyName"] = f"{doc['spec']['policyName']}-{suffix}"
            doc["spec"]["matchResources"] = {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": kubectl.namespace}
                }
            }
        kubectl.apply(doc)
        applied.append(doc)
    yield
    for doc in applied:
        kubectl("delete", doc["kind"], doc["metadata"]["name"], "--ignore-not-found", check=False)


def test_the_approver_policy_refuses_a_forged_approver(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, approver_policy: None
) -> None:
    kubectl("create", "role", "patcher", "--verb=get,patch", "--resource=agentruns.agentrun.dev")
    kubectl("create", "rolebinding", "bob-patches", "--role=patcher", "--user=bob")
    kubectl.apply(manifest("policed", {**gated_spec(model_key), "suspend": True}))

    def add(approver: str, call_id: str) -> Any:
        entry = {"toolCallId": call_id, "decision": "Approve", "approver": approver}
        patch = json.dumps([{"op": "add", "path": "/spec/approvals/-", "value": entry}])
        return eventually(
            lambda: kubectl(
                "patch",
                "agentrun",
                "policed",
                "--as",
                "bob",
                "--type",
                "json",
                "-p",
                patch,
                check=False,
            ),
            what="the patch to be answered",
        )

    def refused() -> Any:
        attempt = add("alice", f"call-{time.monotonic_ns()}")
        return attempt if attempt.returncode != 0 else None

    # A policy takes effect a moment after it is created, once the API server loads it.
    forged = eventually(refused, what="the policy to take effect")
    honest = add("bob", "call-2")

    assert "approver must equal the requesting user" in forged.stderr
    assert honest.returncode == 0, honest.stderr


def test_an_mcp_tool_runs_and_a_gated_one_waits_for_approval(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    with CalculatorMcpServer() as mcp:
        model_server.set_script(
            model_key,
            [
                {
                    "tool_calls": [
                        {"id": "c-add", "name": "calc_add", "arguments": {"a": 2, "b": 3}}
                    ]
                },
                {
                    "tool_calls": [
                        {"id": "c-wipe", "name": "calc_wipe", "arguments": {"folder": "/x"}}
                    ]
                },
                {"text": "2 + 3 = 5, and the folder is wiped."},
            ],
        )
        servers = [{"name": "calc", "url": mcp.url, "requireApproval": ["wipe"]}]
        spec = {"prompt": "Add 2 and 3.", "model": f"openai:{model_key}", "mcpServers": servers}

        kubectl.apply(manifest("mcp", spec))
        paused = wait_for_phase(kubectl, "mcp", "AwaitingApproval")
        calls_while_paused = list(mcp.calls)
        decide(kubectl, "mcp", "c-wipe", "Approve")
        wait_for_phase(kubectl, "mcp", "Succeeded")

    first_results = tool_results(
        next(r for r in model_server.requests(model_key) if r["turn"] == 1)
    )
    assert first_results["c-add"] == "5"
    assert [p["toolName"] for p in paused["status"]["pendingApprovals"]] == ["calc_wipe"]
    assert calls_while_paused == [("add", {"a": 2, "b": 3})]
    final = tool_results(last_request(model_server, model_key))
    assert final["c-wipe"] == "wiped /x", final
    assert mcp.calls == [("add", {"a": 2, "b": 3}), ("wipe", {"folder": "/x"})]


def test_an_unreachable_mcp_server_fails_the_attempt_naming_it(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(model_key, [{"text": "never"}])
    servers = [{"name": "ghost", "url": "http://127.0.0.1:9/mcp"}]
    spec = {"prompt": "hi", "model": f"openai:{model_key}", "mcpServers": servers,
            "retry": {"maxAttempts": 1}}  # fmt: skip

    kubectl.apply(manifest("unreachable", spec))
    run = wait_for_phase(kubectl, "unreachable", "Failed")

    assert run["status"]["reason"] == "McpServerUnreachable"
    assert "MCP server ghost could not be reached" in run["status"]["message"]
