"""The scripted model server, driven by the real openai client and by pydantic-ai."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall as FunctionToolCall
from openai.types.chat import ChatCompletionMessageParam
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from agentrun import modelserver
from agentrun.modelserver import ScriptedModelServer

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


def client_for(server: ScriptedModelServer, *, api_key: str = "test") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0)


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_pydantic_ai_agent_runs_a_tool_call_then_answers(server: ScriptedModelServer) -> None:
    server.set_script(
        "agent-tool",
        [
            {"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
            {"text": "2 + 3 is 5.", "usage": {"prompt_tokens": 30, "completion_tokens": 6}},
        ],
    )
    provider = OpenAIProvider(base_url=server.base_url, api_key="test")
    agent = Agent(OpenAIChatModel("agent-tool", provider=provider), tools=[add])

    result = agent.run_sync("What is 2 + 3?")

    assert result.output == "2 + 3 is 5."
    # The tool call's usage is the default: ("add" + its 16-character arguments) // 4 + 1.
    assert (result.usage.requests, result.usage.output_tokens) == (2, 5 + 6)
    second = server.requests("agent-tool")[1]
    tool_message = second["body"]["messages"][-1]
    assert tool_message == {"role": "tool", "tool_call_id": "call_0_0", "content": "5"}
    assert [r["turn"] for r in server.requests("agent-tool")] == [0, 1]


def test_pydantic_ai_agent_streams_a_tool_call_then_the_answer(server: ScriptedModelServer) -> None:
    server.set_script(
        "agent-stream",
        [
            {"tool_calls": [{"id": "sum-1", "name": "add", "arguments": '{"a": 1, "b": 1}'}]},
            {"text": "It is 2."},
        ],
    )
    provider = OpenAIProvider(base_url=server.base_url, api_key="test")
    agent = Agent(OpenAIChatModel("agent-stream", provider=provider), tools=[add])

    async def run() -> str:
        async with agent.run_stream("What is 1 + 1?") as stream:
            return await stream.get_output()

    output = asyncio.run(run())

    assert output == "It is 2."
    bodies = [r["body"] for r in server.requests("agent-stream")]
    assert all(body["stream"] for body in bodies)
    assert bodies[1]["messages"][-1]["tool_call_id"] == "sum-1"


def test_raw_client_streams_text_with_usage(server: ScriptedModelServer) -> None:
    server.set_script("stream", [{"text": "Streamed."}])

    chunks = list(
        client_for(server).chat.completions.create(
            model="stream",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streamed."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len("Streamed.") // 4 + 1


def test_429_twice_then_the_answer(server: ScriptedModelServer) -> None:
    server.set_script("flaky", [{"text": "Finally.", "errors": [429, 429]}])
    client = client_for(server)

    failures = []
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="flaky", messages=QUESTION)
        failures.append(caught.value)
    answer = client.chat.completions.create(model="flaky", messages=QUESTION)

    assert [f.status_code for f in failures] == [429, 429]
    assert failures[0].response.headers["retry-after"] == "0"
    assert failures[0].code == "rate_limit_exceeded"
    assert answer.choices[0].message.content == "Finally."
    assert [r["status"] for r in server.requests("flaky")] == [429, 429, 200]


def test_the_same_history_gets_the_same_answer(server: ScriptedModelServer) -> None:
    server.set_script("resume", [{"text": "First."}, {"text": "Second."}])
    client = client_for(server)
    history: list[ChatCompletionMessageParam] = [
        *QUESTION,
        {"role": "assistant", "content": "First."},
        {"role": "user", "content": "And then?"},
    ]

    answers = [client.chat.completions.create(model="resume", messages=history) for _ in range(2)]
    opening = client.chat.completions.create(model="resume", messages=QUESTION)

    assert [a.choices[0].message.content for a in answers] == ["Second.", "Second."]
    assert answers[0].model_dump(exclude={"created"}) == answers[1].model_dump(exclude={"created"})
    assert opening.choices[0].message.content == "First."
    assert [r["turn"] for r in server.requests("resume")] == [1, 1, 0]


def test_tool_call_ids_default_by_position_and_keep_scripted_ones(
    server: ScriptedModelServer,
) -> None:
    server.set_script(
        "ids",
        [
            {
                "text": "Calling.",
                "tool_calls": [
                    {"name": "add", "arguments": {"a": 1, "b": 2}},
                    {"id": "", "name": "add", "arguments": "{not json"},
                    {"id": "call_0_0", "name": "add"},
                ],
            }
        ],
    )

    answer = client_for(server).chat.completions.create(model="ids", messages=QUESTION)

    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Calling."
    calls = [c for c in choice.message.tool_calls or [] if isinstance(c, FunctionToolCall)]
    assert [c.id for c in calls] == ["call_0_0", "", "call_0_0"]
    assert [c.function.arguments for c in calls] == ['{"a": 1, "b": 2}', "{not json", "{}"]


def test_error_forever_never_answers(server: ScriptedModelServer) -> None:
    server.set_script("down", [{"error_forever": 503}])
    client = client_for(server)

    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="down", messages=QUESTION)

        assert caught.value.status_code == 503
        assert caught.value.type == "server_error"
    assert [r["status"] for r in server.requests("down")] == [503, 503, 503]


def test_a_request_past_the_script_is_refused_as_exhausted(server: ScriptedModelServer) -> None:
    server.set_script("short", [{"text": "Only answer."}])
    history: list[ChatCompletionMessageParam] = [
        *QUESTION,
        {"role": "assistant", "content": "Only answer."},
        {"role": "user", "content": "More?"},
    ]

    with pytest.raises(openai.BadRequestError) as caught:
        client_for(server).chat.completions.create(model="short", messages=history)

    assert "exhausted" in caught.value.message
    assert server.requests("short")[-1] | {"time": None, "body": None} == {
        "time": None,
        "model": "short",
        "turn": 1,
        "status": 400,
        "api_key_sent": True,
        "api_key_sha256": hashlib.sha256(b"test").hexdigest(),
        "body": None,
    }


def test_an_unknown_model_is_not_found(server: ScriptedModelServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client_for(server).chat.completions.create(model="nobody", messages=QUESTION)

    assert caught.value.code == "model_not_found"


def test_two_keys_side_by_side_keep_their_own_turns(server: ScriptedModelServer) -> None:
    server.set_script("left", [{"text": "L0"}, {"text": "L1"}])
    server.set_script("right", [{"text": "R0"}, {"text": "R1"}])
    client = client_for(server)

    def ask(key: str, history: list[ChatCompletionMessageParam]) -> str | None:
        answer = client.chat.completions.create(model=key, messages=history)
        return answer.choices[0].message.content

    left0 = ask("left", QUESTION)
    right0 = ask("right", QUESTION)
    left1 = ask("left", [*QUESTION, {"role": "assistant", "content": left0}])
    right1 = ask("right", [*QUESTION, {"role": "assistant", "content": right0}])
    listed = {model.id for model in client.models.list()}

    assert [left0, left1, right0, right1] == ["L0", "L1", "R0", "R1"]
    assert {"left", "right"} <= listed
    assert [r["turn"] for r in server.requests("left")] == [0, 1]
    assert [r["turn"] for r in server.requests("right")] == [0, 1]


def test_the_api_key_is_never_recorded(
    server: ScriptedModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_script("secret", [{"text": "Shh."}])
    api_key = "sk-very-secret-0123456789"
    caplog.set_level("DEBUG", logger="agentrun.modelserver")

    client_for(server, api_key=api_key).chat.completions.create(model="secret", messages=QUESTION)

    recorded = server.requests("secret")
    assert recorded[0]["api_key_sent"] is True
    assert api_key not in json.dumps(recorded)
    with httpx2.Client(base_url=server.base_url.removesuffix("/v1")) as http:
        assert api_key not in http.get("/_requests").text
    assert api_key not in caplog.text
    assert "turn 0" in caplog.text


def test_scripts_and_records_are_managed_over_http(server: ScriptedModelServer) -> None:
    root = server.base_url.removesuffix("/v1")

    with httpx2.Client(base_url=root) as http:
        put = http.put("/_scripts/team/model-a", json=[{"text": "Over HTTP."}])
        typo = http.put("/_scripts/typo", json=[{"txt": "Oops."}])
        answer = client_for(server).chat.completions.create(model="team/model-a", messages=QUESTION)
        recorded = http.get("/_requests", params={"model": "team/model-a"}).json()
        deleted = http.delete("/_scripts/team/model-a")
        cleared = http.delete("/_requests")
        after = http.get("/_requests").json()

    assert put.json() == {"model": "team/model-a", "turns": 1}
    assert typo.status_code == 400
    assert "unknown keys ['txt']" in typo.json()["error"]["message"]
    assert answer.choices[0].message.content == "Over HTTP."
    assert [r["status"] for r in recorded] == [200]
    assert (deleted.status_code, cleared.status_code, after) == (204, 204, [])
    assert "team/model-a" not in server.book.script_keys()


def test_replacing_a_script_resets_its_errors(server: ScriptedModelServer) -> None:
    turns: list[dict[str, Any]] = [{"text": "Up.", "errors": [500]}]
    server.set_script("again", turns)
    client = client_for(server)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="again", messages=QUESTION)

    server.set_script("again", turns)

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="again", messages=QUESTION)
    assert client.chat.completions.create(model="again", messages=QUESTION).choices


def test_a_delayed_turn_outlasts_a_short_client_timeout(server: ScriptedModelServer) -> None:
    server.set_script("slow", [{"text": "Late.", "delay_seconds": 0.5}])
    client = openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0, timeout=0.1)

    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="slow", messages=QUESTION)

    assert server.requests("slow")[0]["status"] == 200


def test_default_usage_is_derived_from_the_characters(server: ScriptedModelServer) -> None:
    server.set_script("count", [{"text": "12345678"}])

    answer = client_for(server).chat.completions.create(
        model="count", messages=[{"role": "user", "content": "x" * 40}]
    )

    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (11, 3)
    assert answer.usage.total_tokens == 14


@pytest.mark.parametrize(
    ("turn", "fault"),
    [
        ({"text": "Hi.", "eror_forever": 500}, "unknown keys"),
        ({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}, "needs `text`"),
        ({"text": "Hi.", "errors": [200]}, "not an HTTP error status"),
        ({"tool_calls": [{"arguments": {}}]}, "call 0 must be a mapping"),
        ({"text": "Hi.", "delay_seconds": -1}, "delay_seconds"),
    ],
)
def test_a_faulty_turn_is_refused_with_where_and_why(turn: dict[str, Any], fault: str) -> None:
    with pytest.raises(modelserver.ScriptError) as caught:
        modelserver.parse_script([{"text": "fine"}, turn], key="k")

    assert "'k' turn 1" in str(caught.value)
    assert fault in str(caught.value)


def test_the_documented_example_script_loads(tmp_path: Path) -> None:
    assert modelserver.__doc__ is not None
    example = modelserver.__doc__.split("turns::\n\n", 1)[1].split("\n\n", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(textwrap.dedent(example), encoding="utf-8")

    scripts = modelserver.load_scripts(path)

    weather, broken = scripts["weather"], scripts["broken"]
    assert weather[0].tool_calls[0].id == "call_0_0"
    assert weather[0].errors == (429, 500)
    assert (weather[1].usage, weather[1].delay_seconds) == ((120, 5), 0.5)
    assert broken[0].error_forever == 503


def test_the_command_announces_its_port_and_serves_a_script_file(tmp_path: Path) -> None:
    script = tmp_path / "script.yaml"
    script.write_text("demo:\n  - text: From the file.\n", encoding="utf-8")
    port_file = tmp_path / "port"
    command = [sys.executable, "-m", "agentrun.modelserver", "--port", "0"]
    command += ["--script", str(script), "--port-file", str(port_file)]

    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            deadline = time.monotonic() + 10
            while not port_file.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            port = int(port_file.read_text(encoding="utf-8"))
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-hidden")
            answer = client.chat.completions.create(model="demo", messages=QUESTION)
        finally:
            p.terminate()
            _, log = p.communicate(timeout=10)

    assert line == f"agentrun-model-server listening on http://127.0.0.1:{port}/v1"
    assert answer.choices[0].message.content == "From the file."
    assert "Answered 200 to model 'demo' at turn 0." in log
    assert "sk-hidden" not in log
