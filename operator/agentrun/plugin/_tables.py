"""Runs as rows: what `list` shows in columns and what `watch` prints when a run changes.

Pure, apart from reading the clock when no `now` is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agentrun.plugin import _review

__all__ = ["COLUMNS", "Row", "human_duration", "plain", "row"]

COLUMNS = ("NAME", "PHASE", "PENDING", "REQUESTS", "TOKENS", "ATTEMPT", "AGE")

# What a cell shows when the run has no such value yet, as kubectl's custom columns do.
NONE = "<none>"


@dataclasses.dataclass(frozen=True)
class Row:
    """One run as `list` and `watch` show it."""

    namespace: str
    name: str
    phase: str
    pending: int
    """Calls waiting for a decision (decided ones excluded, see `_review.pending`)."""
    requests: int
    tokens: int
    attempt: int
    age: str

    def cells(self, *, with_namespace: bool) -> list[str]:
        cells = [
            self.name,
            self.phase,
            str(self.pending),
            str(self.requests),
            str(self.tokens),
            str(self.attempt),
            self.age,
        ]
        return [self.namespace, *cells] if with_namespace else cells

    @property
    def progress(self) -> tuple[str, int, int]:
        """What `watch` reports a change of."""
        return (self.phase, self.pending, self.requests)


def row(run: Mapping[str, Any], *, now: datetime | None = None) -> Row:
    metadata = run.get("metadata") or {}
    status = run.get("status") or {}
    return Row(
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        phase=str(status.get("phase") or NONE),
        pending=len(_review.pending(run)),
        requests=int(status.get("requests") or 0),
        tokens=int((status.get("usage") or {}).get("totalTokens") or 0),
        attempt=int(status.get("attempt") or 0),
        age=_age(metadata.get("creationTimestamp"), now=now),
    )


def _age(created: object, *, now: datetime | None) -> str:
    if not isinstance(created, str):
        return NONE
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return NONE
    return human_duration(((now or datetime.now(UTC)) - then).total_seconds())


def human_duration(seconds: float) -> str:
    """An age as kubectl prints it (k8s.io/apimachinery's duration.HumanDuration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    # A second in the future is clock skew between machines, not an error.
    s = max(s, 0)
    minutes, hours, days = s // 60, s // 3600, s // 86400
    years = days // 365
    steps = (
        (s < 120, f"{s}s"),
        (minutes < 10, f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"),
        (minutes < 180, f"{minutes}m"),
        (hours < 8, f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"),
        (hours < 48, f"{hours}h"),
        (hours < 192, f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"),
        (days < 730, f"{days}d"),
        (years < 8, f"{years}y{days % 365}d" if days % 365 else f"{years}y"),
    )
    return next((text for fits, text in steps if fits), f"{years}y")


def plain(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded with spaces, three between, as kubectl prints when not on a terminal."""
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in [header, *rows]
    ]
    return "\n".join(lines) + "\n"
