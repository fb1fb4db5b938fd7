"""Prometheus metrics of the operator, served on its metrics port.

`controller` calls `observe` after every reconcile with the status before and after,
so that the figures follow what the operator saw; nothing here reads the API.
"""

from __future__ import annotations

import datetime
import threading

from prometheus_client import Counter, Gauge, Histogram

from agentrun import api

__all__ = ["forget", "observe", "reconcile_failed"]

RUNS = Gauge("agentrun_runs", "AgentRuns this operator watches, by phase.", ["phase"])
TOKENS = Counter(
    "agentrun_tokens_total",
    "Model tokens used by runs, by model and direction.",
    ["model", "direction"],
)
RUN_DURATION = Histogram(
    "agentrun_run_duration_seconds",
    "From a run's first attempt to Succeeded or Failed.",
    ["phase"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
APPROVAL_WAIT = Histogram(
    "agentrun_approval_wait_seconds",
    "How long paused runs waited for every pending call to be decided.",
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 14400, 86400),
)
RECONCILE_ERRORS = Counter(
    "agentrun_reconcile_errors_total", "Reconciles that raised, by kind of error.", ["error"]
)

_lock = threading.Lock()
_phases: dict[str, str] = {}


def observe(uid: str, model: str, before: api.AgentRunStatus, after: api.AgentRunStatus) -> None:
    """Account for one reconcile's change of a run's status."""
    phase = str(after.phase or api.Phase.PENDING)
    with _lock:
        old = _phases.get(uid)
        _phases[uid] = phase
        if old != phase:
            if old is not None:
                RUNS.labels(old).dec()
            RUNS.labels(phase).inc()

    # Counters move by what this operator saw happen, so a restart does not count a
    # finished run's tokens twice (its first observation has no growth).
    if old is not None:
        grew_in = after.usage.input_tokens - before.usage.input_tokens
        grew_out = after.usage.output_tokens - before.usage.output_tokens
        if grew_in > 0:
            TOKENS.labels(model, "input").inc(grew_in)
        if grew_out > 0:
            TOKENS.labels(model, "output").inc(grew_out)

    if before.phase == api.Phase.AWAITING_APPROVAL and after.phase != before.phase:
        waited = _seconds_since(_condition_time(before, api.Phase.AWAITING_APPROVAL))
        if waited is not None:
            APPROVAL_WAIT.observe(waited)
    if after.completion_time and not before.completion_time and after.start_time:
        took = _seconds_since(after.start_time)
        if took is not None:
            RUN_DURATION.labels(phase).observe(took)


def forget(uid: str) -> None:
    """A run was deleted: it no longer counts in any phase."""
    with _lock:
        phase = _phases.pop(uid, None)
    if phase is not None:
        RUNS.labels(phase).dec()


def reconcile_failed(error: BaseException) -> None:
    RECONCILE_ERRORS.labels(type(error).__name__).inc()


def _condition_time(status: api.AgentRunStatus, phase: api.Phase) -> str | None:
    return next((c.last_transition_time for c in status.conditions if c.type == phase), None)


def _seconds_since(stamp: str | None) -> float | None:
    if not stamp:
        return None
    then = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (datetime.datetime.now(datetime.UTC) - then).total_seconds()
