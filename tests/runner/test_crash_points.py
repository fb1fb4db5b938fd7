"""A runner killed at each step boundary of a 6-step run: the next pod loses and repeats nothing.

The run asks the model four times. Turn 0 calls fetch_url against a ledger that applies
one entry per idempotency key; turn 1 calls write_file and, beside it, a shell command
that appends a line to a counter outside the workspace; turn 2 reads the file back; turn
3 is the final answer. Each batch of calls and each batch of results is a step: six
steps, then the answer.

Each case holds the runner at one boundary (a model turn answered only after a long
delay, a ledger that answers its first request late, a shell command that sleeps),
waits until the checkpoint shows it there, kills the runner and every process it started
as a pod's death would, and starts another runner for the same attempt. The call to
read_file (step 5) ends too fast to be cut off, so it has no case of its own.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.server
import json
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agentrun import api, checkpoint, journal, runner

from .conftest import Run, Runners, eventually

pytestmark = pytest.mark.e2e

TOOLS = [
    {"name": "fetch_url"},
    {"name": "write_file"},
    {"name": "read_file"},
    {"name": "shell", "requiresApproval": False},
]
NOTE = "written once\n"
ANSWER = "All done."
HOLD_SECONDS = 30
"""How long a held model turn, ledger request or shell command lasts: far longer than the
test takes to see the runner there and kill it."""


@dataclasses.dataclass(frozen=True)
class Boundary:
    """Where the runner dies: once `step` steps are stored, before the next one is."""

    step: int
    cut_off: frozenset[str] = frozenset()
    """Calls recorded as started whose results are not stored yet; when empty, the runner
    is waiting for the model's answer to `turn`."""

    @property
    def turn(self) -> int:
        """The model turn the runner waits on, or asks for once the cut-off calls end."""
        return (self.step + 1) // 2


BOUNDARIES = [
    pytest.param(Boundary(0), id="before-the-first-answer"),
    pytest.param(Boundary(1, frozenset({"fetch"})), id="inside-the-idempotent-fetch"),
    pytest.param(Boundary(2), id="after-the-fetch-result"),
    pytest.param(Boundary(3, frozenset({"write", "shell"})), id="inside-the-shell-command"),
    pytest.param(Boundary(4), id="after-the-shell-result"),
    pytest.param(Boundary(6), id="before-the-final-answer"),
]


class _Ledger(http.server.BaseHTTPRequestHandler):
    """An idempotent API: one entry per Idempotency-Key, however often the key comes."""

    keys: ClassVar[list[str]] = []
    """The key of every request, in arrival order."""
    entries: ClassVar[dict[str, int]] = {}
    """The entry number each key was given: the effects that happened."""
    hold_first = threading.Event()
    """Set to make the first request wait HOLD_SECONDS, or until `release` is set."""
    release = threading.Event()

    def do_GET(self) -> None:
        key = self.headers.get("Idempotency-Key") or ""
        _Ledger.keys.append(key)
        entry = _Ledger.entries.setdefault(key, len(_Ledger.entries) + 1)
        if len(_Ledger.keys) == 1 and _Ledger.hold_first.is_set():
            _Ledger.release.wait(HOLD_SECONDS)
        body = f"entry {entry}".encode()
        with contextlib.suppress(OSError):  # the runner that asked may be dead by now
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def ledger() -> Iterator[str]:
    _Ledger.keys, _Ledger.entries = [], {}
    _Ledger.hold_first.clear()
    _Ledger.release.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ledger)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/entries"
    _Ledger.release.set()
    server.shutdown()


def call(call_id: str, tool: str, **arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "name": tool, "arguments": arguments}


def script(*, ledger: str, counter: Path, hold: Boundary | None) -> list[dict[str, Any]]:
    """The run's four model turns; the one `hold` waits on answers late."""
    command = f"echo ran >> {shlex.quote(str(counter))}"
    if hold is not None and "shell" in hold.cut_off:
        command += f"; sleep {HOLD_SECONDS}"
    turns: list[dict[str, Any]] = [
        {"tool_calls": [call("fetch", "fetch_url", url=ledger)]},
        {
            "tool_calls": [
                call("write", "write_file", path="notes.txt", content=NOTE),
                call("shell", "shell", command=command),
            ]
        },
        {"tool_calls": [call("read", "read_file", path="notes.txt")]},
        {"text": ANSWER},
    ]
    if hold is not None and not hold.cut_off:
        turns[hold.turn]["delay_seconds"] = HOLD_SECONDS
    return turns


def is_at(
    boundary: Boundary,
    *,
    runners: Runners,
    run: Run,
    process: subprocess.Popen[str],
    counter: Path,
) -> bool:
    """Whether the runner stands at `boundary` now; fails at once if it exited instead."""
    if process.poll() is not None:
        output, _ = process.communicate()
        raise AssertionError(f"The runner exited {process.returncode} early:\n{output}")
    record = runners.record(run)
    if record.step != boundary.step:
        return False
    if not boundary.cut_off:
        return any(request["turn"] == boundary.turn for request in runners.requests(run))
    started = {call.tool_call_id for call in record.started}
    # write_file ends at once: its record of having started is all there is to wait for.
    begun = {"fetch": bool(_Ledger.keys), "shell": counter.exists(), "write": True}
    return started == boundary.cut_off and all(begun[call] for call in started)


def kill_pod(process: subprocess.Popen[str]) -> None:
    """SIGKILL the runner and every process it started, as the death of its pod would.

    Killing the runner's process group is not enough: the shell tool starts each command
    in a session of its own.
    """
    family = descendants(process.pid)
    process.kill()
    process.communicate()
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    generation = [pid]
    while generation:
        generation = [child for child, parent in parents.items() if parent in generation]
        found += generation
    return found


def tool_parts(history: list[dict[str, Any]], kind: str) -> collections.Counter[str]:
    """How often each call id appears in the history's parts of `kind`."""
    return collections.Counter(
        part["tool_call_id"]
        for message in history
        for part in message["parts"]
        if part["part_kind"] == kind
    )


def results_sent(runners: Runners, run: Run, *, turn: int) -> dict[str, str]:
    """The tool results in the last request the model answered at `turn`."""
    request = [r for r in runners.requests(run) if r["turn"] == turn][-1]
    return {
        m["tool_call_id"]: m["content"] for m in request["body"]["messages"] if m["role"] == "tool"
    }


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_a_run_killed_at_a_step_boundary_resumes_without_losing_or_repeating_a_step(
    runners: Runners, ledger: str, tmp_path: Path, boundary: Boundary
) -> None:
    counter = tmp_path / "shell-runs"
    run = runners.create(
        f"crash-at-{boundary.step}",
        turns=script(ledger=ledger, counter=counter, hold=boundary),
        tools=TOOLS,
    )
    if "fetch" in boundary.cut_off:
        _Ledger.hold_first.set()
    first = runners.start(run, 1)
    eventually(
        lambda: is_at(boundary, runners=runners, run=run, process=first, counter=counter),
        timeout=90,
        what=f"the runner at {boundary}",
    )
    kill_pod(first)
    runners.model.set_script(run.key, script(ledger=ledger, counter=counter, hold=None))
    asked_before = len(runners.requests(run))

    exited = runners.run(run, 1)

    record = runners.record(run)
    assert exited.code == runner.EXIT_OK, exited.output
    assert (record.outcome, record.output, record.step) == (api.Outcome.SUCCEEDED, ANSWER, 7)
    assert record.started == []
    # The new runner asks only for the turns no stored step answers.
    asked_after = [r["turn"] for r in runners.requests(run)[asked_before:]]
    assert asked_after == list(range(boundary.turn, 4))
    history = json.loads(checkpoint.load_history_bytes(runners.core, runners.namespace, run.name))
    assert [message["kind"] for message in history] == ["request", "response"] * 4
    once = {"fetch": 1, "write": 1, "shell": 1, "read": 1}
    assert tool_parts(history, "tool-call") == tool_parts(history, "tool-return") == once
    assert counter.read_text() == "ran\n"
    shell_result = journal.OUTCOME_UNKNOWN if "shell" in boundary.cut_off else "exit code 0\n"
    assert results_sent(runners, run, turn=3) == {
        "fetch": "HTTP 200 text/plain\n\nentry 1",
        "write": f"Wrote {len(NOTE)} bytes to notes.txt.",
        "shell": shell_result,
        "read": NOTE,
    }
    key = f"{run.uid}:fetch"
    assert _Ledger.entries == {key: 1}
    assert _Ledger.keys == [key] * (2 if "fetch" in boundary.cut_off else 1)
    assert (runners.workspace / "notes.txt").read_text() == NOTE
