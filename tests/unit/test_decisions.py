"""The operator's decisions, from observed state to plan, without a cluster."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from agentrun import api, decisions

NOW = datetime.datetime(2026, 12, 3, 12, 0, 0, tzinfo=datetime.UTC)


def observed(
    *,
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    job: decisions.JobView | None = None,
    record: api.CheckpointRecord | None = None,
    now: datetime.datetime = NOW,
) -> decisions.Observed:
    return decisions.Observed(
        name="demo",
        generation=1,
        spec=api.AgentRunSpec.model_validate({"prompt": "hi", "model": "openai:m", **(spec or {})}),
        status=api.AgentRunStatus.model_validate(status or {}),
        job=job,
        record=record,
        now=now,
    )


def running(attempt: int = 1, **extra: Any) -> dict[str, Any]:
    """The status of a run whose attempt is under way, as the operator left it."""
    return {
        "phase": "Running",
        "reason": "AttemptRunning",
        "attempt": attempt,
        "jobName": f"demo-{attempt}",
        "conditions": [
            {"type": "Running", "status": "True", "lastTransitionTime": "2026-12-03T11:00:00Z"}
        ],
        **extra,
    }


def test_a_new_run_starts_its_first_attempt() -> None:
    plan = decisions.decide(observed())

    assert plan.start_attempt == 1
    assert plan.status.phase == api.Phase.RUNNING
    assert plan.status.job_name == "demo-1"
    assert plan.status.start_time == "2026-12-03T12:00:00Z"
    assert [e.reason for e in plan.events] == ["Started"]


def test_a_queued_run_starts_pending_until_kueue_admits_its_job() -> None:
    first = decisions.decide(observed(spec={"queueName": "team-a"}))
    waiting = decisions.decide(
        observed(
            spec={"queueName": "team-a"},
            status=api.dump(first.status),
            job=decisions.JobView(name="demo-1", suspended=True),
        )
    )

    assert first.start_attempt == 1
    assert (first.status.phase, first.status.reason) == (api.Phase.PENDING, "Queued")
    assert waiting.status.phase == api.Phase.PENDING
    assert waiting.status.reason == "Queued"
    assert waiting.start_attempt is None


def test_a_running_job_keeps_the_run_running_and_copies_progress() -> None:
    record = api.CheckpointRecord(attempt=1, requests=2, usage=api.Usage(total_tokens=30))

    plan = decisions.decide(
        observed(status=running(), job=decisions.JobView(name="demo-1"), record=record)
    )

    assert plan.start_attempt is None
    assert plan.status.phase == api.Phase.RUNNING
    assert plan.status.requests == 2
    assert plan.status.usage.total_tokens == 30
    assert plan.events == ()


def test_a_succeeded_job_with_an_answer_ends_the_run_succeeded() -> None:
    record = api.CheckpointRecord(attempt=1, outcome=api.Outcome.SUCCEEDED, output="42")

    plan = decisions.decide(
        observed(
            status=running(), job=decisions.JobView(name="demo-1", succeeded=True), record=record
        )
    )

    assert plan.status.phase == api.Phase.SUCCEEDED
    assert plan.status.output == "42"
    assert plan.status.completion_time == "2026-12-03T12:00:00Z"
    assert plan.wake_after is None
    assert [(c.type, c.status) for c in plan.status.conditions] == [
        ("Running", "False"),
        ("Succeeded", "True"),
    ]


def test_an_output_longer_than_the_bound_is_cut_in_status() -> None:
    record = api.CheckpointRecord(attempt=1, outcome=api.Outcome.SUCCEEDED, output="x" * 100_000)

    plan = decisions.decide(
        observed(
            status=running(), job=decisions.JobView(name="demo-1", succeeded=True), record=record
        )
    )

    assert plan.status.output is not None
    assert len(plan.status.output) == api.MAX_OUTPUT_CHARS


def test_a_record_of_an_older_attempt_does_not_finish_the_run() -> None:
    stale = api.CheckpointRecord(attempt=1, outcome=api.Outcome.SUCCEEDED, output="old")

    plan = decisions.decide(
        observed(
            status=running(2), job=decisions.JobView(name="demo-2", succeeded=True), record=stale
        )
    )

    assert plan.status.phase != api.Phase.SUCCEEDED
    assert plan.status.reason == "RunnerExitedEarly"


def test_a_failed_attempt_waits_out_the_backoff_then_starts_the_next() -> None:
    failure = api.AttemptFailure(attempt=1, reason="ModelError", message="HTTP 500.")
    record = api.CheckpointRecord(attempt=1, failure=failure)
    job = decisions.JobView(name="demo-1", failed=True)
    spec = {"retry": {"maxAttempts": 3, "backoffSeconds": 20}}

    counted = decisions.decide(observed(spec=spec, status=running(), job=job, record=record))
    early = decisions.decide(
        observed(
            spec=spec,
            status=api.dump(counted.status),
            job=job,
            record=record,
            now=NOW + datetime.timedelta(seconds=5),
        )
    )
    due = decisions.decide(
        observed(
            spec=spec,
            status=api.dump(counted.status),
            job=job,
            record=record,
            now=NOW + datetime.timedelta(seconds=20),
        )
    )

    assert counted.status.failed_attempts == 1
    assert counted.status.reason == "ModelError"
    assert counted.start_attempt is None
    assert counted.wake_after == 20
    assert early.start_attempt is None
    assert early.status.failed_attempts == 1
    assert early.wake_after == pytest.approx(15)
    assert due.start_attempt == 2
    assert due.status.next_attempt_time is None


def test_the_last_allowed_failure_fails_the_run_with_the_runners_reason() -> None:
    failure = api.AttemptFailure(
        attempt=3, reason="ModelError", message="endpoint answered HTTP 500."
    )
    record = api.CheckpointRecord(attempt=3, failure=failure)

    plan = decisions.decide(
        observed(
            spec={"retry": {"maxAttempts": 3}},
            status=running(3, failedAttempts=2),
            job=decisions.JobView(name="demo-3", failed=True),
            record=record,
        )
    )

    assert plan.status.phase == api.Phase.FAILED
    assert plan.status.reason == "ModelError"
    assert plan.status.message is not None and "HTTP 500" in plan.status.message
    assert plan.events[0].type == "Warning"


def test_a_final_failure_such_as_a_budget_fails_the_run_without_retrying() -> None:
    failure = api.AttemptFailure(
        attempt=1, reason="BudgetExceeded", message="50 requests.", final=True
    )

    plan = decisions.decide(
        observed(
            status=running(),
            job=decisions.JobView(name="demo-1", failed=True),
            record=api.CheckpointRecord(attempt=1, failure=failure, output="partial"),
        )
    )

    assert plan.status.phase == api.Phase.FAILED
    assert plan.status.reason == "BudgetExceeded"
    assert plan.status.output == "partial"


def test_a_job_that_failed_without_a_runner_account_names_the_job() -> None:
    plan = decisions.decide(
        observed(
            spec={"retry": {"maxAttempts": 1}},
            status=running(),
            job=decisions.JobView(name="demo-1", failed=True, failure="BackoffLimitExceeded: x"),
        )
    )

    assert plan.status.reason == "JobFailed"
    assert plan.status.message is not None and "BackoffLimitExceeded" in plan.status.message


def test_a_paused_attempt_awaits_decisions_and_lists_pending_calls() -> None:
    pending = api.PendingCall(
        tool_call_id="c1",
        tool_name="shell",
        arguments='{"command": "ls"}',
        requested_at="2026-12-03T11:59:00Z",
    )
    record = api.CheckpointRecord(attempt=1, outcome=api.Outcome.PAUSED, pending=[pending])

    plan = decisions.decide(
        observed(
            status=running(), job=decisions.JobView(name="demo-1", succeeded=True), record=record
        )
    )

    assert plan.status.phase == api.Phase.AWAITING_APPROVAL
    assert plan.status.pending_count == 1
    assert plan.status.pending_approvals[0].tool_call_id == "c1"
    assert plan.start_attempt is None
    assert [e.reason for e in plan.events] == ["ApprovalRequired"]


def paused_with(*ids: str) -> api.CheckpointRecord:
    calls = [
        api.PendingCall(tool_call_id=i, tool_name="shell", requested_at="2026-12-03T11:59:00Z")
        for i in ids
    ]
    return api.CheckpointRecord(attempt=1, outcome=api.Outcome.PAUSED, pending=calls)


def test_a_paused_run_waits_until_every_pending_call_is_decided() -> None:
    job = decisions.JobView(name="demo-1", succeeded=True)
    one = {"approvals": [{"toolCallId": "c1", "decision": "Approve"}]}
    both = {"approvals": [*one["approvals"], {"toolCallId": "c2", "decision": "Deny"}]}

    partly = decisions.decide(
        observed(spec=one, status=running(), job=job, record=paused_with("c1", "c2"))
    )
    fully = decisions.decide(
        observed(spec=both, status=running(), job=job, record=paused_with("c1", "c2"))
    )

    assert partly.start_attempt is None
    assert partly.status.pending_count == 1
    assert fully.start_attempt == 2
    assert fully.status.phase == api.Phase.RUNNING


@pytest.mark.parametrize(
    ("on_timeout", "phase", "starts"),
    [("Deny", api.Phase.RUNNING, 2), ("Fail", api.Phase.FAILED, None)],
)
def test_an_approval_timeout_denies_or_fails_as_the_policy_says(
    on_timeout: str, phase: api.Phase, starts: int | None
) -> None:
    spec = {"approvalPolicy": {"timeoutSeconds": 30, "onTimeout": on_timeout}}

    plan = decisions.decide(
        observed(
            spec=spec,
            status=running(),
            job=decisions.JobView(name="demo-1", succeeded=True),
            record=paused_with("c1"),
        )
    )

    assert plan.status.phase == phase
    assert plan.start_attempt == starts


def test_suspending_a_running_run_stops_its_job() -> None:
    plan = decisions.decide(
        observed(spec={"suspend": True}, status=running(), job=decisions.JobView(name="demo-1"))
    )

    assert plan.stop_job == "demo-1"
    assert plan.status.phase == api.Phase.SUSPENDED


def test_the_stopped_jobs_failure_is_no_failed_attempt() -> None:
    plan = decisions.decide(
        observed(
            spec={"suspend": True},
            status=running(phase="Suspended"),
            job=decisions.JobView(name="demo-1", failed=True, deleting=True),
        )
    )

    assert plan.status.phase == api.Phase.SUSPENDED
    assert plan.status.failed_attempts == 0
    assert plan.stop_job is None


def test_unsuspending_starts_a_new_attempt_that_resumes_from_the_checkpoint() -> None:
    plan = decisions.decide(observed(status=running(phase="Suspended"), job=None))

    assert plan.start_attempt == 2
    assert plan.status.phase == api.Phase.RUNNING
    assert plan.status.failed_attempts == 0


def test_a_run_that_succeeded_while_suspend_was_asked_stays_succeeded() -> None:
    record = api.CheckpointRecord(attempt=1, outcome=api.Outcome.SUCCEEDED, output="done")

    plan = decisions.decide(
        observed(
            spec={"suspend": True},
            status=running(),
            job=decisions.JobView(name="demo-1", succeeded=True),
            record=record,
        )
    )

    assert plan.status.phase == api.Phase.SUCCEEDED


def test_a_final_run_is_left_alone() -> None:
    plan = decisions.decide(observed(status={"phase": "Succeeded", "attempt": 1}))

    assert plan.start_attempt is None
    assert plan.events == ()
    assert plan.wake_after is None


def test_a_vanished_job_counts_as_a_failed_attempt() -> None:
    plan = decisions.decide(observed(status=running(), job=None))

    assert plan.status.failed_attempts == 1
    assert plan.status.reason == "JobDeleted"


def test_deciding_twice_on_the_same_observation_is_a_no_op() -> None:
    seen = observed(status=running(), job=decisions.JobView(name="demo-1"))
    first = decisions.decide(seen)

    again = decisions.decide(
        observed(status=api.dump(first.status), job=decisions.JobView(name="demo-1"))
    )

    assert api.dump(again.status) == api.dump(first.status)
    assert again.events == ()
    assert again.start_attempt is None


def test_a_decision_for_a_call_nobody_made_is_ignored_with_one_warning() -> None:
    job = decisions.JobView(name="demo-1", succeeded=True)
    spec = {"approvals": [{"toolCallId": "ghost", "decision": "Approve"}]}

    first = decisions.decide(
        observed(spec=spec, status=running(), job=job, record=paused_with("c1"))
    )
    again = decisions.decide(
        observed(spec=spec, status=api.dump(first.status), job=job, record=paused_with("c1"))
    )

    assert [(e.type, e.reason) for e in first.events][-1] == ("Warning", "DecisionIgnored")
    assert first.status.ignored_decisions == ["ghost"]
    assert first.start_attempt is None
    assert [e.reason for e in again.events] == []


def test_decisions_used_by_an_earlier_pause_are_not_reported_as_stray() -> None:
    job = decisions.JobView(name="demo-1", succeeded=True)
    spec = {"approvals": [{"toolCallId": "c1", "decision": "Approve"}]}

    resumed = decisions.decide(
        observed(spec=spec, status=running(), job=job, record=paused_with("c1"))
    )
    later = decisions.decide(
        observed(spec=spec, status=api.dump(resumed.status), job=decisions.JobView(name="demo-2"))
    )

    assert resumed.status.settled_calls == ["c1"]
    assert all(e.type == "Normal" for e in [*resumed.events, *later.events])


def test_a_pod_that_cannot_start_is_named_in_status_with_one_warning() -> None:
    job = decisions.JobView(name="demo-1", waiting="pod demo-1-x: secret 'key' not found.")

    first = decisions.decide(observed(status=running(), job=job))
    again = decisions.decide(observed(status=api.dump(first.status), job=job))

    assert first.status.phase == api.Phase.RUNNING
    assert first.status.reason == "PodWaiting"
    assert first.status.message is not None and "secret 'key' not found" in first.status.message
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "PodWaiting")]
    assert again.events == ()
