"""The runner end to end: a real API server, the real openai client, a scripted model."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from pydantic_ai import ToolReturnPart

from agentrun import api, runner

from .conftest import Run, Runners

pytestmark = pytest.mark.e2e

FILE_TOOLS = [{"name": "write_file"}, {"name": "read_file"}, {"name": "list_files"}]


def roles(request: dict[str, object]) -> list[str]:
    body = request["body"]
    assert isinstance(body, dict)
    return [message["role"] for message in body["messages"]]


def test_two_tools_across_three_turns_succeed_with_the_whole_history_each_time(
    runners: Runners,
) -> None:
    run = runners.create(
        "three-turns",
        turns=[
            {
                "tool_calls": [
                    {"name": "write_file", "arguments": {"path": "a.txt", "content": "hi"}}
                ]
            },
            {"tool_calls": [{"name": "read_file", "arguments": {"path": "a.txt"}}]},
            {"text": "The file says hi."},
        ],
        tools=FILE_TOOLS,
        instructions="Be brief.",
    )

    exited = runners.run(run, 1)

    record = runners.record(run)
    assert exited.code == runner.EXIT_OK, exited.output
    assert (record.outcome, record.output) == (api.Outcome.SUCCEEDED, "The file says hi.")
    assert (record.step, record.requests, record.messages) == (5, 3, 6)
    assert record.usage.total_tokens > 0
    requests = runners.requests(run)
    assert [roles(r) for r in requests] == [
        ["system", "user"],
        ["system", "user", "assistant", "tool"],
        ["system", "user", "assistant", "tool", "assistant", "tool"],
    ]
    assert requests[2]["body"]["messages"][-1]["content"] == "hi"
    assert (runners.workspace / "a.txt").read_text() == "hi"


def test_each_step_logs_one_json_line_and_the_key_never_appears(runners: Runners) -> None:
    run = runners.create(
        "step-lines",
        turns=[{"tool_calls": [{"name": "list_files", "arguments": {}}]}, {"text": "done"}],
        tools=FILE_TOOLS,
    )

    exited = runners.run(run, 1)

    steps = [json.loads(line) for line in exited.steps()]
    assert [(s["step"], s["kind"], s["tools"]) for s in steps] == [
        (1, "model_response", ["list_files"]),
        (2, "tool_results", ["list_files"]),
        (3, "model_response", []),
    ]
    keys = {"run", "attempt", "step", "kind", "tools", "input_tokens", "output_tokens", "seconds"}
    assert all(keys <= step.keys() for step in steps)
    assert f"Run {runners.namespace}/step-lines attempt 1 started." in exited.output
    assert "sk-test-never-logged" not in exited.output
    stored = json.dumps([cm.get("data") for cm in runners.configmaps(run)])
    assert "sk-test-never-logged" not in stored
    assert all(r["api_key_sent"] for r in runners.requests(run))


def test_a_model_that_answers_429_twice_then_succeeds(runners: Runners) -> None:
    run = runners.create("rate-limited", turns=[{"text": "finally", "errors": [429, 429]}])

    exited = runners.run(run, 1)

    assert exited.code == runner.EXIT_OK, exited.output
    assert [r["status"] for r in runners.requests(run)] == [429, 429, 200]
    assert runners.record(run).output == "finally"


def test_a_model_that_answers_500_forever_fails_the_attempt_naming_the_status(
    runners: Runners,
) -> None:
    run = runners.create(
        "broken-model",
        turns=[{"tool_calls": [{"name": "list_files", "arguments": {}}]}, {"error_forever": 500}],
        tools=FILE_TOOLS,
    )

    exited = runners.run(run, 1)

    record = runners.record(run)
    assert exited.code == runner.EXIT_FAILED
    assert record.failure is not None
    assert (record.failure.attempt, record.failure.reason, record.failure.final) == (
        1,
        "ModelError",
        False,
    )
    assert "HTTP 500" in record.failure.message
    statuses = [r["status"] for r in runners.requests(run) if r["turn"] == 1]
    assert statuses == [500] * 4
    assert len(runners.history(run)) == 3


def test_a_gated_call_pauses_and_the_next_attempt_applies_the_decisions(
    runners: Runners,
) -> None:
    run = runners.create(
        "approvals",
        turns=[
            {
                "tool_calls": [
                    {"id": "rm", "name": "shell", "arguments": {"command": "rm -rf data"}},
                    {"id": "ls", "name": "shell", "arguments": {"command": "ls"}},
                ]
            },
            {"text": "done"},
        ],
        tools=[{"name": "shell"}],
    )
    (runners.workspace / "data").mkdir()

    paused = runners.run(run, 1)

    record = runners.record(run)
    assert paused.code == runner.EXIT_OK, paused.output
    assert record.outcome == api.Outcome.PAUSED
    assert [p.tool_call_id for p in record.pending] == ["rm", "ls"]
    runners.patch_spec(
        run,
        {
            "approvals": [
                {"toolCallId": "rm", "decision": "Deny", "reason": "Keep the data."},
                {"toolCallId": "ls", "decision": "Approve", "arguments": {"command": "echo hi"}},
            ]
        },
    )
    runners.claim(run, 2)

    resumed = runners.run(run, 2)

    assert resumed.code == runner.EXIT_OK, resumed.output
    assert runners.record(run).outcome == api.Outcome.SUCCEEDED
    assert (runners.workspace / "data").is_dir()
    last = runners.requests(run)[-1]["body"]["messages"]
    tool_messages = {m["tool_call_id"]: m["content"] for m in last if m["role"] == "tool"}
    assert tool_messages == {"rm": "Keep the data.", "ls": "exit code 0\nhi\n"}


def test_a_paused_run_is_not_resumed_without_every_decision(runners: Runners) -> None:
    run = runners.create(
        "undecided",
        turns=[{"tool_calls": [{"id": "x", "name": "shell", "arguments": {"command": "ls"}}]}],
        tools=[{"name": "shell"}],
    )
    runners.run(run, 1)
    runners.claim(run, 2)

    exited = runners.run(run, 2)

    failure = runners.record(run).failure
    assert exited.code == runner.EXIT_FAILED
    assert failure is not None
    assert (failure.reason, failure.attempt) == ("DecisionMissing", 2)
    assert len(runners.requests(run)) == 1


def test_empty_and_repeated_tool_call_ids_do_not_end_the_run(runners: Runners) -> None:
    listing = {"name": "list_files", "arguments": {}}
    run = runners.create(
        "odd-ids",
        turns=[
            {
                "tool_calls": [
                    {"id": "", **listing},
                    {"id": "same", **listing},
                    {"id": "same", **listing},
                ]
            },
            {"tool_calls": [{"id": "same", **listing}]},
            {"text": "done"},
        ],
        tools=FILE_TOOLS,
    )

    exited = runners.run(run, 1)

    assert exited.code == runner.EXIT_OK, exited.output
    last = runners.requests(run)[-1]["body"]["messages"]
    called = [c["id"] for m in last if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    answered = [m["tool_call_id"] for m in last if m["role"] == "tool"]
    assert len(called) == len(set(called)) == 4
    assert sorted(answered) == sorted(called)


@pytest.fixture
def mcp_server() -> Iterator[str]:
    """A streamable-HTTP MCP server on loopback with two tools, `add` and `erase`."""
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("calc")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def erase(path: str) -> str:
        """Erase a file."""
        return f"erased {path}"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        server.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning"
    )
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    while not web.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    web.should_exit = True
    thread.join(timeout=10)


def test_mcp_tools_are_called_by_prefixed_name_and_globbed_ones_wait(
    runners: Runners, mcp_server: str
) -> None:
    run = runners.create(
        "mcp",
        turns=[
            {
                "tool_calls": [
                    {"id": "sum", "name": "calc_add", "arguments": {"a": 2, "b": 3}},
                    {"id": "rm", "name": "calc_erase", "arguments": {"path": "x"}},
                ]
            },
            {"tool_calls": [{"id": "rm2", "name": "calc_erase", "arguments": {"path": "y"}}]},
            {"text": "done"},
        ],
        mcpServers=[{"name": "calc", "url": mcp_server, "requireApproval": ["era*"]}],
    )

    exited = runners.run(run, 1)

    record = runners.record(run)
    assert exited.code == runner.EXIT_OK, exited.output
    assert record.outcome == api.Outcome.PAUSED
    assert [(p.tool_call_id, p.tool_name) for p in record.pending] == [("rm", "calc_erase")]
    offered = runners.requests(run)[0]["body"]["tools"]
    assert sorted(tool["function"]["name"] for tool in offered) == ["calc_add", "calc_erase"]
    assert tool_results(runners, run) == {"sum": 5}
    runners.patch_spec(run, {"approvals": [{"toolCallId": "rm", "decision": "Approve"}]})
    runners.claim(run, 2)

    resumed = runners.run(run, 2)

    assert resumed.code == runner.EXIT_OK, resumed.output
    assert runners.record(run).outcome == api.Outcome.PAUSED
    assert [p.tool_call_id for p in runners.record(run).pending] == ["rm2"]
    assert runners.record(run).started == []
    runners.patch_spec(
        run,
        {
            "approvals": [
                {"toolCallId": "rm", "decision": "Approve"},
                {"toolCallId": "rm2", "decision": "Approve"},
            ]
        },
    )
    runners.claim(run, 3)

    finished = runners.run(run, 3)

    assert finished.code == runner.EXIT_OK, finished.output
    assert runners.record(run).outcome == api.Outcome.SUCCEEDED
    assert tool_results(runners, run) == {"sum": 5, "rm": "erased x", "rm2": "erased y"}


def tool_results(runners: Runners, run: Run) -> dict[str, object]:
    return {
        part.tool_call_id: part.content
        for message in runners.history(run)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }
