"""What the operator does next for one run, decided purely from what it observes.

`controller` gathers an `Observed` (the AgentRun, the current attempt's Job, the
checkpoint record) and calls `decide`, then applies the returned `Plan` once. Nothing
here talks to the API server or keeps memory between calls, so an operator that
restarts decides the same, and unit tests cover every branch with plain values.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Literal

from agentrun import api, names

__all__ = ["Event", "JobView", "Observed", "Plan", "decide"]

# How often a run that waits on nothing in particular is looked at again anyway: the
# safety net under the watch events, which can be missed while the operator is down.
RECHECK_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class JobView:
    """The few facts about an attempt's Job that decisions depend on."""

    name: str
    succeeded: bool = False
    failed: bool = False
    suspended: bool = False
    deleting: bool = False
    failure: str = ""
    """The Job's Failed condition, reason and message, when it failed."""
    waiting: str = ""
    """Why a pod of the Job cannot start (a missing Secret, an image pull), if one cannot."""

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed


@dataclasses.dataclass(frozen=True)
class Observed:
    name: str
    generation: int
    spec: api.AgentRunSpec
    status: api.AgentRunStatus
    job: JobView | None
    """The Job of `status.attempt`, if it exists."""
    record: api.CheckpointRecord | None
    now: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything to do for one run, applied in this order: stop, start, status, events."""

    status: api.AgentRunStatus
    start_attempt: int | None = None
    """Claim the checkpoint for this attempt, then create its Job."""
    stop_job: str | None = None
    """Delete this Job and its pods (suspend)."""
    events: tuple[Event, ...] = ()
    wake_after: float | None = RECHECK_SECONDS
    """Look at the run again after this many seconds; None when it is final."""


def decide(seen: Observed) -> Plan:
    """The next step for a run, from what was observed of it."""
    status = seen.status.model_copy(deep=True)
    status.observed_generation = seen.generation
    if status.phase is not None and api.Phase(status.phase).is_final:
        return Plan(status=status, wake_after=None)
    plan = _next_step(seen, status)
    return _with_stray_decisions_reported(seen, plan)


def _next_step(seen: Observed, status: api.AgentRunStatus) -> Plan:
    """The plan for a run that is not final yet; `status` is the copy to change."""
    _copy_progress(status, seen.record)
    job, record = seen.job, _current_record(seen)
    if job is not None and job.deleting and not job.succeeded:
        # A Job we stopped (suspend) may still report its killed pods as a failure
        # while it goes away; that is no failed attempt.
        job = None

    # An attempt that ended decides the run's fate before anything else: a run that
    # succeeded just as someone asked to suspend it has still succeeded.
    if job is not None and job.succeeded:
        if record is not None and record.outcome == api.Outcome.SUCCEEDED:
            return _succeed(seen, status, record)
        if record is not None and record.outcome == api.Outcome.PAUSED:
            return _await_decisions(seen, status, record)
        failure = api.AttemptFailure(
            attempt=status.attempt,
            reason="RunnerExitedEarly",
            message="The runner exited 0 without recording an outcome in the checkpoint.",
        )
        return _attempt_failed(seen, status, failure)
    if job is not None and job.failed:
        return _attempt_failed(seen, status, _failure_of(status, job, record))

    if seen.spec.suspend:
        return _suspend(seen, status)
    if status.phase == api.Phase.SUSPENDED:
        return _start(seen, status, reason="Resumed", why="the run was unsuspended")
    if status.phase == api.Phase.AWAITING_APPROVAL and record is not None:
        return _await_decisions(seen, status, record)

    if status.attempt == 0:
        return _start(seen, status, reason="Started", why="the run was created")
    if job is None:
        if status.next_attempt_time is not None:
            return _attempt_failed(seen, status, _failure_of(status, None, record))
        failure = api.AttemptFailure(
            attempt=status.attempt,
            reason="JobDeleted",
            message=f"Job {status.job_name} of attempt {status.attempt} disappeared.",
        )
        return _attempt_failed(seen, status, failure)
    if job.suspended and seen.spec.queue_name:
        message = f"Job {job.name} waits for Kueue to admit it from queue {seen.spec.queue_name}."
        return _transition(seen, status, api.Phase.PENDING, "Queued", message)
    if job.waiting:
        message = f"Attempt {status.attempt} cannot start its pod: {job.waiting}"
        plan = _transition(seen, status, api.Phase.RUNNING, "PodWaiting", message)
        if seen.status.reason != "PodWaiting":
            plan = dataclasses.replace(plan, events=(Event("Warning", "PodWaiting", message),))
        return plan
    return _transition(seen, status, api.Phase.RUNNING, "AttemptRunning", _running_message(status))


def _with_stray_decisions_reported(seen: Observed, plan: Plan) -> Plan:
    """Decisions that match no call the run ever paused on are ignored, and said so once."""
    status = plan.status
    known = {*status.settled_calls, *status.ignored_decisions}
    if seen.record is not None:
        known.update(p.tool_call_id for p in seen.record.pending)
    stray = [a.tool_call_id for a in seen.spec.approvals if a.tool_call_id not in known]
    if not stray:
        return plan
    status.ignored_decisions = [*status.ignored_decisions, *stray]
    events = tuple(
        Event(
            "Warning",
            "DecisionIgnored",
            f"The decision on {call_id!r} matches no pending call of this run; it is ignored.",
        )
        for call_id in stray
    )
    return dataclasses.replace(plan, events=(*plan.events, *events))


def _current_record(seen: Observed) -> api.CheckpointRecord | None:
    """The checkpoint record, when the current attempt owns it."""
    record = seen.record
    if record is None or record.attempt != seen.status.attempt:
        return None
    return record


def _copy_progress(status: api.AgentRunStatus, record: api.CheckpointRecord | None) -> None:
    if record is None:
        return
    status.requests = record.requests
    status.usage = record.usage.model_copy()
    status.checkpoint = api.CheckpointStatus(
        config_map=status.checkpoint.config_map if status.checkpoint else "",
        segments=len(record.segments),
        messages=record.messages,
        bytes=record.bytes,
        last_write_time=record.updated_at,
    )


def _running_message(status: api.AgentRunStatus) -> str:
    return f"Attempt {status.attempt} is running in Job {status.job_name}."


def _succeed(seen: Observed, status: api.AgentRunStatus, record: api.CheckpointRecord) -> Plan:
    output = record.output or ""
    status.output = output[: api.MAX_OUTPUT_CHARS]
    status.completion_time = _stamp(seen.now)
    status.pending_approvals, status.pending_count = [], 0
    requests = f"{record.requests} model request{'' if record.requests == 1 else 's'}"
    message = f"The agent answered after {requests} in attempt {status.attempt}."
    return _transition(seen, status, api.Phase.SUCCEEDED, "Succeeded", message, final=True)


def _fail(seen: Observed, status: api.AgentRunStatus, reason: str, message: str) -> Plan:
    status.completion_time = _stamp(seen.now)
    status.next_attempt_time = None
    if seen.record is not None and seen.record.output:
        status.output = seen.record.output[: api.MAX_OUTPUT_CHARS]
    return _transition(seen, status, api.Phase.FAILED, reason, message, final=True)


def _failure_of(
    status: api.AgentRunStatus, job: JobView | None, record: api.CheckpointRecord | None
) -> api.AttemptFailure:
    """Why the current attempt failed: the runner's own account if it left one."""
    if (
        record is not None
        and record.failure is not None
        and record.failure.attempt == status.attempt
    ):
        return record.failure
    detail = job.failure if job is not None and job.failure else "its pods failed"
    return api.AttemptFailure(
        attempt=status.attempt,
        reason="JobFailed",
        message=f"Job {status.job_name} failed: {detail}.",
    )


def _attempt_failed(
    seen: Observed, status: api.AgentRunStatus, failure: api.AttemptFailure
) -> Plan:
    """Count a failed attempt once, wait out the backoff, then start the next one."""
    retry = seen.spec.retry
    if status.next_attempt_time is None:
        status.failed_attempts += 1
        if failure.final or status.failed_attempts >= retry.max_attempts:
            tail = "" if failure.final else f" ({status.failed_attempts} failed attempts)"
            return _fail(seen, status, failure.reason, f"{failure.message}{tail}")
        due = seen.now + datetime.timedelta(seconds=retry.backoff_seconds)
        status.next_attempt_time = _stamp(due)
        message = (
            f"Attempt {status.attempt} failed: {failure.message} "
            f"Attempt {status.attempt + 1} starts at {status.next_attempt_time}."
        )
        plan = _transition(seen, status, api.Phase.RUNNING, failure.reason, message)
        event = Event("Warning", "AttemptFailed", message)
        return dataclasses.replace(
            plan, events=(*plan.events, event), wake_after=float(retry.backoff_seconds)
        )

    remaining = (_parse(status.next_attempt_time) - seen.now).total_seconds()
    if remaining > 0:
        return Plan(status=status, wake_after=remaining)
    return _start(seen, status, reason="Retrying", why=f"attempt {status.attempt} failed")


def _await_decisions(
    seen: Observed, status: api.AgentRunStatus, record: api.CheckpointRecord
) -> Plan:
    """A paused run resumes only once every pending call has a decision, or times out."""
    status.pending_approvals = [_pending_for_status(p) for p in record.pending]
    undecided = [p for p in record.pending if seen.spec.decision_for(p.tool_call_id) is None]
    status.pending_count = len(undecided)
    if not undecided:
        _settle(status, record)
        return _start(seen, status, reason="Resumed", why="every pending call was decided")

    policy = seen.spec.approval_policy
    if policy is not None and policy.timeout_seconds is not None:
        oldest = min(_parse(p.requested_at) for p in undecided if p.requested_at)
        deadline = oldest + datetime.timedelta(seconds=policy.timeout_seconds)
        if seen.now >= deadline:
            message = (
                f"{len(undecided)} pending calls got no decision within {policy.timeout_seconds}s."
            )
            if policy.on_timeout == api.OnTimeout.FAIL:
                return _fail(seen, status, "ApprovalTimeout", message)
            _settle(status, record)
            return _start(seen, status, reason="ApprovalTimedOut", why=message.rstrip("."))
        wake = (deadline - seen.now).total_seconds()
    else:
        wake = RECHECK_SECONDS

    calls = ", ".join(f"{p.tool_name} ({p.tool_call_id})" for p in undecided)
    message = f"Waiting for a decision on {calls} in spec.approvals."
    plan = _transition(seen, status, api.Phase.AWAITING_APPROVAL, "ApprovalRequired", message)
    return dataclasses.replace(plan, wake_after=min(wake, RECHECK_SECONDS))


def _settle(status: api.AgentRunStatus, record: api.CheckpointRecord) -> None:
    """The paused calls are settled: the next attempt starts with their decisions."""
    settled = [p.tool_call_id for p in record.pending if p.tool_call_id not in status.settled_calls]
    status.settled_calls = [*status.settled_calls, *settled]


def _pending_for_status(call: api.PendingCall) -> api.PendingApproval:
    arguments = call.arguments
    if len(arguments) > api.MAX_PENDING_ARGUMENT_CHARS:
        arguments = arguments[: api.MAX_PENDING_ARGUMENT_CHARS - 1] + "…"
    return api.PendingApproval(
        tool_call_id=call.tool_call_id,
        tool_name=call.tool_name,
        arguments=arguments,
        requested_at=call.requested_at,
    )


def _suspend(seen: Observed, status: api.AgentRunStatus) -> Plan:
    job = seen.job
    stop = job.name if job is not None and not job.finished and not job.deleting else None
    status.next_attempt_time = None
    message = "Suspended by spec.suspend; the checkpoint is kept and the run resumes from it."
    plan = _transition(seen, status, api.Phase.SUSPENDED, "Suspended", message)
    return dataclasses.replace(plan, stop_job=stop)


def _start(seen: Observed, status: api.AgentRunStatus, *, reason: str, why: str) -> Plan:
    attempt = status.attempt + 1
    status.attempt = attempt
    status.job_name = names.job(seen.name, attempt)
    status.next_attempt_time = None
    status.pending_approvals, status.pending_count = [], 0
    if status.start_time is None:
        status.start_time = _stamp(seen.now)
    if seen.spec.queue_name:
        # Queued from the start: the Job is created suspended, and Kueue's admission is
        # the next thing to happen to it.
        phase, reason = api.Phase.PENDING, "Queued"
        message = f"Attempt {attempt} submitted to Kueue queue {seen.spec.queue_name}: {why}."
    else:
        phase = api.Phase.RUNNING
        message = f"Attempt {attempt} started in Job {status.job_name}: {why}."
    plan = _transition(seen, status, phase, reason, message, event_anyway=True)
    return dataclasses.replace(plan, start_attempt=attempt, wake_after=RECHECK_SECONDS)


def _transition(
    seen: Observed,
    status: api.AgentRunStatus,
    phase: api.Phase,
    reason: str,
    message: str,
    *,
    final: bool = False,
    event_anyway: bool = False,
) -> Plan:
    """Set the phase, its condition, reason and message; an Event when the phase changes."""
    changed = status.phase != phase
    status.phase = phase
    status.reason, status.message = reason, message
    status.conditions = set_phase_condition(
        status.conditions, phase, reason, message, now=seen.now, generation=seen.generation
    )
    events: tuple[Event, ...] = ()
    if changed or event_anyway:
        kind: Literal["Normal", "Warning"] = "Warning" if phase == api.Phase.FAILED else "Normal"
        events = (Event(kind, reason, message),)
    return Plan(status=status, events=events, wake_after=None if final else RECHECK_SECONDS)


# The condition types a run reports: one per phase but Pending, which is the absence
# of the others. `kubectl wait --for=condition=Succeeded` waits for the end.
CONDITION_TYPES = tuple(p for p in api.Phase if p != api.Phase.PENDING)


def set_phase_condition(
    conditions: Sequence[api.Condition],
    phase: api.Phase,
    reason: str,
    message: str,
    *,
    now: datetime.datetime,
    generation: int,
) -> list[api.Condition]:
    """The phase's condition True and every other known one False, keeping transition
    times of conditions whose status did not change."""
    by_type = {c.type: c for c in conditions}
    out = []
    for kind in CONDITION_TYPES:
        old = by_type.get(kind)
        truth = "True" if kind == phase else "False"
        if old is None and truth == "False":
            continue
        moved = old is None or old.status != truth
        out.append(
            api.Condition(
                type=kind,
                status=truth,
                reason=reason,
                message=message if truth == "True" else f"The run is {phase} now.",
                last_transition_time=_stamp(now)
                if moved or old is None
                else old.last_transition_time,
                observed_generation=generation,
            )
        )
    return out


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
