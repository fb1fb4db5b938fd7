"""`kubectl agentrun history`: pydantic-ai's message JSON rendered as a readable transcript.

The histories are made by pydantic-ai itself (a scripted FunctionModel, or its message
classes), dumped with ModelMessagesTypeAdapter exactly as the runner checkpoints them,
and read back as plain JSON as the plugin does.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_ai import (
    Agent,
    DeferredToolRequests,
    DeferredToolResults,
    ModelMessagesTypeAdapter,
    ToolDenied,
)
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentrun.plugin import _transcript


def as_checkpointed(messages: list[ModelMessage]) -> list[dict[str, Any]]:
    """Messages as the plugin reads them: pydantic-ai's JSON, parsed as plain dicts."""
    loaded: list[dict[str, Any]] = json.loads(ModelMessagesTypeAdapter.dump_json(messages))
    return loaded


def paused_then_decided_history() -> list[dict[str, Any]]:
    """A run that calls list_files and a gated shell, is denied the shell, and answers."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(
                parts=[
                    ThinkingPart(content="Look first."),
                    TextPart("Let me check."),
                    ToolCallPart("list_files", {}, tool_call_id="call_0_0"),
                    ToolCallPart("shell", '{"command": "rm -rf build"}', tool_call_id="call_0_1"),
                ]
            )
        return ModelResponse(parts=[TextPart("I could not clean up:\nshell was denied.")])

    agent = Agent(
        FunctionModel(model),
        system_prompt="You are a careful agent.",
        instructions="Be brief.",
        output_type=[str, DeferredToolRequests],
    )

    @agent.tool_plain
    def list_files() -> list[str]:
        return ["build", "src"]

    @agent.tool_plain(requires_approval=True)
    def shell(command: str) -> str:
        raise AssertionError("a denied call never runs")

    paused = agent.run_sync("Clean up the build.")
    denied = DeferredToolResults(approvals={"call_0_1": ToolDenied("Not on Fridays.")})
    finished = agent.run_sync(message_history=paused.all_messages(), deferred_tool_results=denied)
    return as_checkpointed(finished.all_messages())


def test_a_paused_and_denied_run_reads_as_a_conversation_in_order() -> None:
    messages = paused_then_decided_history()

    text = _transcript.to_text(_transcript.render(messages))

    assert text == (
        "instructions\n"
        "  Be brief.\n"
        "\n"
        "system\n"
        "  You are a careful agent.\n"
        "\n"
        "user\n"
        "  Clean up the build.\n"
        "\n"
        "assistant\n"
        "  (thinking) Look first.\n"
        "  Let me check.\n"
        "  -> list_files (call_0_0) {}\n"
        '  -> shell (call_0_1) {"command": "rm -rf build"}\n'
        "\n"
        "tool list_files (call_0_0)\n"
        '  ["build", "src"]\n'
        "\n"
        "tool shell (call_0_1): denied\n"
        "  Not on Fridays.\n"
        "\n"
        "assistant\n"
        "  I could not clean up:\n"
        "  shell was denied.\n"
    )


def test_each_entry_says_who_speaks() -> None:
    messages = paused_then_decided_history()

    entries = _transcript.render(messages)

    assert [e.who for e in entries] == [
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]


def tool_result_history(content: str) -> list[dict[str, Any]]:
    return as_checkpointed(
        [
            ModelRequest(parts=[UserPromptPart("Read it.")]),
            ModelResponse(parts=[ToolCallPart("read_file", {"path": "a"}, tool_call_id="c1")]),
            ModelRequest(parts=[ToolReturnPart("read_file", content, tool_call_id="c1")]),
        ]
    )


def test_a_long_tool_result_is_cut_with_a_note_of_what_was_left_out() -> None:
    lines = [f"line {n:03}" for n in range(100)]
    messages = tool_result_history("\n".join(lines))

    result = _transcript.render(messages)[-1]

    assert result.title == "tool read_file (c1)"
    assert list(result.lines[:-1]) == lines[: _transcript.MAX_LINES]
    assert result.lines[-1] == "[cut: 560 more characters, 70 more lines; --full shows all]"


def test_a_single_huge_line_is_cut_to_the_character_bound() -> None:
    messages = tool_result_history("x" * 5000)

    result = _transcript.render(messages)[-1]

    assert result.lines == (
        "x" * _transcript.MAX_CHARS,
        "[cut: 3000 more characters; --full shows all]",
    )


def test_full_keeps_a_long_tool_result_whole() -> None:
    content = "\n".join(f"line {n}" for n in range(100))
    messages = tool_result_history(content)

    result = _transcript.render(messages, full=True)[-1]

    assert "\n".join(result.lines) == content


def test_instructions_are_shown_once_and_again_only_when_they_change() -> None:
    messages = as_checkpointed(
        [
            ModelRequest(parts=[UserPromptPart("one")], instructions="Be brief."),
            ModelResponse(parts=[TextPart("1")]),
            ModelRequest(parts=[UserPromptPart("two")], instructions="Be brief."),
            ModelResponse(parts=[TextPart("2")]),
            ModelRequest(parts=[UserPromptPart("three")], instructions="Be thorough."),
        ]
    )

    titles = [e.title for e in _transcript.render(messages)]

    assert titles == [
        "instructions",
        "user",
        "assistant",
        "user",
        "assistant",
        "instructions",
        "user",
    ]


def test_structured_tool_results_are_shown_as_json() -> None:
    messages = as_checkpointed(
        [ModelRequest(parts=[ToolReturnPart("stat", {"size": 3, "name": "é"}, tool_call_id="c")])]
    )

    result = _transcript.render(messages)[0]

    assert result.lines == ('{"size": 3, "name": "é"}',)


def test_a_part_of_an_unknown_kind_is_named_rather_than_dropped() -> None:
    messages: list[dict[str, Any]] = [
        {
            "kind": "response",
            "parts": [{"part_kind": "hologram"}, {"part_kind": "text", "content": "hi"}],
        },
        {"kind": "request", "parts": [{"part_kind": "telepathy"}]},
    ]

    entries = _transcript.render(messages)

    assert entries[0].lines == ("[hologram part]", "hi")
    assert entries[1].title == "[telepathy part]"


def test_an_empty_history_renders_as_nothing() -> None:
    assert _transcript.to_text(_transcript.render([])) == ""


def test_a_call_with_invalid_arguments_shows_the_retry_with_each_error() -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("read_file", {"nope": 1}, tool_call_id="c")])
        return ModelResponse(parts=[TextPart("Sorry.")])

    agent = Agent(FunctionModel(model))

    @agent.tool_plain
    def read_file(path: str) -> str:
        return path

    messages = as_checkpointed(agent.run_sync("Read.").all_messages())

    retry = _transcript.render(messages)[2]

    assert retry.title == "tool read_file (c): retry"
    assert retry.lines == ("path: Field required", "nope: Extra inputs are not permitted")
