"""`kubectl agentrun`: choosing calls, building the decision patch, tables, and commands
run against a fake cluster (the real one is in tests/e2e/test_plugin.py)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jsonpatch
import pytest
from typer.testing import CliRunner

from agentrun import api, kube
from agentrun.plugin import _commands, _review, _tables, app
from agentrun.plugin._cluster import Scope
from agentrun.plugin._errors import PluginError


def pending_call(call_id: str, tool: str = "shell", arguments: str = "{}") -> dict[str, Any]:
    return {
        "toolCallId": call_id,
        "toolName": tool,
        "arguments": arguments,
        "requestedAt": "2026-12-03T12:00:00Z",
    }


def agentrun(
    *calls: dict[str, Any],
    approvals: list[dict[str, Any]] | None = None,
    phase: str = "AwaitingApproval",
    **status: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"prompt": "hi", "model": "openai:m"}
    if approvals is not None:
        spec["approvals"] = approvals
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {
            "name": "demo",
            "namespace": "team",
            "resourceVersion": "7",
            "creationTimestamp": "2026-12-03T11:00:00Z",
        },
        "spec": spec,
        "status": {"phase": phase, "pendingApprovals": list(calls), **status},
    }


# --- which calls -----------------------------------------------------------------------


def test_no_call_ids_select_every_pending_call_without_a_decision() -> None:
    run = agentrun(
        pending_call("a"),
        pending_call("b"),
        pending_call("c"),
        approvals=[{"toolCallId": "b", "decision": "Approve"}],
    )

    chosen = _review.select(run, [])

    assert [c.tool_call_id for c in chosen] == ["a", "c"]


def test_named_calls_are_selected_in_the_order_given_once_each() -> None:
    run = agentrun(pending_call("a"), pending_call("b", tool="read_file"))

    chosen = _review.select(run, ["b", "a", "b"])

    assert [(c.tool_call_id, c.tool_name) for c in chosen] == [("b", "read_file"), ("a", "shell")]


def test_an_unknown_call_id_is_refused_naming_it_and_the_pending_calls() -> None:
    run = agentrun(pending_call("call_0_0"), pending_call("call_0_1", tool="fetch_url"))

    with pytest.raises(PluginError) as refused:
        _review.select(run, ["call_0_0", "call_9"])

    assert str(refused.value) == (
        "On run demo, 'call_9' is not a pending call. "
        "Pending: call_0_0 (shell), call_0_1 (fetch_url)."
    )


def test_a_decided_call_id_is_refused_saying_who_decided_it() -> None:
    decided = {"toolCallId": "a", "decision": "Deny", "reason": "no", "approver": "alice"}
    run = agentrun(pending_call("a"), pending_call("b"), approvals=[decided])

    with pytest.raises(PluginError) as refused:
        _review.select(run, ["a"])

    assert "'a' is already decided (Deny by alice)" in str(refused.value)
    assert "Pending: b (shell)." in str(refused.value)


@pytest.mark.parametrize("wanted", [[], ["a"]])
def test_a_run_with_nothing_pending_is_refused_with_its_phase(wanted: list[str]) -> None:
    run = agentrun(phase="Running")

    with pytest.raises(PluginError, match=r"^Run demo has no pending calls \(phase Running\)\.$"):
        _review.select(run, wanted)


def test_a_newer_operators_unknown_status_fields_do_not_break_selection() -> None:
    run = agentrun({**pending_call("a"), "riskScore": 0.3})

    assert [c.tool_call_id for c in _review.select(run, [])] == ["a"]


# --- the decision and its patch ----------------------------------------------------------


def test_entries_are_the_approvals_as_the_api_server_stores_them() -> None:
    calls = _review.select(agentrun(pending_call("a")), [])
    verdict = _review.Verdict(
        api.Decision.APPROVE, reason="fine", arguments={"command": "ls"}, approver="alice"
    )

    entries = _review.entries(calls, verdict)

    assert entries == [
        {
            "toolCallId": "a",
            "decision": "Approve",
            "reason": "fine",
            "arguments": {"command": "ls"},
            "approver": "alice",
        }
    ]


def test_entries_leave_out_what_was_not_given() -> None:
    calls = _review.select(agentrun(pending_call("a"), pending_call("b")), [])

    entries = _review.entries(calls, _review.Verdict(api.Decision.APPROVE))

    assert entries == [
        {"toolCallId": "a", "decision": "Approve"},
        {"toolCallId": "b", "decision": "Approve"},
    ]


def test_replacement_arguments_are_refused_for_more_than_one_call() -> None:
    calls = _review.select(agentrun(pending_call("a"), pending_call("b")), [])

    with pytest.raises(PluginError, match="one call, and 2 are selected"):
        _review.entries(calls, _review.Verdict(api.Decision.APPROVE, arguments={"x": 1}))


def test_a_reason_longer_than_the_api_allows_is_refused_before_anything_is_sent() -> None:
    calls = _review.select(agentrun(pending_call("a")), [])

    with pytest.raises(PluginError, match="reason: String should have at most 2048"):
        _review.entries(calls, _review.Verdict(api.Decision.DENY, reason="x" * 3000))


@pytest.mark.parametrize("text", ["[1]", '"ls"', "{nope", "3"])
def test_replacement_arguments_must_be_a_json_object(text: str) -> None:
    with pytest.raises(PluginError, match="--args"):
        _review.parse_arguments(text)


def test_the_patch_appends_one_entry_per_call_on_the_version_read() -> None:
    run = agentrun(pending_call("b"), approvals=[{"toolCallId": "a", "decision": "Approve"}])
    entries = [{"toolCallId": "b", "decision": "Deny", "reason": "no"}]

    ops = _review.patch(run, entries)
    patched = jsonpatch.apply_patch(run, ops)

    assert ops == [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/spec/approvals/-", "value": entries[0]},
    ]
    assert patched["spec"]["approvals"] == [{"toolCallId": "a", "decision": "Approve"}, *entries]


def test_the_patch_creates_the_list_when_the_run_has_no_approvals_yet() -> None:
    run = agentrun(pending_call("a"), pending_call("b"))
    entries = [
        {"toolCallId": "a", "decision": "Approve"},
        {"toolCallId": "b", "decision": "Approve"},
    ]

    ops = _review.patch(run, entries)
    patched = jsonpatch.apply_patch(run, ops)

    assert [op["op"] for op in ops] == ["replace", "add", "add", "add"]
    assert patched["spec"]["approvals"] == entries


# --- rows and ages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-1, "0s"),
        (-5, "<invalid>"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (50 * 3600, "2d2h"),
        (8 * 86400, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (731 * 86400, "2y1d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_ages_read_as_kubectl_prints_them(seconds: int, shown: str) -> None:
    assert _tables.human_duration(seconds) == shown


def test_a_row_counts_only_calls_without_a_decision() -> None:
    run = agentrun(
        pending_call("a"),
        pending_call("b"),
        approvals=[{"toolCallId": "a", "decision": "Approve"}],
        requests=3,
        attempt=2,
        usage={"totalTokens": 120},
    )
    now = datetime(2026, 12, 3, 11, 5, tzinfo=UTC)

    row = _tables.row(run, now=now)

    assert row.cells(with_namespace=True) == [
        "team",
        "demo",
        "AwaitingApproval",
        "1",
        "3",
        "120",
        "2",
        "5m",
    ]


def test_a_run_without_status_yet_shows_none_for_its_phase() -> None:
    run = agentrun()
    del run["status"]

    assert _tables.row(run).phase == "<none>"


def test_plain_tables_align_columns_three_spaces_apart() -> None:
    text = _tables.plain(("NAME", "PHASE"), [["a-long-name", "Running"], ["b", "Failed"]])

    assert text == "NAME          PHASE\na-long-name   Running\nb             Failed\n"


# --- commands, against a fake cluster ----------------------------------------------------


class FakeCluster:
    """Stands in for `_cluster.Cluster`: one run, patched with real JSON-patch semantics."""

    def __init__(self, run: dict[str, Any], *, conflicts: int = 0) -> None:
        self.stored = run
        self.namespace = "team"
        self.scopes: list[Scope] = []
        self.conflicts = conflicts
        self.patches: list[list[dict[str, Any]]] = []
        self.refuse: kube.KubeError | None = None
        self.on_conflict: Callable[[dict[str, Any]], object] = lambda run: None

    def __call__(self, scope: Scope) -> FakeCluster:
        self.scopes.append(scope)
        return self

    def run(self, name: str) -> dict[str, Any]:
        if name != self.stored["metadata"]["name"]:
            raise PluginError(f"AgentRun {name} not found in namespace {self.namespace}.")
        return copy.deepcopy(self.stored)

    def runs(self, *, all_namespaces: bool = False) -> tuple[list[dict[str, Any]], str]:
        return [copy.deepcopy(self.stored)], "7"

    def username(self) -> str:
        return "alice"

    def patch_run(self, name: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        self.patches.append(operations)
        if self.refuse is not None:
            raise self.refuse
        if self.conflicts:
            self.conflicts -= 1
            self.on_conflict(self.stored)
            self.stored["metadata"]["resourceVersion"] += "1"
            raise kube.Conflict("the object has been modified", status=409)
        self.stored = jsonpatch.apply_patch(self.stored, operations)
        return self.stored


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    fake = FakeCluster(
        agentrun(
            pending_call("call_0_0", arguments='{"command":"ls"}'),
            pending_call("call_0_1", tool="read_file"),
        )
    )
    monkeypatch.setattr(_commands, "Cluster", fake)
    return fake


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_approve_without_call_ids_shows_the_pending_calls_then_approves_them(
    cluster: FakeCluster,
) -> None:
    result = invoke("approve", "demo", "--yes")

    assert result.exit_code == 0, result.output
    assert result.output == (
        "Pending calls on run demo:\n"
        '  shell (call_0_0): {"command":"ls"}\n'
        "  read_file (call_0_1): {}\n"
        "Approved shell (call_0_0) on run demo.\n"
        "Approved read_file (call_0_1) on run demo.\n"
    )
    assert cluster.stored["spec"]["approvals"] == [
        {"toolCallId": "call_0_0", "decision": "Approve", "approver": "alice"},
        {"toolCallId": "call_0_1", "decision": "Approve", "approver": "alice"},
    ]


def test_approve_one_call_with_new_arguments_a_reason_and_an_approver(
    cluster: FakeCluster,
) -> None:
    result = invoke(
        "approve",
        "demo",
        "call_0_0",
        "--args",
        '{"command": "ls -la"}',
        "--reason",
        "safe",
        "--approver",
        "bob",
    )

    assert result.exit_code == 0, result.output
    assert result.output == (
        'Approved shell (call_0_0) on run demo with arguments {"command": "ls -la"}.\n'
    )
    assert cluster.stored["spec"]["approvals"] == [
        {
            "toolCallId": "call_0_0",
            "decision": "Approve",
            "reason": "safe",
            "arguments": {"command": "ls -la"},
            "approver": "bob",
        },
    ]


def test_deny_records_the_reason(cluster: FakeCluster) -> None:
    result = invoke("deny", "demo", "call_0_1", "--reason", "not that file")

    assert result.exit_code == 0, result.output
    assert result.output == "Denied read_file (call_0_1) on run demo.\n"
    assert cluster.stored["spec"]["approvals"] == [
        {
            "toolCallId": "call_0_1",
            "decision": "Deny",
            "reason": "not that file",
            "approver": "alice",
        },
    ]


def test_deny_without_a_reason_fails_and_sends_nothing(cluster: FakeCluster) -> None:
    result = invoke("deny", "demo")

    assert result.exit_code == 1
    assert (
        result.output == "error: deny needs --reason: the model is told why its call was denied.\n"
    )
    assert cluster.patches == []


def test_a_run_changed_meanwhile_is_read_again_and_only_the_calls_shown_are_decided(
    cluster: FakeCluster,
) -> None:
    cluster.conflicts = 1
    cluster.on_conflict = lambda run: run["status"]["pendingApprovals"].append(
        pending_call("call_1_0")
    )

    result = invoke("approve", "demo", "--yes")

    assert result.exit_code == 0, result.output
    assert len(cluster.patches) == 2
    assert [a["toolCallId"] for a in cluster.stored["spec"]["approvals"]] == [
        "call_0_0",
        "call_0_1",
    ]


def test_a_wrong_call_id_exits_1_with_one_line_and_sends_nothing(cluster: FakeCluster) -> None:
    result = invoke("approve", "demo", "call_7")

    assert result.exit_code == 1
    assert result.output == (
        "error: On run demo, 'call_7' is not a pending call. "
        "Pending: call_0_0 (shell), call_0_1 (read_file).\n"
    )
    assert cluster.patches == []


def test_an_api_refusal_is_one_line_without_a_traceback(cluster: FakeCluster) -> None:
    cluster.refuse = kube.Forbidden('agentruns "demo" is forbidden: User "eve" cannot patch')

    result = invoke("approve", "demo", "call_0_0")

    assert result.exit_code == 1
    assert result.output == 'error: agentruns "demo" is forbidden: User "eve" cannot patch\n'


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "team", "--context", "c1", "list"],
        ["list", "-n", "team", "--context", "c1"],
        ["--context", "c1", "list", "--namespace", "team"],
    ],
)
def test_global_options_count_before_or_after_the_command(
    cluster: FakeCluster, args: list[str]
) -> None:
    result = invoke(*args)

    assert result.exit_code == 0, result.output
    assert cluster.scopes == [Scope(kubeconfig=None, context="c1", namespace="team")]


def test_list_prints_plain_columns_when_not_on_a_terminal(cluster: FakeCluster) -> None:
    result = invoke("list")

    header, row = result.output.splitlines()
    assert header.split() == ["NAME", "PHASE", "PENDING", "REQUESTS", "TOKENS", "ATTEMPT", "AGE"]
    assert row.split()[:6] == ["demo", "AwaitingApproval", "2", "0", "0", "0"]


def test_history_json_prints_the_checkpointed_bytes_as_they_are(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = b'[{"kind":"request","parts":[{"part_kind":"user-prompt","content":"hi"}]}]'
    monkeypatch.setattr(FakeCluster, "history", lambda self, name: raw, raising=False)

    as_json = invoke("history", "demo", "--json")
    readable = invoke("history", "demo")

    assert json.loads(as_json.output) == json.loads(raw)
    assert readable.output == "user\n  hi\n"


# --- which Job holds an attempt ----------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "job"), [(None, "demo-3-x"), (3, "demo-3-x"), (1, "demo-1"), (2, "demo-2")]
)
def test_logs_read_the_job_of_the_attempt_asked_for(attempt: int | None, job: str) -> None:
    run = agentrun(phase="Running", attempt=3, jobName="demo-3-x")

    assert _commands._job_of(run, attempt) == job


@pytest.mark.parametrize("attempt", [0, 4])
def test_logs_of_an_attempt_that_never_was_are_refused(attempt: int) -> None:
    run = agentrun(phase="Running", attempt=3, jobName="demo-3")

    with pytest.raises(PluginError, match=f"at attempt 3; there is no attempt {attempt}"):
        _commands._job_of(run, attempt)


def test_logs_of_a_run_that_has_not_started_are_refused() -> None:
    with pytest.raises(PluginError, match="has not started an attempt yet"):
        _commands._job_of(agentrun(phase="Pending"), None)


@pytest.mark.parametrize(("answer", "decided"), [("y\n", 2), ("n\n", 0), ("\n", 0)])
def test_on_a_terminal_approving_every_pending_call_asks_first(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, answer: str, decided: int
) -> None:
    monkeypatch.setattr(_commands, "_can_ask", lambda: True)

    result = CliRunner().invoke(app, ["approve", "demo"], input=answer)

    assert "Approve 2 calls on run demo? [y/N]" in result.output
    assert len(cluster.stored["spec"].get("approvals", [])) == decided
    assert result.exit_code == (0 if decided else 1)


@pytest.mark.parametrize("command", [["approve", "demo"], ["deny", "demo", "--reason", "no"]])
def test_without_a_terminal_deciding_every_pending_call_needs_yes(
    cluster: FakeCluster, command: list[str]
) -> None:
    result = invoke(*command)

    assert result.exit_code == 1
    assert result.output.endswith(
        "error: Nothing was decided: there is no terminal to ask on. Name the calls, or pass "
        "--yes to decide all of them.\n"
    )
    assert cluster.patches == []


def test_yes_skips_the_question_on_a_terminal(
    cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_commands, "_can_ask", lambda: True)

    result = CliRunner().invoke(app, ["deny", "demo", "--reason", "no", "-y"], input="")

    assert "[y/N]" not in result.output
    assert len(cluster.stored["spec"]["approvals"]) == 2
