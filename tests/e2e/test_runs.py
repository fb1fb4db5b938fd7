"""AgentRuns run end to end: applied with kubectl, run in Jobs, recovered, cleaned up."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentrun.modelserver import ScriptedModelServer
from tests.cluster_fixtures import TARGET
from tests.e2e.conftest import Operator
from tests.e2e.runs import ROOT, Kubectl, eventually, manifest, wait_for_phase

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]


def spec_for(key: str, **extra: Any) -> dict[str, Any]:
    return {"prompt": "Do the thing.", "model": f"openai:{key}", **extra}


def answered(server: ScriptedModelServer, key: str) -> list[dict[str, Any]]:
    return [r for r in server.requests(key) if r["status"] == 200]


def test_the_minimal_example_succeeds_and_reports_its_progress(
    kubectl: Kubectl, model_server: ScriptedModelServer
) -> None:
    example = yaml.safe_load((ROOT / "examples" / "01-minimal.yaml").read_text())
    model_server.set_script(example["spec"]["model"].split(":", 1)[1], [{"text": "They automate."}])

    kubectl("apply", "-f", str(ROOT / "examples" / "01-minimal.yaml"))
    waited = kubectl("wait", "--for=condition=Succeeded", "agentrun/minimal", "--timeout=180s")
    run = kubectl.run("minimal")
    table = kubectl("get", "agentrun", "minimal", "-o", "wide").stdout
    described = kubectl("describe", "agentrun", "minimal").stdout

    assert "condition met" in waited.stdout
    assert run["status"]["phase"] == "Succeeded"
    assert run["status"]["output"] == "They automate."
    assert run["status"]["requests"] == 1
    assert run["status"]["usage"]["totalTokens"] > 0
    assert run["status"]["completionTime"]
    header, row = table.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "PHASE",
        "MODEL",
        "REQUESTS",
        "TOKENS",
        "AGE",
        "ATTEMPT",
        "JOB",
        "PENDING",
    ]
    assert row.split()[:5] == [
        "minimal",
        "Succeeded",
        "openai:gpt-4o-mini",
        "1",
        str(run["status"]["usage"]["totalTokens"]),
    ]
    for reason in ("Started", "Succeeded"):
        assert reason in described


def test_a_run_using_two_tools_over_three_turns_sends_the_whole_history_each_time(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(
        model_key,
        [
            {
                "tool_calls": [
                    {"name": "write_file", "arguments": {"path": "a.txt", "content": "hi"}}
                ]
            },
            {"tool_calls": [{"name": "read_file", "arguments": {"path": "a.txt"}}]},
            {"text": "The file says hi."},
        ],
    )
    tools = [{"name": "write_file"}, {"name": "read_file"}]

    kubectl.apply(manifest("tools", spec_for(model_key, tools=tools)))
    run = wait_for_phase(kubectl, "tools", "Succeeded")

    sent = [r["body"]["messages"] for r in answered(model_server, model_key)]
    assert run["status"]["output"] == "The file says hi."
    assert [len(m) for m in sent] == sorted({len(m) for m in sent})
    assert len(sent) == 3
    for earlier, later in itertools.pairwise(sent):
        assert later[: len(earlier)] == earlier
    tool_results = [m for m in sent[-1] if m["role"] == "tool"]
    assert len(tool_results) == 2
    assert "hi" in tool_results[-1]["content"]


def test_a_run_with_a_200_character_name_gets_a_job_name_that_fits(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    name = ("long-run-name-" * 20)[:199] + "x"
    model_server.set_script(model_key, [{"text": "ok"}])

    kubectl.apply(manifest(name, spec_for(model_key)))
    run = wait_for_phase(kubectl, name, "Succeeded")

    assert len(name) == 200
    assert len(run["status"]["jobName"]) <= 63
    assert kubectl.json("get", "job", run["status"]["jobName"])["status"]["succeeded"] == 1


def test_a_deleted_pod_is_replaced_and_resumes_without_repeating_checkpointed_steps(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(
        model_key,
        [
            {"tool_calls": [{"name": "list_files", "arguments": {}}]},
            {"tool_calls": [{"name": "list_files", "arguments": {}}]},
            {"text": "done", "delay_seconds": 6},
        ],
    )
    kubectl.apply(manifest("resumed", spec_for(model_key, tools=[{"name": "list_files"}])))
    eventually(
        lambda: any(r["turn"] == 2 for r in model_server.requests(model_key)),
        what="the third model request (after two checkpointed steps)",
    )

    first_pod = kubectl.json("get", "pods", "-l", "agentrun.dev/run=resumed")["items"][0]
    kubectl("delete", "pod", first_pod["metadata"]["name"], "--wait=false")
    run = wait_for_phase(kubectl, "resumed", "Succeeded")

    pods = kubectl.json("get", "pods", "-l", "agentrun.dev/run=resumed")["items"]
    turns = [r["turn"] for r in answered(model_server, model_key)]
    assert run["status"]["attempt"] == 1
    assert [p["metadata"]["name"] for p in pods] != [first_pod["metadata"]["name"]]
    assert pods and pods[-1]["status"]["phase"] == "Succeeded"
    assert turns.count(0) == 1
    assert turns.count(1) == 1


def test_a_model_that_fails_forever_fails_the_run_after_its_attempts_with_the_status(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, control_plane: Any
) -> None:
    model_server.set_script(model_key, [{"error_forever": 500}])
    retry = {"maxAttempts": 2, "backoffSeconds": 2}

    kubectl.apply(manifest("broken", spec_for(model_key, retry=retry)))
    run = wait_for_phase(kubectl, "broken", "Failed", timeout=300)

    events = [e["reason"] for e in kubectl.events("broken")]
    assert run["status"]["reason"] == "ModelError"
    assert "500" in run["status"]["message"]
    assert run["status"]["attempt"] == 2
    assert run["status"]["failedAttempts"] == 2
    assert "AttemptFailed" in events
    assert _history(control_plane, kubectl, "broken") is not None


def test_a_model_that_answers_429_twice_then_succeeds_lets_the_run_succeed(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(model_key, [{"text": "finally", "errors": [429, 429]}])

    kubectl.apply(manifest("limited", spec_for(model_key)))
    run = wait_for_phase(kubectl, "limited", "Succeeded")

    statuses = [r["status"] for r in model_server.requests(model_key)]
    assert run["status"]["output"] == "finally"
    assert run["status"]["attempt"] == 1
    assert statuses == [429, 429, 200]


def test_suspend_removes_the_pod_and_unsuspend_resumes_to_success(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(model_key, [{"text": "resumed fine", "delay_seconds": 5}])
    kubectl.apply(manifest("pausable", spec_for(model_key)))
    eventually(lambda: model_server.requests(model_key), what="the first model request")

    kubectl("patch", "agentrun", "pausable", "--type", "merge", "-p", '{"spec":{"suspend":true}}')
    suspended = wait_for_phase(kubectl, "pausable", "Suspended")
    eventually(
        lambda: not kubectl.json("get", "pods", "-l", "agentrun.dev/run=pausable")["items"],
        what="the run's pod to be gone",
    )
    kubectl("patch", "agentrun", "pausable", "--type", "merge", "-p", '{"spec":{"suspend":false}}')
    run = wait_for_phase(kubectl, "pausable", "Succeeded")

    assert suspended["status"]["reason"] == "Suspended"
    assert run["status"]["output"] == "resumed fine"
    assert run["status"]["attempt"] == 2
    assert run["status"]["failedAttempts"] == 0


def test_a_queued_run_waits_for_kueue_to_admit_its_job(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(model_key, [{"text": "admitted"}])

    kubectl.apply(manifest("queued", spec_for(model_key, queueName="team-a")))
    pending = wait_for_phase(kubectl, "queued", "Pending")
    job = eventually(lambda: kubectl.json("get", "jobs", "-l", "agentrun.dev/run=queued")["items"])[
        0
    ]
    eventually(lambda: kubectl.run("queued")["status"].get("reason") == "Queued", what="Queued")
    still = kubectl.run("queued")
    kubectl(
        "patch",
        "job",
        job["metadata"]["name"],
        "--type",
        "merge",
        "-p",
        '{"spec":{"suspend":false}}',
    )
    run = wait_for_phase(kubectl, "queued", "Succeeded")

    assert pending["status"]["phase"] == "Pending"
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert still["status"]["phase"] == "Pending"
    assert run["status"]["output"] == "admitted"


def test_a_run_that_finishes_while_the_operator_is_down_succeeds_without_a_new_attempt(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, operator: Operator
) -> None:
    model_server.set_script(model_key, [{"text": "finished alone", "delay_seconds": 3}])
    kubectl.apply(manifest("unattended", spec_for(model_key)))
    wait_for_phase(kubectl, "unattended", "Running")

    operator.stop()
    try:
        kubectl("wait", "--for=condition=Complete", "job/unattended-1", "--timeout=120s")
        during = kubectl.run("unattended")
    finally:
        operator.start()
    run = wait_for_phase(kubectl, "unattended", "Succeeded")

    assert during["status"]["phase"] == "Running"
    assert run["status"]["attempt"] == 1
    assert run["status"]["output"] == "finished alone"


def test_deleting_a_run_removes_everything_it_owns(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(model_key, [{"text": "bye"}])
    kubectl.apply(manifest("doomed", spec_for(model_key)))
    wait_for_phase(kubectl, "doomed", "Succeeded")

    kubectl("delete", "agentrun", "doomed", "--wait=true", "--timeout=60s")

    def leftovers() -> list[str]:
        kinds = "jobs,pods,configmaps,serviceaccounts,roles,rolebindings"
        found = kubectl("get", kinds, "-o", "name").stdout.split()
        return [n for n in found if "doomed" in n]

    eventually(lambda: leftovers() == [], what="garbage collection of the run's objects")


def test_a_runs_service_account_cannot_read_another_runs_checkpoint(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    model_server.set_script(model_key, [{"text": "mine"}])
    for name in ("alpha", "beta"):
        kubectl.apply(manifest(name, spec_for(model_key)))
    for name in ("alpha", "beta"):
        wait_for_phase(kubectl, name, "Succeeded")
    who = f"system:serviceaccount:{kubectl.namespace}:alpha-runner"

    own = kubectl("auth", "can-i", "get", "configmap/alpha-checkpoint", "--as", who, check=False)
    other = kubectl("auth", "can-i", "get", "configmap/beta-checkpoint", "--as", who, check=False)
    probe = _probe_pod(kubectl, "alpha-runner", ["alpha-checkpoint", "beta-checkpoint"])

    assert own.stdout.strip() == "yes"
    assert other.stdout.strip() == "no"
    assert probe == {"alpha-checkpoint": 200, "beta-checkpoint": 403}


def test_the_api_key_appears_in_no_status_configmap_event_or_log(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, operator: Operator
) -> None:
    secret_value = "sk-test-DO-NOT-LEAK-4242"
    kubectl("create", "secret", "generic", "model-key", f"--from-literal=api-key={secret_value}")
    model_server.set_script(
        model_key,
        [{"tool_calls": [{"name": "list_files", "arguments": {}}]}, {"text": "kept secret"}],
    )
    provider = {
        "baseURL": model_server.base_url,
        "apiKeySecretRef": {"name": "model-key", "key": "api-key"},
    }

    kubectl.apply(
        manifest(
            "secretive", spec_for(model_key, provider=provider, tools=[{"name": "list_files"}])
        )
    )
    wait_for_phase(kubectl, "secretive", "Succeeded")

    seen = "\n".join(
        [
            kubectl("get", "agentrun", "secretive", "-o", "yaml").stdout,
            kubectl("get", "configmaps", "-o", "yaml").stdout,
            kubectl("get", "events", "-o", "yaml").stdout,
            kubectl("logs", "job/secretive-1").stdout,
            operator.logs(),
        ]
    )
    assert all(r["api_key_sent"] for r in model_server.requests(model_key))
    assert secret_value not in seen


def _probe_pod(kubectl: Kubectl, service_account: str, configmaps: list[str]) -> dict[str, int]:
    """Read ConfigMaps from a pod running as `service_account`; the HTTP status of each."""
    script = (
        "import json, sys\n"
        "from kubernetes import client\n"
        "from agentrun import kube\n"
        "api = client.CoreV1Api(client.ApiClient(kube.load_config()))\n"
        "out = {}\n"
        f"for name in {configmaps!r}:\n"
        "    try:\n"
        f"        api.read_namespaced_config_map(name, {kubectl.namespace!r}); out[name] = 200\n"
        "    except client.ApiException as error:\n"
        "        out[name] = error.status\n"
        "print('RESULT ' + json.dumps(out))\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "serviceAccountName": service_account,
            "restartPolicy": "Never",
            "containers": [
                {"name": "probe", "image": TARGET.image, "command": ["python", "-c", script]}
            ],
        },
    }
    kubectl.apply(pod)
    kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/probe", "--timeout=120s")
    line = next(x for x in kubectl("logs", "probe").stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, int] = json.loads(line.removeprefix("RESULT "))
    return result


def _history(control_plane: Any, kubectl: Kubectl, name: str) -> bytes | None:
    """The run's history as the checkpoint loader rebuilds it."""
    from kubernetes import client, config

    from agentrun import checkpoint

    api_client = config.new_client_from_config(str(Path(control_plane.kubeconfig)))  # type: ignore[no-untyped-call]
    return checkpoint.load_history_bytes(client.CoreV1Api(api_client), kubectl.namespace, name)


def test_the_operator_exports_runs_by_phase_and_tokens_by_model(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str, operator: Operator
) -> None:
    model_server.set_script(
        model_key,
        [
            {
                "text": "counted",
                "delay_seconds": 2,
                "usage": {"prompt_tokens": 7, "completion_tokens": 5},
            }
        ],
    )

    kubectl.apply(manifest("measured", spec_for(model_key)))
    wait_for_phase(kubectl, "measured", "Succeeded")

    def tokens_exported() -> str | None:
        text = operator.metrics()
        return text if f'model="openai:{model_key}"' in text else None

    text = eventually(tokens_exported, what="the run's tokens in the metrics")

    lines = text.splitlines()
    assert any(line.startswith('agentrun_runs{phase="Succeeded"}') for line in lines)
    assert f'agentrun_tokens_total{{direction="output",model="openai:{model_key}"}} 5.0' in lines
    assert any(line.startswith("agentrun_run_duration_seconds_count") for line in lines)


def test_a_run_whose_pod_cannot_start_says_why(
    kubectl: Kubectl, model_server: ScriptedModelServer, model_key: str
) -> None:
    provider = {"baseURL": model_server.base_url, "apiKeySecretRef": {"name": "absent", "key": "k"}}

    kubectl.apply(manifest("stuck", spec_for(model_key, provider=provider)))
    run = eventually(
        lambda: (r := kubectl.run("stuck")).get("status", {}).get("reason") == "PodWaiting" and r,
        what="the run to report its waiting pod",
    )

    assert run["status"]["phase"] == "Running"
    assert "absent" in run["status"]["message"]
    assert "PodWaiting" in [e["reason"] for e in kubectl.events("stuck")]
