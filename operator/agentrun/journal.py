"""What the runner writes to the checkpoint, and when: steps and write-ahead tool records.

`runner` drives one attempt and calls `Journal.step` after every node that changes the
history; the `Guard` capability, which `runner` hands to the agent, calls
`Journal.started` before each tool runs. Every write goes through one asyncio lock, since
the tools of one model response run concurrently, and runs in a thread, since the
API calls (`apiserver`) block.

Write-ahead. A call is recorded as started before its tool runs; the step that stores
its result clears the record. A call still recorded as started when an attempt begins
was cut off by a crash: an idempotent tool runs again (it gets the same idempotency key,
`<run uid>:<tool call id>`), any other is not run again and the model is told that its
outcome is unknown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic_ai import (
    ApprovalRequired,
    CallDeferred,
    DeferredToolRequests,
    ModelMessage,
    ModelResponse,
    RunContext,
    RunUsage,
    TextPart,
    ToolCallPart,
    ToolDefinition,
    ToolReturnPart,
)
from pydantic_ai.capabilities import AbstractCapability

from agentrun import api, checkpoint, history, tools

__all__ = ["OUTCOME_UNKNOWN", "Guard", "Journal", "cut", "last_text", "pending_calls"]

log = logging.getLogger("agentrun.runner")
steps_log = logging.getLogger("agentrun.steps")

OUTCOME_UNKNOWN = (
    "The outcome of this call is unknown: the run was interrupted while the tool was running, "
    "and the call is not repeated because repeating it may not be safe. Check its effects "
    "before calling it again."
)

# The record lives in one ConfigMap (1 MiB at most) and is rewritten at every step: the
# text it repeats from the history (the final answer, pending calls' arguments) is cut so
# that the whole record stays well below half a MiB however many calls wait.
MAX_RECORD_OUTPUT = 128 * 1024
MAX_RECORD_ARGUMENTS = 16 * 1024
MAX_RECORD_ALL_ARGUMENTS = 256 * 1024


class Journal:
    """The checkpoint writes of one attempt, in order, one at a time."""

    def __init__(self, writer: checkpoint.Writer, *, run: str, attempt: int, messages: int) -> None:
        self._writer = writer
        self._run = run
        self._attempt = attempt
        self._lock = asyncio.Lock()
        self._started_at = time.monotonic()
        self._elapsed_before = writer.record.elapsed_seconds
        self.messages = messages
        """Messages in the checkpoint's history."""

    @property
    def record(self) -> api.CheckpointRecord:
        return self._writer.record

    def log_writes(self) -> None:
        """One sentence on what this attempt sent to the API server for its checkpoint."""
        stats, record = self._writer.stats, self.record
        log.info(
            "Run %s attempt %d wrote its checkpoint in %d requests of %d bytes in all, "
            "%d of them to segments, carrying %d bytes of history chunks; "
            "the history is %d bytes compressed in %d segments.",
            self._run,
            self._attempt,
            stats.requests,
            stats.request_bytes,
            stats.segment_request_bytes,
            stats.chunk_bytes,
            record.bytes,
            len(record.segments),
        )

    @property
    def interrupted(self) -> dict[str, api.StartedCall]:
        """Calls a previous runner started without storing their results."""
        return {call.tool_call_id: call for call in self._writer.record.started}

    def elapsed(self) -> float:
        """Seconds the run has been running, this attempt included."""
        return self._elapsed_before + time.monotonic() - self._started_at

    async def started(self, call: ToolCallPart) -> None:
        """Record that `call` starts, before its tool runs."""
        async with self._lock:
            record = self.record
            if any(s.tool_call_id == call.tool_call_id for s in record.started):
                return
            entry = api.StartedCall(
                tool_call_id=call.tool_call_id, tool_name=call.tool_name, step=record.step
            )
            await self._commit(record.model_copy(update={"started": [*record.started, entry]}))

    async def unstarted(self, call: ToolCallPart) -> None:
        """Withdraw the record that `call` started: its tool did not run after all."""
        async with self._lock:
            record = self.record
            kept = [s for s in record.started if s.tool_call_id != call.tool_call_id]
            if len(kept) != len(record.started):
                await self._commit(record.model_copy(update={"started": kept}))

    async def step(
        self,
        messages: Sequence[ModelMessage],
        *,
        usage: RunUsage,
        seconds: float,
        update: dict[str, Any] | None = None,
    ) -> None:
        """Append the messages of one step (a model response, or a batch of tool results)."""
        kind = "model_response" if isinstance(messages[-1], ModelResponse) else "tool_results"
        async with self._lock:
            changes: dict[str, Any] = {
                "step": self.record.step + 1,
                "messages": self.messages + len(messages),
                **_usage_fields(usage),
                **(update or {}),
            }
            if kind == "tool_results":
                changes["started"] = []  # their results are in the history now
            await self._commit(
                self.record.model_copy(update=changes), append=history.encode(messages)
            )
            self.messages += len(messages)
        steps_log.info(
            json.dumps(
                {
                    "run": self._run,
                    "attempt": self._attempt,
                    "step": self.record.step,
                    "kind": kind,
                    "tools": _tools_of(messages),
                    "input_tokens": _tokens(messages, "input_tokens"),
                    "output_tokens": _tokens(messages, "output_tokens"),
                    "seconds": round(seconds, 3),
                    "messages": self.messages,
                    "bytes": self.record.bytes,
                }
            )
        )

    async def end(self, *, usage: RunUsage | None = None, **changes: Any) -> None:
        """Write how the attempt ends (outcome, output, pending calls or failure)."""
        async with self._lock:
            fields = _usage_fields(usage) if usage is not None else {}
            await self._commit(self.record.model_copy(update={**fields, **changes}))

    async def _commit(self, record: api.CheckpointRecord, *, append: bytes = b"") -> None:
        record = record.model_copy(update={"elapsed_seconds": round(self.elapsed(), 3)})
        await asyncio.to_thread(self._writer.commit, record, append=append)


def _usage_fields(usage: RunUsage) -> dict[str, Any]:
    return {
        "requests": usage.requests,
        "usage": api.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.input_tokens + usage.output_tokens,
        ),
    }


def _tools_of(messages: Sequence[ModelMessage]) -> list[str]:
    names = []
    for message in messages:
        for part in message.parts:
            if isinstance(part, ToolCallPart | ToolReturnPart):
                names.append(part.tool_name)
    return names


def _tokens(messages: Sequence[ModelMessage], field: str) -> int:
    return sum(getattr(m.usage, field) for m in messages if isinstance(m, ModelResponse))


def last_text(messages: Sequence[ModelMessage]) -> str | None:
    """The text of the last model response that has any: a stopped run's partial output."""
    for message in reversed(messages):
        if isinstance(message, ModelResponse):
            text = "".join(p.content for p in message.parts if isinstance(p, TextPart))
            if text:
                return text
    return None


def cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[Cut at {limit} characters; the whole is in the history.]"


def pending_calls(requests: DeferredToolRequests) -> list[api.PendingCall]:
    """The calls a paused run waits on, for the record."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    calls = [*requests.approvals, *requests.calls]
    each = min(MAX_RECORD_ARGUMENTS, MAX_RECORD_ALL_ARGUMENTS // max(1, len(calls)))
    return [
        api.PendingCall(
            tool_call_id=call.tool_call_id,
            tool_name=call.tool_name,
            arguments=cut(call.args_as_json_str(), each),
            requested_at=now,
        )
        for call in calls
    ]


@dataclasses.dataclass
class Guard(AbstractCapability[tools.ToolDeps]):
    """Keeps tool calls honest across crashes: write-ahead records and unique call ids."""

    journal: Journal
    interrupted: dict[str, api.StartedCall]
    """Calls a crash cut off, by id, as the attempt found them."""

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None

    async def wrap_tool_execute(
        self,
        ctx: RunContext[tools.ToolDeps],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: Any,
        handler: Any,
    ) -> Any:
        if call.tool_call_id in self.interrupted:
            if not (tool_def.metadata or {}).get(tools.IDEMPOTENT_METADATA):
                log.warning(
                    "Tool call %s (%s) was interrupted by a crash and is not idempotent: "
                    "the model is told its outcome is unknown.",
                    call.tool_call_id,
                    call.tool_name,
                )
                return OUTCOME_UNKNOWN
            log.info(
                "Tool call %s (%s) was interrupted by a crash; running it again, idempotent.",
                call.tool_call_id,
                call.tool_name,
            )
        await self.journal.started(call)
        try:
            return await handler(args)
        except (ApprovalRequired, CallDeferred):
            # Deferred inside the toolset (MCP tools gated by requireApproval): the tool
            # did not run, and the call is to wait for a decision, not to count as cut off.
            await self.journal.unstarted(call)
            raise

    async def after_model_request(
        self, ctx: RunContext[tools.ToolDeps], *, request_context: Any, response: ModelResponse
    ) -> ModelResponse:
        """Give every tool call an id no other call in the run has.

        Models may send an empty id, or repeat one (some local servers number calls from
        zero in every response): decisions, write-ahead records and the model's own
        pairing of calls and results all go by id.
        """
        taken = {
            part.tool_call_id
            for message in ctx.messages
            for part in message.parts
            if isinstance(part, ToolCallPart | ToolReturnPart)
        }
        for part in response.parts:
            if not isinstance(part, ToolCallPart):
                continue
            if not part.tool_call_id or part.tool_call_id in taken:
                part.tool_call_id = _fresh_id(part.tool_call_id or "call", taken)
            taken.add(part.tool_call_id)
        return response


def _fresh_id(base: str, taken: set[str]) -> str:
    number = 2
    while f"{base}~{number}" in taken:
        number += 1
    return f"{base}~{number}"
