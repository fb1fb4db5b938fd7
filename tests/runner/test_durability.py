"""Durable checkpoints end to end: killed runners, zombies, corruption, big histories."""

from __future__ import annotations

import base64
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from pydantic_ai import (
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    ToolReturnPart,
    UserPromptPart,
)

from agentrun import checkpoint, journal, names, runner

from .conftest import Runners, eventually

pytestmark = pytest.mark.e2e

FILE_TOOLS = [{"name": "write_file"}, {"name": "read_file"}, {"name": "list_files"}]
CONFIGMAP_LIMIT = 1024 * 1024


def results(runners: Runners, run: Any) -> dict[str, list[Any]]:
    """Every tool result in the stored history, by call id."""
    found: dict[str, list[Any]] = {}
    for message in runners.history(run):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, ToolReturnPart):
                    found.setdefault(part.tool_call_id, []).append(part.content)
    return found


def test_a_killed_runner_is_resumed_without_repeating_a_stored_step(runners: Runners) -> None:
    turns: list[dict[str, Any]] = [
        {"tool_calls": [{"name": "list_files", "arguments": {}}]},
        {"tool_calls": [{"name": "list_files", "arguments": {}}], "delay_seconds": 60},
        {"text": "done"},
    ]
    run = runners.create("killed", turns=turns, tools=FILE_TOOLS)
    first = runners.start(run, 1)
    eventually(lambda: [r for r in runners.requests(run) if r["turn"] == 1], what="turn 1")
    first.kill()
    runners.wait(first)
    runners.model.set_script(run.key, [{**turn, "delay_seconds": 0} for turn in turns])

    exited = runners.run(run, 1)

    assert exited.code == runner.EXIT_OK, exited.output
    assert "resumed from step 2 with 3 messages" in exited.output
    turns_requested = [r["turn"] for r in runners.requests(run)]
    assert turns_requested == [0, 1, 1, 2]
    prompts = [p for m in runners.history(run) for p in m.parts if isinstance(p, UserPromptPart)]
    assert len(prompts) == 1


def test_a_shell_command_cut_off_by_a_crash_is_not_run_again(runners: Runners) -> None:
    command = "echo ran >> counter; sleep 2"
    run = runners.create(
        "cut-off-shell",
        turns=[
            {"tool_calls": [{"id": "sh", "name": "shell", "arguments": {"command": command}}]},
            {"text": "done"},
        ],
        tools=[{"name": "shell", "requiresApproval": False}],
    )
    first = runners.start(run, 1)
    eventually(lambda: runners.record(run).started, what="the write-ahead record")
    eventually(lambda: (runners.workspace / "counter").exists(), what="the command")
    first.kill()
    runners.wait(first)
    time.sleep(2.5)  # the orphaned command ends (a pod's death would kill it)

    exited = runners.run(run, 1)

    assert exited.code == runner.EXIT_OK, exited.output
    assert (runners.workspace / "counter").read_text() == "ran\n"
    assert results(runners, run) == {"sh": [journal.OUTCOME_UNKNOWN]}
    sent = runners.requests(run)[-1]["body"]["messages"]
    assert [m["content"] for m in sent if m["role"] == "tool"] == [journal.OUTCOME_UNKNOWN]
    assert runners.record(run).started == []


class _SlowOnce(http.server.BaseHTTPRequestHandler):
    keys: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        _SlowOnce.keys.append(self.headers.get("Idempotency-Key"))
        if len(_SlowOnce.keys) == 1:
            time.sleep(30)
        body = b"weather: sunny"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_site() -> Iterator[str]:
    _SlowOnce.keys = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowOnce)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/weather"
    server.shutdown()


def test_an_idempotent_call_cut_off_by_a_crash_runs_again_with_the_same_key(
    runners: Runners, slow_site: str
) -> None:
    run = runners.create(
        "cut-off-fetch",
        turns=[
            {"tool_calls": [{"id": "f", "name": "fetch_url", "arguments": {"url": slow_site}}]},
            {"text": "It is sunny."},
        ],
        tools=[{"name": "fetch_url"}],
    )
    first = runners.start(run, 1)
    eventually(lambda: _SlowOnce.keys, what="the first fetch")
    first.kill()
    runners.wait(first)
    assert isinstance(runners.history(run)[-1], ModelResponse)  # calls without results

    exited = runners.run(run, 1)

    assert exited.code == runner.EXIT_OK, exited.output
    assert _SlowOnce.keys == [f"{run.uid}:f", f"{run.uid}:f"]
    stored = results(runners, run)
    assert list(stored) == ["f"] and len(stored["f"]) == 1
    assert "weather: sunny" in stored["f"][0]


def test_a_zombie_runner_of_an_older_attempt_exits_3_and_writes_nothing(
    runners: Runners,
) -> None:
    run = runners.create(
        "zombie",
        turns=[
            {"tool_calls": [{"name": "list_files", "arguments": {}}]},
            {"text": "done", "delay_seconds": 3},
        ],
        tools=FILE_TOOLS,
    )
    zombie = runners.start(run, 1)
    eventually(lambda: [r for r in runners.requests(run) if r["turn"] == 1], what="turn 1")
    runners.claim(run, 2)
    before = runners.configmaps(run)

    exited = runners.wait(zombie)

    assert exited.code == runner.EXIT_FENCED, exited.output
    assert "Attempt 2 now owns the checkpoint" in exited.output
    assert runners.configmaps(run) == before
    owner = runners.run(run, 2)
    assert owner.code == runner.EXIT_OK, owner.output
    assert runners.record(run).attempt == 2


def test_a_corrupted_segment_fails_the_attempt_with_a_reason_naming_it(
    runners: Runners,
) -> None:
    run = runners.create(
        "corrupted",
        turns=[{"tool_calls": [{"name": "list_files", "arguments": {}}]}, {"error_forever": 500}],
        tools=FILE_TOOLS,
    )
    runners.run(run, 1)
    checkpoint.load_history_bytes(runners.core, runners.namespace, run.name)  # still loadable
    segment = names.checkpoint_segment(run.name, 0)
    garbage = base64.b64encode(b"not zlib at all").decode()
    runners.kubectl(
        "patch",
        "configmap",
        segment,
        "--type=merge",
        "-p",
        json.dumps({"binaryData": {"c00001": garbage}}),
    )
    runners.claim(run, 2)

    exited = runners.run(run, 2)

    failure = runners.record(run).failure
    assert exited.code == runner.EXIT_FAILED, exited.output
    assert failure is not None
    assert (failure.attempt, failure.reason, failure.final) == (2, "CheckpointCorrupt", True)
    assert segment in failure.message
    stored = next(cm for cm in runners.configmaps(run) if cm["metadata"]["name"] == segment)
    assert stored["binaryData"]["c00001"] == garbage


def test_5_mb_of_tool_output_fits_in_configmaps_under_1_mib(runners: Runners) -> None:
    contents = {}
    for number in range(20):
        text = base64.b64encode(os.urandom(190_000)).decode()[:250_000]
        (runners.workspace / f"part{number}.txt").write_text(text)
        contents[f"r{number}"] = text
    calls = [
        {"id": call, "name": "read_file", "arguments": {"path": f"part{call[1:]}.txt"}}
        for call in contents
    ]
    run = runners.create(
        "five-megabytes", turns=[{"tool_calls": calls}, {"text": "All read."}], tools=FILE_TOOLS
    )

    exited = runners.run(run, 1)

    assert exited.code == runner.EXIT_OK, exited.output
    configmaps = runners.configmaps(run)
    sizes = {
        cm["metadata"]["name"]: sum(
            len(base64.b64decode(v)) for v in (cm.get("binaryData") or {}).values()
        )
        + sum(len(v.encode()) for v in (cm.get("data") or {}).values())
        for cm in configmaps
    }
    assert all(size < CONFIGMAP_LIMIT for size in sizes.values()), sizes
    record = runners.record(run)
    assert len(record.segments) >= 5
    assert {name for name in sizes} == {
        names.checkpoint_index(run.name),
        *(s.name for s in record.segments),
    }
    stored = {call: values[0] for call, values in results(runners, run).items()}
    assert stored == contents
    whole = checkpoint.load_history_bytes(runners.core, runners.namespace, run.name)
    assert len(whole) > 5_000_000
    assert whole == ModelMessagesTypeAdapter.dump_json(runners.history(run))
