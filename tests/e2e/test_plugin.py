"""`kubectl agentrun` against the control plane: list, approve, deny, history, logs, watch.

The plugin runs as the installed console script in a subprocess, with the admin's
kubeconfig and the test's namespace, and once through `kubectl agentrun` as users run
it. Each run's scripted model calls `shell`, which waits for approval by default, so the
run pauses in AwaitingApproval before the plugin acts on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentrun.modelserver import ScriptedModelServer
from tests.e2e.runs import KUBECTL, Kubectl, eventually, manifest, wait_for_phase

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]

BIN = Path(sys.executable).parent
PLUGIN = BIN / "kubectl-agentrun"


def plugin(
    kubectl: Kubectl, *args: str, kubeconfig: Path | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The plugin as a user runs it, against the test's namespace; stdin is not a TTY."""
    return subprocess.run(
        [
            str(PLUGIN),
            "--kubeconfig",
            str(kubeconfig or kubectl.kubeconfig),
            "-n",
            kubectl.namespace,
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def paused_run(
    kubectl: Kubectl, server: ScriptedModelServer, key: str, name: str, *, calls: int = 1
) -> dict[str, Any]:
    """A run whose model asks for `calls` shell commands, then answers; paused on them."""
    commands = [
        {"name": "shell", "arguments": {"command": f"echo shell-{n}"}} for n in range(calls)
    ]
    server.set_script(key, [{"tool_calls": commands}, {"text": "Done."}])
    spec = {
        "prompt": "Say hello from a shell.",
        "model": f"openai:{key}",
        "tools": [{"name": "shell"}],
    }
    kubectl.apply(manifest(name, spec))
    return wait_for_phase(kubectl, name, "AwaitingApproval")


def tool_messages(server: ScriptedModelServer, key: str) -> list[dict[str, Any]]:
    """The tool results of the last request the model received."""
    last = [r for r in server.requests(key) if r["status"] == 200][-1]
    return [m for m in last["body"]["messages"] if m["role"] == "tool"]


def test_list_shows_a_paused_run_with_its_pending_call(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    run = paused_run(kubectl, model_server, model_key, "paused")

    listed = plugin(kubectl, "list")

    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "PENDING", "REQUESTS", "TOKENS", "ATTEMPT", "AGE"]
    tokens = str(run["status"]["usage"]["totalTokens"])
    assert row.split()[:6] == ["paused", "AwaitingApproval", "1", "1", tokens, "1"]


def test_approve_resumes_the_run_and_the_shell_runs_once(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    paused_run(kubectl, model_server, model_key, "approved")
    whoami = kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout

    approved = plugin(kubectl, "approve", "approved", "--reason", "harmless", "--yes")
    run = wait_for_phase(kubectl, "approved", "Succeeded")

    assert approved.returncode == 0, approved.stderr
    assert approved.stdout == (
        "Pending calls on run approved:\n"
        '  shell (call_0_0): {"command":"echo shell-0"}\n'
        "Approved shell (call_0_0) on run approved.\n"
    )
    assert run["spec"]["approvals"] == [
        {"toolCallId": "call_0_0", "decision": "Approve", "reason": "harmless", "approver": whoami}
    ]
    results = tool_messages(model_server, model_key)
    assert [m["tool_call_id"] for m in results] == ["call_0_0"]
    assert "shell-0" in results[0]["content"]
    assert run["status"]["output"] == "Done."


def test_approve_with_replaced_arguments_runs_the_new_command(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    paused_run(kubectl, model_server, model_key, "replaced")

    approved = plugin(
        kubectl, "approve", "replaced", "call_0_0", "--args", '{"command": "echo replaced"}'
    )
    wait_for_phase(kubectl, "replaced", "Succeeded")

    assert approved.returncode == 0, approved.stderr
    assert approved.stdout == (
        'Approved shell (call_0_0) on run replaced with arguments {"command": "echo replaced"}.\n'
    )
    content = tool_messages(model_server, model_key)[0]["content"]
    assert "replaced" in content
    assert "shell-0" not in content


def test_deny_with_a_reason_reaches_the_model_and_the_run_succeeds(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    paused_run(kubectl, model_server, model_key, "denied", calls=2)

    first = plugin(kubectl, "deny", "denied", "call_0_1", "--reason", "Not today.")
    still = kubectl.run("denied")
    second = plugin(kubectl, "approve", "denied", "call_0_0")
    wait_for_phase(kubectl, "denied", "Succeeded")

    assert first.stdout == "Denied shell (call_0_1) on run denied.\n"
    assert still["status"]["phase"] == "AwaitingApproval"
    assert second.stdout == "Approved shell (call_0_0) on run denied.\n"
    results = {m["tool_call_id"]: m["content"] for m in tool_messages(model_server, model_key)}
    assert "Not today." in results["call_0_1"]
    assert "shell-0" in results["call_0_0"]


def test_wrong_run_or_call_ids_exit_1_with_one_line_and_decide_nothing(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    paused_run(kubectl, model_server, model_key, "careful")

    no_run = plugin(kubectl, "approve", "nope")
    no_call = plugin(kubectl, "approve", "careful", "call_9")
    plugin(kubectl, "approve", "careful", "call_0_0")
    decided = plugin(kubectl, "deny", "careful", "call_0_0", "--reason", "late")

    assert (no_run.returncode, no_run.stderr) == (
        1,
        f"error: AgentRun nope not found in namespace {kubectl.namespace}.\n",
    )
    assert (no_call.returncode, no_call.stderr) == (
        1,
        "error: On run careful, 'call_9' is not a pending call. Pending: call_0_0 (shell).\n",
    )
    assert decided.returncode == 1
    assert decided.stderr.count("\n") == 1
    assert "no pending calls" in decided.stderr or "already decided (Approve" in decided.stderr
    assert [a["decision"] for a in kubectl.run("careful")["spec"]["approvals"]] == ["Approve"]


def test_a_reviewer_without_rights_gets_the_api_servers_refusal_in_one_line(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, tmp_path: Path
) -> None:
    paused_run(kubectl, model_server, model_key, "guarded")
    reader = _reader_kubeconfig(kubectl, tmp_path)

    listed = plugin(kubectl, "list", kubeconfig=reader)
    refused = plugin(kubectl, "approve", "guarded", "call_0_0", kubeconfig=reader)

    assert listed.returncode == 0, listed.stderr
    assert refused.returncode == 1
    assert refused.stderr.startswith('error: agentruns.agentrun.dev "guarded" is forbidden: User ')
    assert refused.stderr.count("\n") == 1
    assert kubectl.run("guarded")["spec"].get("approvals", []) == []


def test_history_shows_the_conversation_from_the_checkpoint(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    paused_run(kubectl, model_server, model_key, "told")
    plugin(kubectl, "approve", "told", "call_0_0")
    wait_for_phase(kubectl, "told", "Succeeded")

    readable = plugin(kubectl, "history", "told")
    raw = plugin(kubectl, "history", "told", "--json")

    assert readable.returncode == 0, readable.stderr
    assert readable.stdout.startswith("user\n  Say hello from a shell.\n\nassistant\n")
    assert '  -> shell (call_0_0) {"command": "echo shell-0"}\n' in readable.stdout
    assert "\ntool shell (call_0_0)\n" in readable.stdout
    assert "  shell-0\n" in readable.stdout
    assert readable.stdout.endswith("assistant\n  Done.\n")
    messages = json.loads(raw.stdout)
    assert [m["kind"] for m in messages] == ["request", "response", "request", "response"]


def test_logs_print_each_attempts_runner_log(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    paused_run(kubectl, model_server, model_key, "logged")
    plugin(kubectl, "approve", "logged", "call_0_0")
    run = wait_for_phase(kubectl, "logged", "Succeeded")

    current = plugin(kubectl, "logs", "logged")
    first = plugin(kubectl, "logs", "logged", "--attempt", "1")
    kubectl_logs = kubectl("logs", f"job/{run['status']['jobName']}").stdout

    assert current.returncode == 0, current.stderr
    assert current.stdout == kubectl_logs
    assert "attempt 2" in current.stdout
    assert "paused" in first.stdout
    assert "attempt 1" in first.stdout


def test_logs_of_a_pod_that_cannot_start_say_why_in_one_line(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    provider = {"baseURL": model_server.base_url, "apiKeySecretRef": {"name": "absent", "key": "k"}}
    spec = {"prompt": "hi", "model": f"openai:{model_key}", "provider": provider}
    kubectl.apply(manifest("stuck", spec))
    eventually(
        lambda: kubectl.run("stuck").get("status", {}).get("reason") == "PodWaiting",
        what="the run to report its waiting pod",
    )

    logged = plugin(kubectl, "logs", "stuck")

    assert logged.returncode == 1
    assert logged.stdout == ""
    [line] = logged.stderr.splitlines()
    assert "has not started its runner" in line
    assert "absent" in line


def test_watch_prints_a_line_for_each_change_until_its_timeout(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    paused_run(kubectl, model_server, model_key, "watched")
    watcher = subprocess.Popen(
        [
            str(PLUGIN),
            "--kubeconfig",
            str(kubectl.kubeconfig),
            "-n",
            kubectl.namespace,
            "watch",
            "watched",
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        plugin(kubectl, "approve", "watched", "call_0_0")
        wait_for_phase(kubectl, "watched", "Succeeded")
        time.sleep(2)
    finally:
        watcher.terminate()
    out, err = watcher.communicate(timeout=30)

    phases = [line.split()[2] for line in out.splitlines()]
    assert phases[0] == "AwaitingApproval", (out, err)
    assert phases[-1] == "Succeeded"
    assert "pending=1" in out.splitlines()[0]
    assert len(set(out.splitlines())) == len(out.splitlines())


def test_kubectl_finds_the_plugin_on_path(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    paused_run(kubectl, model_server, model_key, "found")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    listed = subprocess.run(
        [
            str(KUBECTL),
            "agentrun",
            "--kubeconfig",
            str(kubectl.kubeconfig),
            "list",
            "-n",
            kubectl.namespace,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    plugins = subprocess.run(
        [str(KUBECTL), "plugin", "list"], env=env, capture_output=True, text=True, timeout=60
    )

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:3] == ["found", "AwaitingApproval", "1"]
    assert str(PLUGIN) in plugins.stdout


def _reader_kubeconfig(kubectl: Kubectl, folder: Path) -> Path:
    """A kubeconfig for a ServiceAccount that may read AgentRuns and nothing else."""
    kubectl("create", "serviceaccount", "reader")
    kubectl(
        "create", "role", "read-runs", "--verb=get,list,watch", "--resource=agentruns.agentrun.dev"
    )
    kubectl(
        "create",
        "rolebinding",
        "reader",
        "--role=read-runs",
        f"--serviceaccount={kubectl.namespace}:reader",
    )
    token = kubectl("create", "token", "reader").stdout.strip()
    admin = yaml.safe_load(Path(kubectl.kubeconfig).read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "reader", "user": {"token": token}}],
        "contexts": [
            {
                "name": "reader",
                "context": {"cluster": admin["clusters"][0]["name"], "user": "reader"},
            }
        ],
        "current-context": "reader",
    }
    path = folder / "reader.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    eventually(
        lambda: plugin(kubectl, "list", kubeconfig=path).returncode == 0,
        timeout=30,
        what="the reader's RoleBinding to take effect",
    )
    return path
