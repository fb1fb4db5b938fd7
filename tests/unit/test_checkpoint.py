"""The checkpoint's records, segments and fencing, over an in-memory stand-in of ConfigMaps.

`FakeConfigMaps` answers the few CoreV1Api calls `checkpoint` makes, with the API server's
resourceVersion preconditions, merge-patch rules and 1 MiB limit, so that the layout and
fencing logic can be tested quickly. tests/runner checks the same against a real server.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import types
from collections.abc import Sequence
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from pydantic_ai import (
    Agent,
    DeferredToolRequests,
    DeferredToolResults,
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolDenied,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agentrun import api, checkpoint, history, names, segments

NAMESPACE = "team"
RUN = "demo"
UID = "0b6c3f5e-uid"
CONFIGMAP_LIMIT = 1024 * 1024


class FakeConfigMaps:
    """ConfigMaps in memory, behind the calls `checkpoint` makes of a CoreV1Api."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 1000
        self.writes: list[tuple[str, str, int]] = []
        """(verb, name, request bytes) of every write that succeeded."""
        self.bodies: list[dict[str, Any]] = []
        """The request body of every write that succeeded."""

    # -- the CoreV1Api surface -------------------------------------------------------

    def read_namespaced_config_map(self, name: str, namespace: str, **_: Any) -> Any:
        return self._response(self._existing(name))

    def create_namespaced_config_map(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        name = body["metadata"]["name"]
        if name in self.objects:
            raise _error(409, "AlreadyExists", f'configmaps "{name}" already exists')
        stored = copy.deepcopy(body)
        self._store(name, stored, verb="create", body=body)
        return self._response(stored)

    def patch_namespaced_config_map(
        self, name: str, namespace: str, body: dict[str, Any], **options: Any
    ) -> Any:
        assert options.get("_content_type") == "application/merge-patch+json"
        current = self._existing(name)
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified")
        patched = _merge(copy.deepcopy(current), body)
        self._store(name, patched, verb="patch", body=body)
        return self._response(patched)

    # -- helpers for tests -------------------------------------------------------------

    def data_size(self, name: str) -> int:
        obj = self.objects[name]
        text = sum(len(v.encode()) for v in (obj.get("data") or {}).values())
        binary = sum(len(base64.b64decode(v)) for v in (obj.get("binaryData") or {}).values())
        return text + binary

    def tamper(self, name: str, change: Any) -> None:
        change(self.objects[name])
        self.version += 1
        self.objects[name]["metadata"]["resourceVersion"] = str(self.version)

    def _existing(self, name: str) -> dict[str, Any]:
        if name not in self.objects:
            raise _error(404, "NotFound", f'configmaps "{name}" not found')
        return self.objects[name]

    def _store(self, name: str, obj: dict[str, Any], *, verb: str, body: dict[str, Any]) -> None:
        self.objects[name] = obj
        if self.data_size(name) > CONFIGMAP_LIMIT:
            del self.objects[name]
            raise _error(422, "Invalid", "Too long: may not be more than 1048576 bytes")
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.writes.append((verb, name, len(json.dumps(body, separators=(",", ":")))))
        self.bodies.append(body)

    @staticmethod
    def _response(obj: dict[str, Any]) -> Any:
        return types.SimpleNamespace(data=json.dumps(obj).encode())


def _error(status: int, reason: str, message: str) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"kind": "Status", "reason": reason, "message": message})
    return error


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def fake() -> FakeConfigMaps:
    return FakeConfigMaps()


def claim(fake: FakeConfigMaps, attempt: int) -> api.CheckpointRecord:
    return checkpoint.claim(fake, namespace=NAMESPACE, run_name=RUN, run_uid=UID, attempt=attempt)


def open_writer(fake: FakeConfigMaps, attempt: int) -> checkpoint.Writer:
    index = checkpoint.read_index(fake, NAMESPACE, RUN)
    assert index is not None
    loaded = checkpoint.load_history(fake, NAMESPACE, index.record)
    return checkpoint.Writer(
        fake,
        namespace=NAMESPACE,
        run_name=RUN,
        run_uid=UID,
        attempt=attempt,
        index=index,
        history=loaded,
    )


def save(writer: checkpoint.Writer, messages: Sequence[ModelMessage]) -> None:
    """Store messages one step each, as the runner does."""
    for message in messages:
        record = writer.record.model_copy(update={"step": writer.record.step + 1})
        writer.commit(record, append=history.encode([message]))


def stored_json(fake: FakeConfigMaps) -> bytes:
    return checkpoint.load_history_bytes(fake, NAMESPACE, RUN)


def run_agent_with_tools_and_a_denial() -> list[ModelMessage]:
    """A real history: tool calls, a paused run, a denial and an approval, a final text."""

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        answered = sum(isinstance(m, ModelResponse) for m in messages)
        if answered == 0:
            return ModelResponse(
                parts=[
                    ToolCallPart("read", {"path": "notes.txt"}, tool_call_id="c1"),
                    ToolCallPart("shell", {"command": "rm -rf /"}, tool_call_id="c2"),
                    ToolCallPart("shell", {"command": "ls"}, tool_call_id="c3"),
                ]
            )
        return ModelResponse(parts=[TextPart("Done: ünïcödé ✓ 😀")])

    agent = Agent(FunctionModel(model), output_type=[str, DeferredToolRequests])

    @agent.tool_plain
    async def read(path: str) -> str:
        return f"contents of {path}: naïve café\n"

    @agent.tool_plain(requires_approval=True)
    async def shell(command: str) -> str:
        return f"ran {command}"

    async def both_attempts() -> list[ModelMessage]:
        first = await agent.run("Tidy up, please ✨")
        assert isinstance(first.output, DeferredToolRequests)
        decisions = DeferredToolResults(approvals={"c2": ToolDenied("Not that."), "c3": True})
        second = await agent.run(
            message_history=first.all_messages(), deferred_tool_results=decisions
        )
        return second.all_messages()

    return asyncio.run(both_attempts())


def lone_surrogates() -> list[ModelMessage]:
    return [
        ModelRequest(parts=[UserPromptPart("broken \ud800 text and a literal \\ud800")]),
        ModelResponse(parts=[ToolCallPart("read", {"path": "x\udcff"}, tool_call_id="s1")]),
        ModelRequest(parts=[ToolReturnPart("read", {"bytes": "\udc80\udc81"}, tool_call_id="s1")]),
        ModelResponse(parts=[TextPart("fine \U0001f600")]),
    ]


HISTORIES = {
    "tool calls, a denial and unicode": run_agent_with_tools_and_a_denial,
    "lone surrogates": lone_surrogates,
}


# -- claiming -------------------------------------------------------------------------


def test_the_first_claim_creates_the_index_owned_by_the_run(fake: FakeConfigMaps) -> None:
    record = claim(fake, 1)

    index = fake.objects[names.checkpoint_index(RUN)]
    assert record.attempt == 1
    assert json.loads(index["data"]["attempt"]) == 1
    assert index["metadata"]["labels"][checkpoint.PART_LABEL] == "checkpoint"
    assert index["metadata"]["labels"][checkpoint.RUN_LABEL] == RUN
    owner = index["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner.get("blockOwnerDeletion")) == ("AgentRun", UID, None)


def test_claiming_the_same_attempt_again_changes_nothing(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    writes = len(fake.writes)

    record = claim(fake, 1)

    assert record.attempt == 1
    assert len(fake.writes) == writes


def test_a_new_attempt_keeps_what_it_must_act_on_and_runs_again(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    writer = open_writer(fake, 1)
    failure = api.AttemptFailure(attempt=1, reason="ModelError", message="HTTP 500")
    started = api.StartedCall(tool_call_id="c9", tool_name="shell")
    writer.commit(
        writer.record.model_copy(
            update={"outcome": api.Outcome.FAILED, "failure": failure, "started": [started]}
        )
    )

    record = claim(fake, 2)

    assert (record.attempt, record.outcome) == (2, api.Outcome.RUNNING)
    assert record.failure == failure
    assert record.started == [started]


def test_a_claim_never_lowers_the_attempt(fake: FakeConfigMaps) -> None:
    claim(fake, 3)

    with pytest.raises(checkpoint.Fenced) as raised:
        claim(fake, 2)

    assert raised.value.owner == 3
    assert checkpoint.read_record(fake, NAMESPACE, RUN) == claim(fake, 3)


def test_a_claim_takes_over_an_index_left_by_a_deleted_run_of_the_same_name(
    fake: FakeConfigMaps,
) -> None:
    checkpoint.claim(fake, namespace=NAMESPACE, run_name=RUN, run_uid="old-uid", attempt=4)

    record = claim(fake, 1)

    index = checkpoint.read_index(fake, NAMESPACE, RUN)
    assert index is not None
    assert (record.attempt, index.record.attempt, index.run_uid) == (1, 1, UID)


def test_a_run_without_a_claim_has_no_record(fake: FakeConfigMaps) -> None:
    assert checkpoint.read_record(fake, NAMESPACE, RUN) is None


def test_the_role_may_name_a_fixed_list_of_segments() -> None:
    names_ = checkpoint.segment_names("a" * 200)

    assert len(names_) == segments.MAX_SEGMENTS
    assert len(set(names_)) == len(names_)
    assert all(len(name) <= 63 for name in names_)


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("make", HISTORIES.values(), ids=HISTORIES.keys())
def test_a_history_reads_back_as_the_same_json(fake: FakeConfigMaps, make: Any) -> None:
    messages = make()
    claim(fake, 1)

    save(open_writer(fake, 1), messages)

    expected = b"[" + b",".join(history.encode_message(m) for m in messages) + b"]"
    assert stored_json(fake) == expected
    again = history.decode(checkpoint.load_history(fake, NAMESPACE, _record(fake)).data)
    assert history.encode(again) == history.encode(messages)


def test_a_fresh_checkpoint_holds_an_empty_history(fake: FakeConfigMaps) -> None:
    claim(fake, 1)

    assert stored_json(fake) == b"[]"


def test_a_history_reads_back_as_pydantic_ais_own_json(fake: FakeConfigMaps) -> None:
    messages = run_agent_with_tools_and_a_denial()
    claim(fake, 1)

    save(open_writer(fake, 1), messages)

    assert stored_json(fake) == ModelMessagesTypeAdapter.dump_json(messages)


def test_a_5_mb_history_spans_segments_each_under_1_mib(fake: FakeConfigMaps) -> None:
    outputs = [base64.b64encode(os.urandom(190_000)).decode() for _ in range(20)]
    messages: list[ModelMessage] = [ModelRequest(parts=[UserPromptPart("read them all")])]
    for number, output in enumerate(outputs):
        call = f"call-{number}"
        messages.append(ModelResponse(parts=[ToolCallPart("read_file", {}, tool_call_id=call)]))
        messages.append(
            ModelRequest(parts=[ToolReturnPart("read_file", output, tool_call_id=call)])
        )
    claim(fake, 1)

    save(open_writer(fake, 1), messages)

    assert len(history.encode(messages)) > 5_000_000
    assert stored_json(fake) == ModelMessagesTypeAdapter.dump_json(messages)
    record = _record(fake)
    assert len(record.segments) >= 5
    assert all(fake.data_size(name) < CONFIGMAP_LIMIT for name in fake.objects)


def test_the_history_continues_across_writers(fake: FakeConfigMaps) -> None:
    messages = run_agent_with_tools_and_a_denial()
    claim(fake, 1)
    save(open_writer(fake, 1), messages[:3])

    claim(fake, 2)
    save(open_writer(fake, 2), messages[3:])

    assert stored_json(fake) == ModelMessagesTypeAdapter.dump_json(messages)


# -- fencing and crashes ----------------------------------------------------------------


def test_a_writer_of_an_older_attempt_is_fenced_before_it_writes(fake: FakeConfigMaps) -> None:
    messages = run_agent_with_tools_and_a_denial()
    claim(fake, 1)
    zombie = open_writer(fake, 1)
    save(zombie, messages[:2])
    claim(fake, 2)
    before = copy.deepcopy(fake.objects)

    with pytest.raises(checkpoint.Fenced) as raised:
        save(zombie, messages[2:3])

    assert raised.value.owner == 2
    assert fake.objects == before


def test_a_writer_opened_by_an_older_attempt_is_refused(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    index = checkpoint.read_index(fake, NAMESPACE, RUN)
    assert index is not None

    with pytest.raises(checkpoint.Fenced):
        checkpoint.Writer(
            fake,
            namespace=NAMESPACE,
            run_name=RUN,
            run_uid=UID,
            attempt=2,
            index=index,
            history=None,
        )


def test_a_claim_between_chunk_and_record_leaves_only_an_ignored_chunk(
    fake: FakeConfigMaps,
) -> None:
    messages = run_agent_with_tools_and_a_denial()
    claim(fake, 1)
    zombie = open_writer(fake, 1)
    save(zombie, messages[:2])
    original = fake.patch_namespaced_config_map

    def claim_after_the_chunk(name: str, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        response = original(name, namespace, body, **kw)
        if "binaryData" in body:
            fake.patch_namespaced_config_map = original  # type: ignore[method-assign]
            claim(fake, 2)
        return response

    fake.patch_namespaced_config_map = claim_after_the_chunk  # type: ignore[method-assign]

    with pytest.raises(checkpoint.Fenced):
        save(zombie, messages[2:3])
    owner = open_writer(fake, 2)
    save(owner, messages[2:])

    assert stored_json(fake) == ModelMessagesTypeAdapter.dump_json(messages)


def test_an_uncommitted_chunk_of_a_crashed_writer_is_ignored(fake: FakeConfigMaps) -> None:
    messages = run_agent_with_tools_and_a_denial()
    claim(fake, 1)
    save(open_writer(fake, 1), messages[:2])
    segment = names.checkpoint_segment(RUN, 0)
    fake.tamper(segment, lambda cm: cm["binaryData"].update(c00002="bm90IGEgY2h1bms="))

    assert stored_json(fake) == ModelMessagesTypeAdapter.dump_json(messages[:2])
    save(open_writer(fake, 1), messages[2:])

    assert stored_json(fake) == ModelMessagesTypeAdapter.dump_json(messages)
    assert len(fake.objects[segment]["binaryData"]) == len(messages)


def test_a_segment_left_by_a_fenced_writer_is_taken_over(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    junk = checkpoint._metadata(names.checkpoint_segment(RUN, 0), run_name=RUN, run_uid="old")
    fake.create_namespaced_config_map(
        NAMESPACE, {"metadata": junk, "binaryData": {"c00000": "anVuaw==", "c00007": "anVuaw=="}}
    )
    messages = run_agent_with_tools_and_a_denial()

    save(open_writer(fake, 1), messages)

    assert stored_json(fake) == ModelMessagesTypeAdapter.dump_json(messages)
    segment = fake.objects[names.checkpoint_segment(RUN, 0)]
    assert "c00007" not in segment["binaryData"]
    assert segment["metadata"]["ownerReferences"][0]["uid"] == UID


def test_a_record_changed_by_another_runner_of_the_attempt_fences(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    first, second = open_writer(fake, 1), open_writer(fake, 1)
    first.commit(first.record.model_copy(update={"step": 1}))

    with pytest.raises(checkpoint.Fenced, match="Another runner"):
        second.commit(second.record.model_copy(update={"step": 1}))


# -- corruption ---------------------------------------------------------------------------


def test_a_damaged_chunk_fails_the_load_naming_its_segment(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    save(open_writer(fake, 1), run_agent_with_tools_and_a_denial())
    segment = names.checkpoint_segment(RUN, 0)
    fake.tamper(segment, lambda cm: cm["binaryData"].update(c00001="AAAAAAAAAAAA"))

    with pytest.raises(checkpoint.CheckpointCorrupt) as raised:
        stored_json(fake)

    assert raised.value.segment == segment
    assert segment in str(raised.value)


def test_a_missing_chunk_fails_the_load_naming_its_segment(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    save(open_writer(fake, 1), run_agent_with_tools_and_a_denial())
    segment = names.checkpoint_segment(RUN, 0)
    fake.tamper(segment, lambda cm: cm["binaryData"].pop("c00000"))

    with pytest.raises(checkpoint.CheckpointCorrupt, match="lacks chunk c00000") as raised:
        stored_json(fake)

    assert raised.value.segment == segment


def test_a_missing_segment_fails_the_load_naming_it(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    save(open_writer(fake, 1), run_agent_with_tools_and_a_denial())
    segment = names.checkpoint_segment(RUN, 0)
    del fake.objects[segment]

    with pytest.raises(checkpoint.CheckpointCorrupt, match="does not exist") as raised:
        stored_json(fake)

    assert raised.value.segment == segment


def test_a_record_that_does_not_validate_is_corrupt(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    index = names.checkpoint_index(RUN)
    fake.tamper(index, lambda cm: cm["data"].update(attempt='"one"'))

    with pytest.raises(checkpoint.CheckpointCorrupt):
        checkpoint.read_record(fake, NAMESPACE, RUN)


# -- write amplification --------------------------------------------------------------------


def test_each_chunk_is_written_once_and_closed_segments_never_again(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    writer = open_writer(fake, 1)
    step_messages = [
        ModelResponse(parts=[TextPart(f"step {n}: " + os.urandom(150).hex())]) for n in range(1500)
    ]

    save(writer, step_messages)

    record = _record(fake)
    order = [name for _, name, _ in fake.writes if name != names.checkpoint_index(RUN)]
    assert len(order) == sum(ref.chunks for ref in record.segments)
    assert len(record.segments) >= 3
    # Segments are written one after the other: once the next one starts, the previous
    # one (closed) is never written again.
    runs = [
        name for position, name in enumerate(order) if position == 0 or order[position - 1] != name
    ]
    assert runs == [ref.name for ref in record.segments]


def test_history_bytes_sent_grow_linearly_with_the_history(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    writer = open_writer(fake, 1)
    step_messages = [
        ModelResponse(parts=[TextPart(f"step {n}: " + os.urandom(600).hex())]) for n in range(400)
    ]

    save(writer, step_messages)

    stored = _record(fake).bytes
    assert writer.stats.chunk_bytes == stored
    chunk_requests = sum(w[2] for w in fake.writes if w[1] != names.checkpoint_index(RUN))
    assert chunk_requests / stored < 1.5


def test_a_step_sends_only_the_record_keys_it_changes(fake: FakeConfigMaps) -> None:
    claim(fake, 1)
    writer = open_writer(fake, 1)
    save(writer, [ModelResponse(parts=[TextPart(os.urandom(40_000).hex())]) for _ in range(3)])

    save(writer, [ModelResponse(parts=[TextPart("one more step")])])

    sent = set(fake.bodies[-1]["data"])
    assert len(_record(fake).segments) >= 2
    assert "segment.000" not in sent  # closed: its entry is never sent again
    assert not sent & {"attempt", "outcome", "pending", "started"}
    assert {"step", "bytes", f"segment.{len(_record(fake).segments) - 1:03d}"} <= sent


def test_an_index_holding_the_whole_record_under_one_key_still_loads(
    fake: FakeConfigMaps,
) -> None:
    claim(fake, 1)
    save(open_writer(fake, 1), run_agent_with_tools_and_a_denial())
    record = _record(fake)
    legacy = json.dumps(api.dump(record))
    fake.tamper(names.checkpoint_index(RUN), lambda cm: cm.update(data={"record": legacy}))
    writer = open_writer(fake, 1)

    save(writer, [ModelResponse(parts=[TextPart("after the upgrade")])])

    data = fake.objects[names.checkpoint_index(RUN)]["data"]
    assert "record" not in data
    assert _record(fake).step == record.step + 1
    assert json.loads(stored_json(fake))[-1]["parts"][0]["content"] == "after the upgrade"


def _record(fake: FakeConfigMaps) -> api.CheckpointRecord:
    record = checkpoint.read_record(fake, NAMESPACE, RUN)
    assert record is not None
    return record
