"""Which pending calls a reviewer decides on, and the JSON patch that records the decisions.

Pure: `_commands` reads the run, asks `select` which calls the reviewer means, and sends
what `patch` builds. A pending call is one in status.pendingApprovals that has no entry
in spec.approvals yet: between a decision and the operator's next status write, the
status still lists calls that are already decided.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from agentrun import api
from agentrun.plugin._errors import PluginError

__all__ = ["Verdict", "decided", "entries", "parse_arguments", "patch", "pending", "select"]


def pending(run: Mapping[str, Any]) -> list[api.PendingApproval]:
    """The run's calls that wait for a decision, in the order the status lists them."""
    listed = ((run.get("status") or {}).get("pendingApprovals")) or []
    known = decided(run)
    calls = [_pending_call(item) for item in listed if isinstance(item, dict)]
    return [call for call in calls if call.tool_call_id not in known]


def decided(run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The decisions already in spec.approvals, by tool call id."""
    approvals = ((run.get("spec") or {}).get("approvals")) or []
    return {str(a.get("toolCallId")): a for a in approvals if isinstance(a, dict)}


def _pending_call(item: Mapping[str, Any]) -> api.PendingApproval:
    # Field by field rather than model_validate: a newer operator may add fields to the
    # status that this plugin does not know, and the API models refuse unknown fields.
    return api.PendingApproval(
        tool_call_id=str(item.get("toolCallId", "")),
        tool_name=str(item.get("toolName", "")),
        arguments=str(item.get("arguments", "")),
        requested_at=str(item.get("requestedAt", "")),
    )


def select(run: Mapping[str, Any], wanted: Sequence[str]) -> list[api.PendingApproval]:
    """The pending calls named by `wanted`, or all of them when it is empty.

    Raises PluginError when nothing is pending, or naming every id that is not pending
    (unknown, or already decided) along with the ones that are.
    """
    name = run["metadata"]["name"]
    calls = pending(run)
    if not calls:
        phase = (run.get("status") or {}).get("phase") or "not set yet"
        raise PluginError(f"Run {name} has no pending calls (phase {phase}).")
    if not wanted:
        return calls

    by_id = {call.tool_call_id: call for call in calls}
    unknown = [call_id for call_id in dict.fromkeys(wanted) if call_id not in by_id]
    if unknown:
        raise PluginError(_not_pending(name, unknown, decided(run), calls))
    return [by_id[call_id] for call_id in dict.fromkeys(wanted)]


def _not_pending(
    run_name: str,
    unknown: Sequence[str],
    known: Mapping[str, Mapping[str, Any]],
    calls: Sequence[api.PendingApproval],
) -> str:
    reasons = []
    for call_id in unknown:
        decision = known.get(call_id)
        if decision is None:
            reasons.append(f"{call_id!r} is not a pending call")
        else:
            by = f" by {decision['approver']}" if decision.get("approver") else ""
            reasons.append(f"{call_id!r} is already decided ({decision.get('decision')}{by})")
    listed = ", ".join(f"{c.tool_call_id} ({c.tool_name})" for c in calls)
    return f"On run {run_name}, {'; '.join(reasons)}. Pending: {listed}."


def parse_arguments(text: str) -> dict[str, Any]:
    """The value of `--args`: a JSON object, the whole of the call's new arguments."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise PluginError(f"--args is not valid JSON: {error}.") from error
    if not isinstance(value, dict):
        raise PluginError(f"--args must be a JSON object, not {type(value).__name__}: {text!r}.")
    return value


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a reviewer decided, the same for every call they selected."""

    decision: api.Decision
    reason: str | None = None
    """Why; on Deny the model receives it as the call's result."""
    arguments: dict[str, Any] | None = None
    """On Approve, the new arguments of the one call selected."""
    approver: str | None = None
    """Who decided, as the API server knows them."""


def entries(calls: Sequence[api.PendingApproval], verdict: Verdict) -> list[dict[str, Any]]:
    """One spec.approvals entry per call, as the API server stores them.

    Raises PluginError when a value breaks the API's bounds (a reason too long...), so the
    user hears it before anything is sent.
    """
    if verdict.arguments is not None and len(calls) != 1:
        raise PluginError(
            f"--args replaces the arguments of one call, and {len(calls)} are selected: "
            "name the call, as in `approve RUN CALL --args JSON`."
        )
    try:
        approvals = [
            api.Approval(
                tool_call_id=call.tool_call_id,
                decision=verdict.decision,
                reason=verdict.reason or None,
                arguments=verdict.arguments,
                approver=verdict.approver or None,
            )
            for call in calls
        ]
    except pydantic.ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise PluginError(f"The decision is not valid: {problems}.") from error
    return [api.dump(approval) for approval in approvals]


def patch(run: Mapping[str, Any], new_entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON patch that appends `new_entries` to spec.approvals of `run` as read.

    Replacing metadata.resourceVersion makes the patch conditional: if anything changed
    the run since it was read (another reviewer's decision, say) the API server answers
    409 Conflict, and the caller reads the run again and selects again. A failed `test`
    op would be a bare 422, indistinguishable from a refused decision.
    """
    ops: list[dict[str, Any]] = [
        {
            "op": "replace",
            "path": "/metadata/resourceVersion",
            "value": run["metadata"]["resourceVersion"],
        },
    ]
    if "approvals" not in (run.get("spec") or {}):
        # `add .../-` needs the list to exist; the resourceVersion guard above makes sure
        # nobody created it meanwhile, since `add` on an existing member replaces it.
        ops.append({"op": "add", "path": "/spec/approvals", "value": []})
    ops += [{"op": "add", "path": "/spec/approvals/-", "value": entry} for entry in new_entries]
    return ops
