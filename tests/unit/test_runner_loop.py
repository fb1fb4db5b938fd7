"""Whole attempts of the runner in-process: a scripted function model, ConfigMaps in memory.

These cover the step loop's bookkeeping quickly (what each step stores, crashes between
"started" and a result, fencing, pauses); tests/runner runs the real console script
against a real API server and the scripted HTTP model server.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentrun import agent, api, checkpoint, history, journal, names, runner

from .test_checkpoint import NAMESPACE, RUN, UID, FakeConfigMaps

Script = Callable[[list[ModelMessage], AgentInfo], ModelResponse]


class Crash(BaseException):
    """Stands for the pod dying: nothing after it runs, nothing catches it."""


class FakeAgentRuns:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.body = {"metadata": {"name": RUN, "namespace": NAMESPACE, "uid": UID}, "spec": spec}

    def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        return copy.deepcopy(self.body)


class Cluster:
    """A run, its checkpoint and the model requests of its attempts."""

    def __init__(self, spec: dict[str, Any], script: Script) -> None:
        self.configmaps = FakeConfigMaps()
        self.agentruns = FakeAgentRuns({"prompt": "Do it.", "model": "openai:m", **spec})
        self.script = script
        self.requests: list[list[ModelMessage]] = []

    def model(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.requests.append(list(messages))
        return self.script(messages, info)

    def attempt(self, number: int) -> int:
        checkpoint.claim(
            self.configmaps, namespace=NAMESPACE, run_name=RUN, run_uid=UID, attempt=number
        )
        return self.pod(number)

    def pod(self, number: int) -> int:
        """One pod of attempt `number`; a Crash counts as exit code 137."""
        settings = runner.Settings(name=RUN, namespace=NAMESPACE, uid=UID, attempt=number)
        attempt = runner._Attempt(settings, core=self.configmaps, custom=self.agentruns)
        try:
            return asyncio.run(attempt.run())
        except Crash:
            return 137
        except checkpoint.Fenced:
            return runner.EXIT_FENCED

    @property
    def record(self) -> api.CheckpointRecord:
        record = checkpoint.read_record(self.configmaps, NAMESPACE, RUN)
        assert record is not None
        return record

    @property
    def history(self) -> list[ModelMessage]:
        data = checkpoint.load_history(self.configmaps, NAMESPACE, self.record).data
        return history.decode(data)


@pytest.fixture(autouse=True)
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture
def cluster_of(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Cluster]:
    def make(script: Script, **spec: Any) -> Cluster:
        cluster = Cluster(spec, script)
        monkeypatch.setattr(agent, "build_model", lambda *a, **k: FunctionModel(cluster.model))
        return cluster

    return make


def turns(*responses: list[Any]) -> Script:
    """Answer the i-th model request (by responses in the history) with responses[i]."""

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        answered = sum(isinstance(m, ModelResponse) for m in messages)
        return ModelResponse(parts=list(responses[answered]))

    return script


def call(tool: str, call_id: str, **args: Any) -> ToolCallPart:
    return ToolCallPart(tool, args, tool_call_id=call_id)


def results_in(messages: list[ModelMessage]) -> dict[str, Any]:
    return {
        part.tool_call_id: part.content
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }


def crash_on_step(monkeypatch: pytest.MonkeyPatch, kind: str, *, skip: int = 0) -> None:
    """Kill the pod before it stores a step of `kind`, once, after `skip` such steps."""
    original = journal.Journal.step
    seen = [0]

    async def step(self: journal.Journal, messages: list[ModelMessage], **kwargs: Any) -> None:
        if isinstance(messages[-1], ModelResponse) == (kind == "model_response"):
            seen[0] += 1
            if seen[0] == skip + 1:
                raise Crash
        await original(self, messages, **kwargs)

    monkeypatch.setattr(journal.Journal, "step", step)


BUILTINS = [{"name": n} for n in ("write_file", "read_file", "list_files")]
SHELL_UNGATED = [{"name": "shell", "requiresApproval": False}]


# -- the happy path -------------------------------------------------------------------------


def test_a_run_stores_every_step_and_succeeds(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(
        turns(
            [call("write_file", "w", path="a.txt", content="hi"), call("list_files", "l")],
            [call("read_file", "r", path="a.txt")],
            [TextPart("It says hi.")],
        ),
        tools=BUILTINS,
    )

    code = cluster.attempt(1)

    record = cluster.record
    assert code == runner.EXIT_OK
    assert (record.outcome, record.output, record.step, record.requests) == (
        api.Outcome.SUCCEEDED,
        "It says hi.",
        5,
        3,
    )
    assert record.messages == len(cluster.history) == 6
    assert results_in(cluster.history) == {
        "w": "Wrote 2 bytes to a.txt.",
        "l": "a.txt  2 bytes",
        "r": "hi",
    }
    assert record.started == []


def test_a_runner_collects_garbage_again_once_its_model_is_built(
    cluster_of: Callable[..., Cluster],
) -> None:
    enabled: list[bool] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        enabled.append(gc.isenabled())
        return ModelResponse(parts=[TextPart("Done.")])

    cluster = cluster_of(answer)
    gc.disable()  # as `runner.main` does before the imports of a start
    try:
        code = cluster.attempt(1)
    finally:
        gc.enable()
        gc.unfreeze()

    assert code == runner.EXIT_OK
    assert enabled == [True]


def test_each_request_carries_the_whole_history(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(
        turns([call("list_files", "l1")], [call("list_files", "l2")], [TextPart("done")]),
        tools=BUILTINS,
        instructions="Be brief.",
    )

    cluster.attempt(1)

    assert [len(r) for r in cluster.requests] == [1, 3, 5]
    firsts = [r[0] for r in cluster.requests]
    assert all(isinstance(m, ModelRequest) and m.instructions == "Be brief." for m in firsts)


# -- crashes --------------------------------------------------------------------------------


def test_a_resumed_run_repeats_no_stored_step(
    cluster_of: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = cluster_of(
        turns([call("list_files", "l1")], [call("list_files", "l2")], [TextPart("done")]),
        tools=BUILTINS,
    )
    crash_on_step(monkeypatch, "model_response", skip=1)
    assert cluster.attempt(1) == 137

    code = cluster.pod(1)

    assert code == runner.EXIT_OK
    # The second response was lost with the pod: only its request is sent again.
    assert [len(request) for request in cluster.requests] == [1, 3, 3, 5]
    prompts = [p for m in cluster.history for p in m.parts if isinstance(p, UserPromptPart)]
    assert len(prompts) == 1


def test_a_resumed_history_that_ends_in_tool_calls_runs_them_without_a_new_prompt(
    cluster_of: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = cluster_of(
        turns([call("write_file", "w", path="a.txt", content="x")], [TextPart("done")]),
        tools=BUILTINS,
    )
    original = journal.Guard.wrap_tool_execute

    async def die_before_the_tool(self: journal.Guard, *args: Any, **kwargs: Any) -> Any:
        raise Crash

    monkeypatch.setattr(journal.Guard, "wrap_tool_execute", die_before_the_tool)
    assert cluster.attempt(1) == 137
    assert isinstance(cluster.history[-1], ModelResponse)
    monkeypatch.setattr(journal.Guard, "wrap_tool_execute", original)

    code = cluster.pod(1)

    assert code == runner.EXIT_OK
    assert len(cluster.requests) == 2
    assert results_in(cluster.history) == {"w": "Wrote 1 bytes to a.txt."}
    assert sum(isinstance(p, UserPromptPart) for m in cluster.history for p in m.parts) == 1


def test_a_crash_mid_tool_never_repeats_a_tool_that_is_not_idempotent(
    cluster_of: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    cluster = cluster_of(
        turns([call("shell", "s", command="echo ran >> counter")], [TextPart("done")]),
        tools=SHELL_UNGATED,
    )
    crash_on_step(monkeypatch, "tool_results")
    assert cluster.attempt(1) == 137
    assert [c.tool_call_id for c in cluster.record.started] == ["s"]

    code = cluster.pod(1)

    assert code == runner.EXIT_OK
    assert (workspace / "counter").read_text() == "ran\n"
    assert results_in(cluster.history) == {"s": journal.OUTCOME_UNKNOWN}
    assert results_in(cluster.requests[-1]) == {"s": journal.OUTCOME_UNKNOWN}
    assert cluster.record.started == []


def test_a_crash_mid_tool_runs_an_idempotent_tool_again(
    cluster_of: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    cluster = cluster_of(
        turns([call("write_file", "w", path="a.txt", content="once")], [TextPart("done")]),
        tools=BUILTINS,
    )
    crash_on_step(monkeypatch, "tool_results")
    assert cluster.attempt(1) == 137

    code = cluster.pod(1)

    assert code == runner.EXIT_OK
    assert (workspace / "a.txt").read_text() == "once"
    assert results_in(cluster.history) == {"w": "Wrote 4 bytes to a.txt."}


def test_a_crash_mid_tool_is_remembered_by_the_next_attempt(
    cluster_of: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    cluster = cluster_of(
        turns([call("shell", "s", command="echo ran >> counter")], [TextPart("done")]),
        tools=SHELL_UNGATED,
    )
    crash_on_step(monkeypatch, "tool_results")
    cluster.attempt(1)

    code = cluster.attempt(2)

    assert code == runner.EXIT_OK
    assert (workspace / "counter").read_text() == "ran\n"
    assert results_in(cluster.history) == {"s": journal.OUTCOME_UNKNOWN}


def test_empty_and_repeated_call_ids_do_not_end_the_run(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(
        turns(
            [call("list_files", "dup"), call("list_files", "dup"), call("list_files", "")],
            [call("list_files", "dup")],
            [TextPart("done")],
        ),
        tools=BUILTINS,
    )

    code = cluster.attempt(1)

    ids = [
        part.tool_call_id
        for message in cluster.history
        if isinstance(message, ModelResponse)
        for part in message.parts
        if isinstance(part, ToolCallPart)
    ]
    assert code == runner.EXIT_OK
    assert len(ids) == len(set(ids)) == 4
    assert set(results_in(cluster.history)) == set(ids)


# -- fencing ----------------------------------------------------------------------------------


def test_an_older_attempt_stops_without_writing_once_a_newer_one_owns_the_run(
    cluster_of: Callable[..., Cluster],
) -> None:
    snapshot: dict[str, Any] = {}

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if sum(isinstance(m, ModelResponse) for m in messages) == 1:
            # The operator gives up on attempt 1 while its model request is in flight.
            checkpoint.claim(
                cluster.configmaps, namespace=NAMESPACE, run_name=RUN, run_uid=UID, attempt=2
            )
            snapshot.update(copy.deepcopy(cluster.configmaps.objects))
        return turns([call("list_files", "l")], [TextPart("done")])(messages, info)

    cluster = cluster_of(script, tools=BUILTINS)

    code = cluster.attempt(1)

    assert code == runner.EXIT_FENCED
    assert cluster.configmaps.objects == snapshot


def test_a_pod_of_an_attempt_that_no_longer_owns_the_run_exits_at_once(
    cluster_of: Callable[..., Cluster],
) -> None:
    cluster = cluster_of(turns([TextPart("done")]))
    checkpoint.claim(cluster.configmaps, namespace=NAMESPACE, run_name=RUN, run_uid=UID, attempt=2)
    before = copy.deepcopy(cluster.configmaps.objects)

    code = cluster.pod(1)

    assert code == runner.EXIT_FENCED
    assert cluster.requests == []
    assert cluster.configmaps.objects == before


# -- approvals ------------------------------------------------------------------------------


def test_a_gated_call_pauses_the_run_and_a_decision_resumes_it(
    cluster_of: Callable[..., Cluster], workspace: Path
) -> None:
    cluster = cluster_of(
        turns(
            [call("shell", "s1", command="echo no > denied"), call("shell", "s2", command="ls")],
            [TextPart("done")],
        ),
        tools=[{"name": "shell"}],
    )

    paused = cluster.attempt(1)

    paused_record = cluster.record
    assert paused == runner.EXIT_OK
    assert paused_record.outcome == api.Outcome.PAUSED
    assert [(p.tool_call_id, json.loads(p.arguments)) for p in paused_record.pending] == [
        ("s1", {"command": "echo no > denied"}),
        ("s2", {"command": "ls"}),
    ]
    cluster.agentruns.body["spec"]["approvals"] = [
        {"toolCallId": "s1", "decision": "Deny", "reason": "Not that file."},
        {"toolCallId": "s2", "decision": "Approve", "arguments": {"command": "echo yes"}},
    ]

    resumed = cluster.attempt(2)

    record = cluster.record
    assert resumed == runner.EXIT_OK
    assert record.outcome == api.Outcome.SUCCEEDED
    assert record.pending == []
    assert not (workspace / "denied").exists()
    sent = results_in(cluster.requests[-1])
    assert sent == {"s1": "Not that file.", "s2": "exit code 0\nyes\n"}


def test_a_paused_run_without_every_decision_fails_saying_which(
    cluster_of: Callable[..., Cluster],
) -> None:
    cluster = cluster_of(
        turns(
            [call("shell", "s1", command="ls"), call("shell", "s2", command="ls")], [TextPart("ok")]
        ),
        tools=[{"name": "shell"}],
    )
    cluster.attempt(1)
    cluster.agentruns.body["spec"]["approvals"] = [{"toolCallId": "s1", "decision": "Approve"}]

    code = cluster.attempt(2)

    failure = cluster.record.failure
    assert code == runner.EXIT_FAILED
    assert failure is not None
    assert (failure.attempt, failure.reason, failure.final) == (2, "DecisionMissing", False)
    assert "s2" in failure.message and "s1" not in failure.message
    assert len(cluster.requests) == 1


def test_a_pod_of_a_paused_attempt_exits_paused_again(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(turns([call("shell", "s1", command="ls")]), tools=[{"name": "shell"}])
    cluster.attempt(1)

    code = cluster.pod(1)

    assert code == runner.EXIT_OK
    assert len(cluster.requests) == 1


# -- failures -------------------------------------------------------------------------------


def test_a_corrupt_segment_fails_the_attempt_naming_it(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(turns([call("list_files", "l")], [TextPart("done")]), tools=BUILTINS)
    cluster.attempt(1)
    segment = names.checkpoint_segment(RUN, 0)
    history_before = copy.deepcopy(cluster.configmaps.objects[segment])
    cluster.configmaps.tamper(segment, lambda cm: cm["binaryData"].update(c00000="AAAA"))

    code = cluster.attempt(2)

    failure = cluster.record.failure
    assert code == runner.EXIT_FAILED
    assert failure is not None
    assert (failure.reason, failure.final) == ("CheckpointCorrupt", True)
    assert segment in failure.message
    assert (
        cluster.configmaps.objects[segment]["binaryData"].keys()
        == history_before["binaryData"].keys()
    )


def test_the_request_limit_ends_the_run_with_its_partial_output(
    cluster_of: Callable[..., Cluster],
) -> None:
    cluster = cluster_of(
        turns([TextPart("Partial."), call("list_files", "l")], [TextPart("never")]),
        tools=BUILTINS,
        limits={"maxRequests": 1},
    )

    code = cluster.attempt(1)

    record = cluster.record
    assert code == runner.EXIT_FAILED
    assert record.failure is not None
    assert (record.failure.reason, record.failure.final) == ("BudgetExceeded", True)
    assert record.output == "Partial."
    assert record.step == 2


def test_the_request_limit_counts_across_attempts(
    cluster_of: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = cluster_of(
        turns([call("list_files", "a")], [call("list_files", "b")], [TextPart("done")]),
        tools=BUILTINS,
        limits={"maxRequests": 2},
    )
    crash_on_step(monkeypatch, "tool_results")
    assert cluster.attempt(1) == 137

    code = cluster.attempt(2)

    assert code == runner.EXIT_FAILED
    assert cluster.record.failure is not None
    assert cluster.record.failure.reason == "BudgetExceeded"
    assert len(cluster.requests) == 2


def test_a_run_out_of_time_fails_with_timeout(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(turns([TextPart("done")]), limits={"timeoutSeconds": 5})
    checkpoint.claim(cluster.configmaps, namespace=NAMESPACE, run_name=RUN, run_uid=UID, attempt=1)
    writer = checkpoint.Writer(
        cluster.configmaps,
        namespace=NAMESPACE,
        run_name=RUN,
        run_uid=UID,
        attempt=1,
        index=checkpoint.read_index(cluster.configmaps, NAMESPACE, RUN),  # type: ignore[arg-type]
        history=None,
    )
    writer.commit(writer.record.model_copy(update={"elapsed_seconds": 6.0}))

    code = cluster.pod(1)

    assert code == runner.EXIT_FAILED
    assert cluster.record.failure is not None
    assert (cluster.record.failure.reason, cluster.record.failure.final) == ("Timeout", True)
    assert cluster.requests == []


def test_an_invalid_spec_fails_for_good(cluster_of: Callable[..., Cluster]) -> None:
    cluster = cluster_of(turns([TextPart("done")]))
    cluster.agentruns.body["spec"]["tools"] = [{"name": "rm_rf"}]

    code = cluster.attempt(1)

    assert code == runner.EXIT_FAILED
    assert cluster.record.failure is not None
    assert (cluster.record.failure.reason, cluster.record.failure.final) == ("InvalidSpec", True)


def test_an_older_attempt_fenced_as_its_tools_start_stops_with_exit_3(
    cluster_of: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    cluster = cluster_of(
        turns(
            [
                call("write_file", "a", path="a", content="x"),
                call("write_file", "b", path="b", content="y"),
            ],
            [TextPart("done")],
        ),
        tools=BUILTINS,
    )
    original = journal.Journal.started

    async def claimed_first(self: journal.Journal, call: ToolCallPart) -> None:
        checkpoint.claim(
            cluster.configmaps, namespace=NAMESPACE, run_name=RUN, run_uid=UID, attempt=2
        )
        await original(self, call)

    monkeypatch.setattr(journal.Journal, "started", claimed_first)

    code = cluster.attempt(1)

    assert code == runner.EXIT_FENCED
    assert not (workspace / "a").exists() and not (workspace / "b").exists()


# -- a crash at every point of a run ----------------------------------------------------------

SIX_STEPS = turns(
    [call("shell", "sh", command="echo ran >> counter")],
    [call("write_file", "wr", path="note.txt", content="once")],
    [call("list_files", "ls")],
    [TextPart("done")],
)
CRASH_POINTS = [f"before step {n}" for n in range(1, 8)] + [
    "after shell started",
    "after write_file started",
]


def crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Kill the first pod at `point`: before it stores step n, or once a tool is recorded as
    started (before the tool runs)."""
    if point.startswith("before step"):
        number = int(point.split()[-1])
        original_step = journal.Journal.step

        async def step(self: journal.Journal, messages: list[ModelMessage], **kwargs: Any) -> None:
            if self.record.step + 1 == number:
                monkeypatch.setattr(journal.Journal, "step", original_step)
                raise Crash
            await original_step(self, messages, **kwargs)

        monkeypatch.setattr(journal.Journal, "step", step)
        return
    tool = point.split()[1]
    original_started = journal.Journal.started

    async def started(self: journal.Journal, call: ToolCallPart) -> None:
        await original_started(self, call)
        if call.tool_name == tool:
            monkeypatch.setattr(journal.Journal, "started", original_started)
            raise Crash

    monkeypatch.setattr(journal.Journal, "started", started)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_run_killed_at_any_point_succeeds_with_each_call_once(
    cluster_of: Callable[..., Cluster],
    monkeypatch: pytest.MonkeyPatch,
    workspace: Path,
    point: str,
) -> None:
    cluster = cluster_of(SIX_STEPS, tools=[*BUILTINS, *SHELL_UNGATED])
    crash_at(monkeypatch, point)

    first = cluster.attempt(1)
    second = cluster.pod(1)

    assert (first, second) == (137, runner.EXIT_OK)
    assert cluster.record.outcome == api.Outcome.SUCCEEDED
    calls = [
        part.tool_call_id
        for message in cluster.history
        for part in message.parts
        if isinstance(part, ToolCallPart)
    ]
    returns = [
        part.tool_call_id
        for message in cluster.history
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]
    assert calls == returns == ["sh", "wr", "ls"]
    ran = (
        (workspace / "counter").read_text().count("ran") if (workspace / "counter").exists() else 0
    )
    shell_result = results_in(cluster.history)["sh"]
    if point in ("before step 2", "after shell started"):
        assert shell_result == journal.OUTCOME_UNKNOWN
        assert ran <= 1
    else:
        assert shell_result == "exit code 0\n"
        assert ran == 1
    assert (workspace / "note.txt").read_text() == "once"


def test_an_unreachable_mcp_server_fails_the_attempt_naming_it(
    cluster_of: Callable[..., Cluster],
) -> None:
    # Port 9 (discard) is closed here: the MCP client's connection is refused at once.
    cluster = cluster_of(
        turns([TextPart("never")]),
        mcpServers=[{"name": "ghost", "url": "http://127.0.0.1:9/mcp"}],
    )

    code = cluster.attempt(1)

    failure = cluster.record.failure
    assert code == runner.EXIT_FAILED
    assert failure is not None
    assert (failure.reason, failure.final) == ("McpServerUnreachable", False)
    assert failure.message.startswith("MCP server ghost could not be reached: ")
    assert cluster.requests == []
