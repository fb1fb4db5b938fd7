"""Names of the objects a run owns, derived from the run's name and always valid.

Both programs call these: the operator to create the objects, the runner to find its
checkpoint. Pure functions, no framework.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "checkpoint_index",
    "checkpoint_segment",
    "fit",
    "job",
    "label_value",
    "service_account",
]

# Job names become a label value on their pods, and label values hold at most 63
# characters; ServiceAccount, Role and ConfigMap names are DNS subdomains (253), but
# one limit for all keeps the names recognisable side by side.
MAX_NAME = 63


def fit(base: str, suffix: str = "", *, limit: int = MAX_NAME) -> str:
    """`base` + `suffix`, shortened with a stable hash of the whole when too long."""
    whole = f"{base}{suffix}"
    if len(whole) <= limit:
        return whole
    digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-.')}-{digest}{suffix}"


def job(run: str, attempt: int) -> str:
    return fit(run, f"-{attempt}")


def service_account(run: str) -> str:
    """The ServiceAccount, Role and RoleBinding of a run share this name."""
    return fit(run, "-runner")


def checkpoint_index(run: str) -> str:
    return fit(run, "-checkpoint")


def checkpoint_segment(run: str, index: int) -> str:
    return fit(run, f"-history-{index}")


def label_value(run: str) -> str:
    """The run's name as a label value (at most 63 characters, alphanumeric at both ends)."""
    return fit(run)
