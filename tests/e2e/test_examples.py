"""Every manifest under examples/ is a valid AgentRun, and each one runs to its end.

01-minimal runs as it is written in test_runs.py. The others run with two changes: the
model is the test's own script key, so that the scripted model's record holds this
test's requests alone, and addresses that only exist in a user's cluster (the MCP server,
the provider's endpoint) point at this session's servers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentrun.modelserver import ScriptedModelServer
from tests.e2e.mcp_server import CalculatorMcpServer
from tests.e2e.runs import ROOT, Kubectl, wait_for_phase

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]

EXAMPLES = ROOT / "examples"


def example(name: str, model_key: str) -> dict[str, Any]:
    run: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    run["spec"]["model"] = f"openai:{model_key}"
    return run


def tool_results(server: ScriptedModelServer, key: str) -> dict[str, str]:
    """The tool results in the last request the model answered, by tool call id."""
    last = [r for r in server.requests(key) if r["status"] == 200][-1]
    return {
        m["tool_call_id"]: m["content"] for m in last["body"]["messages"] if m["role"] == "tool"
    }


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_each_example_is_accepted_by_the_api_server(kubectl: Kubectl, path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]

    applied = kubectl("apply", "--dry-run=server", "-f", str(path), check=False)

    assert applied.returncode == 0, applied.stderr
    assert [d["kind"] for d in docs] == ["AgentRun"]


def test_the_approval_example_waits_for_the_shell_and_succeeds_once_approved(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    command = {"command": "printf hello > hello.txt && cat hello.txt"}
    model_server.set_script(
        model_key,
        [
            {"tool_calls": [{"id": "call-1", "name": "shell", "arguments": command}]},
            {"text": "hello.txt says hello."},
        ],
    )

    kubectl.apply(example("02-approval.yaml", model_key))
    paused = wait_for_phase(kubectl, "approval", "AwaitingApproval")
    kubectl("patch", "agentrun", "approval", "--type", "json", "-p",
            '[{"op":"add","path":"/spec/approvals/-",'
            '"value":{"toolCallId":"call-1","decision":"Approve"}}]')  # fmt: skip
    run = wait_for_phase(kubectl, "approval", "Succeeded")

    assert [p["toolName"] for p in paused["status"]["pendingApprovals"]] == ["shell"]
    assert "hello" in tool_results(model_server, model_key)["call-1"]
    assert run["status"]["output"] == "hello.txt says hello."


def test_the_limits_example_succeeds_within_its_bounds(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(
        model_key,
        [
            {"tool_calls": [{"id": "call-1", "name": "list_files", "arguments": {}}]},
            {"text": "There is nothing to read."},
        ],
    )

    kubectl.apply(example("03-limits.yaml", model_key))
    run = wait_for_phase(kubectl, "limits", "Succeeded")

    assert run["status"]["requests"] == 2
    assert run["status"]["requests"] <= run["spec"]["limits"]["maxRequests"]
    assert run["status"]["output"] == "There is nothing to read."


def test_the_mcp_example_adds_with_the_server_and_wipes_only_once_approved(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(
        model_key,
        [
            {"tool_calls": [{"id": "c-add", "name": "calc_add", "arguments": {"a": 2, "b": 3}}]},
            {
                "tool_calls": [
                    {"id": "c-wipe", "name": "calc_wipe", "arguments": {"folder": "/scratch"}}
                ]
            },
            {"text": "5, and /scratch is wiped."},
        ],
    )

    with CalculatorMcpServer() as mcp:
        run = example("04-mcp.yaml", model_key)
        run["spec"]["mcpServers"][0]["url"] = mcp.url
        kubectl.apply(run)
        wait_for_phase(kubectl, "mcp", "AwaitingApproval")
        calls_while_paused = list(mcp.calls)
        kubectl("patch", "agentrun", "mcp", "--type", "json", "-p",
                '[{"op":"add","path":"/spec/approvals/-",'
                '"value":{"toolCallId":"c-wipe","decision":"Approve"}}]')  # fmt: skip
        done = wait_for_phase(kubectl, "mcp", "Succeeded")

    assert calls_while_paused == [("add", {"a": 2, "b": 3})]
    assert mcp.calls[-1] == ("wipe", {"folder": "/scratch"})
    assert done["status"]["output"] == "5, and /scratch is wiped."


def test_the_provider_example_sends_the_key_from_its_secret(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    kubectl("create", "secret", "generic", "model-key", "--from-literal=api-key=sk-example")
    model_server.set_script(model_key, [{"text": "Batch work, migrations, backups."}])

    run = example("05-provider.yaml", model_key)
    run["spec"]["provider"]["baseURL"] = model_server.base_url
    kubectl.apply(run)
    done = wait_for_phase(kubectl, "provider", "Succeeded")

    sent = [r["api_key_sha256"] for r in model_server.requests(model_key)]
    assert sent == [hashlib.sha256(b"sk-example").hexdigest()]
    assert done["status"]["output"] == "Batch work, migrations, backups."
