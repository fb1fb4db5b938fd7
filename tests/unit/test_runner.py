"""The runner's pure parts: settings, model routing, decisions, limits, call ids, history bytes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from pydantic_ai import (
    DeferredToolRequests,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolApproved,
    ToolCallPart,
    ToolDenied,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.openai import OpenAIChatModel

from agentrun import agent, api, history, journal, runner

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def spec(**fields: Any) -> api.AgentRunSpec:
    return api.AgentRunSpec.model_validate({"prompt": "hi", "model": "openai:gpt-4o", **fields})


# -- settings -------------------------------------------------------------------------------


def test_settings_take_the_api_key_out_of_the_environment() -> None:
    environ = {
        "AGENTRUN_NAME": "demo",
        "AGENTRUN_NAMESPACE": "team",
        "AGENTRUN_UID": "u1",
        "AGENTRUN_ATTEMPT": "2",
        "AGENTRUN_API_KEY": "sk-secret",
    }

    settings = runner.Settings.from_environ(environ)

    assert (settings.run, settings.attempt, settings.api_key) == ("team/demo", 2, "sk-secret")
    assert "AGENTRUN_API_KEY" not in environ
    assert "sk-secret" not in repr(settings)


def test_settings_name_what_is_missing() -> None:
    with pytest.raises(SystemExit, match="AGENTRUN_UID, AGENTRUN_ATTEMPT"):
        runner.Settings.from_environ({"AGENTRUN_NAME": "demo", "AGENTRUN_NAMESPACE": "team"})


# -- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["openai:served", "anthropic:served", "vllm:served"])
def test_a_base_url_always_means_chat_completions(model: str) -> None:
    built = agent.build_model(
        spec(model=model, provider={"baseURL": "http://models.local/v1"}),
        api_key=None,
        default_base_url=None,
    )

    assert isinstance(built, OpenAIChatModel)
    assert built.model_name == "served"
    assert built.base_url == "http://models.local/v1/"


def test_the_operators_default_endpoint_serves_runs_that_name_none() -> None:
    built = agent.build_model(spec(), api_key=None, default_base_url="http://default.local/v1")

    assert isinstance(built, OpenAIChatModel)
    assert built.base_url == "http://default.local/v1/"


def test_openai_without_a_base_url_speaks_chat_completions_to_openai() -> None:
    built = agent.build_model(spec(), api_key="sk-test", default_base_url=None)

    assert isinstance(built, OpenAIChatModel)
    assert built.base_url.startswith("https://api.openai.com")


def test_openai_without_a_key_or_endpoint_is_a_configuration_error() -> None:
    with pytest.raises(agent.ModelConfigError, match="apiKeySecretRef"):
        agent.build_model(spec(), api_key=None, default_base_url=None)


def test_an_unknown_provider_is_a_configuration_error() -> None:
    with pytest.raises(agent.ModelConfigError, match="baseURL"):
        agent.build_model(spec(model="nosuchprovider:x"), api_key="k", default_base_url=None)


def test_limits_are_always_passed_on() -> None:
    default = agent.usage_limits(spec())
    bounded = agent.usage_limits(spec(limits={"maxRequests": 7, "maxTotalTokens": 1000}))

    assert default.request_limit == 50
    assert (bounded.request_limit, bounded.total_tokens_limit) == (7, 1000)


def test_usage_carries_over_from_the_record() -> None:
    record = api.CheckpointRecord(
        attempt=2, requests=4, usage=api.Usage(input_tokens=100, output_tokens=20, total_tokens=120)
    )

    usage = agent.run_usage(record)

    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (4, 100, 20)


# -- decisions ------------------------------------------------------------------------------


def pending(call: str, *, requested: datetime = NOW) -> api.PendingCall:
    return api.PendingCall(
        tool_call_id=call, tool_name="shell", arguments="{}", requested_at=requested.isoformat()
    )


def test_decisions_become_deferred_results() -> None:
    run = spec(
        approvals=[
            {"toolCallId": "a", "decision": "Approve"},
            {"toolCallId": "b", "decision": "Deny", "reason": "Too risky."},
            {"toolCallId": "c", "decision": "Approve", "arguments": {"command": "ls"}},
        ]
    )

    decided = agent.decisions(run, [pending("a"), pending("b"), pending("c")], now=NOW)

    approvals = decided.results.approvals
    assert approvals["a"] is True
    assert approvals["b"] == ToolDenied("Too risky.")
    assert approvals["c"] == ToolApproved(override_args={"command": "ls"})
    assert decided.undecided == []


def test_a_call_without_a_decision_is_undecided() -> None:
    decided = agent.decisions(spec(), [pending("a")], now=NOW)

    assert decided.undecided == ["a"]


def test_a_call_past_the_approval_timeout_is_denied_when_the_policy_says_so() -> None:
    run = spec(approvalPolicy={"timeoutSeconds": 60, "onTimeout": "Deny"})

    late = agent.decisions(run, [pending("a", requested=NOW - timedelta(minutes=5))], now=NOW)
    early = agent.decisions(run, [pending("a", requested=NOW - timedelta(seconds=5))], now=NOW)

    assert isinstance(late.results.approvals["a"], ToolDenied)
    assert early.undecided == ["a"]


def test_a_call_past_the_approval_timeout_stays_undecided_when_the_policy_fails() -> None:
    run = spec(approvalPolicy={"timeoutSeconds": 60, "onTimeout": "Fail"})

    decided = agent.decisions(run, [pending("a", requested=NOW - timedelta(hours=1))], now=NOW)

    assert decided.undecided == ["a"]


# -- tool call ids --------------------------------------------------------------------------


def test_empty_and_repeated_tool_call_ids_are_made_unique() -> None:
    class Context:
        messages: ClassVar[list[ModelMessage]] = [
            ModelRequest(parts=[UserPromptPart("hi")]),
            ModelResponse(parts=[ToolCallPart("t", {}, tool_call_id="call_0")]),
            ModelRequest(parts=[ToolReturnPart("t", "ok", tool_call_id="call_0")]),
        ]

    response = ModelResponse(
        parts=[
            ToolCallPart("t", {}, tool_call_id="call_0"),
            ToolCallPart("t", {}, tool_call_id=""),
            ToolCallPart("t", {}, tool_call_id="x"),
            ToolCallPart("t", {}, tool_call_id="x"),
        ]
    )
    guard = journal.Guard(journal=None, interrupted={})  # type: ignore[arg-type]

    asyncio.run(guard.after_model_request(Context(), request_context=None, response=response))  # type: ignore[arg-type]

    ids = [part.tool_call_id for part in response.parts if isinstance(part, ToolCallPart)]
    assert ids == ["call_0~2", "call~2", "x", "x~2"]


# -- history bytes --------------------------------------------------------------------------


def test_a_message_that_no_longer_validates_is_named_by_its_place() -> None:
    good = history.encode([ModelRequest(parts=[UserPromptPart("hi")])])
    bad = b'{"kind": "response", "parts": [{"part_kind": "no-such-part"}]}\n'

    with pytest.raises(history.HistoryInvalid) as raised:
        history.decode(good + bad)

    assert (raised.value.line, raised.value.offset) == (1, len(good))


def test_the_partial_output_is_the_last_text_the_model_gave() -> None:
    messages = [
        ModelResponse(parts=[TextPart("first")]),
        ModelResponse(parts=[ToolCallPart("t", {}, tool_call_id="c")]),
    ]

    assert journal.last_text(messages) == "first"
    assert journal.last_text([]) is None


def test_the_record_keeps_pending_arguments_small_however_many_calls_wait() -> None:
    calls = [
        ToolCallPart(
            "write_file", {"path": f"f{n}", "content": "x" * 100_000}, tool_call_id=f"c{n}"
        )
        for n in range(100)
    ]

    pending = journal.pending_calls(DeferredToolRequests(approvals=calls))

    assert [p.tool_call_id for p in pending] == [f"c{n}" for n in range(100)]
    assert sum(len(p.arguments) for p in pending) < journal.MAX_RECORD_ALL_ARGUMENTS + 100 * 100
    assert all(p.arguments.endswith("the whole is in the history.]") for p in pending)
