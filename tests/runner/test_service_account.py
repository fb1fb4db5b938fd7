"""The runner as a pod runs it: a ServiceAccount token and only the run's own Role."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrun import api, runner

from .conftest import Runners

pytestmark = pytest.mark.e2e


def test_the_runner_needs_no_more_than_the_role_the_operator_grants(
    runners: Runners, tmp_path: Path
) -> None:
    run = runners.create(
        "least-privilege",
        turns=[
            {"tool_calls": [{"name": "write_file", "arguments": {"path": "a", "content": "x"}}]},
            {"text": "done"},
        ],
        tools=[{"name": "write_file"}],
    )
    credentials = runners.pod_credentials(run, tmp_path / "serviceaccount")

    exited = runners.wait(runners.start(run, 1, credentials=credentials))

    assert exited.code == runner.EXIT_OK, exited.output
    assert runners.record(run).outcome == api.Outcome.SUCCEEDED


def test_a_runner_in_a_pod_imports_neither_the_kubernetes_client_nor_aiohttp(
    runners: Runners, tmp_path: Path
) -> None:
    # Both cost a fifth of a second at every pod's start (agentrun.apiserver says why).
    run = runners.create("light-start", turns=[{"text": "done"}])
    credentials = runners.pod_credentials(run, tmp_path / "serviceaccount")

    exited = runners.wait(
        runners.start(run, 1, credentials={**credentials, "PYTHONPROFILEIMPORTTIME": "1"})
    )

    assert exited.code == runner.EXIT_OK, exited.output
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in exited.output.splitlines()
        if line.startswith("import time:")
    }
    assert {"openai", "pydantic_ai", "httpx2"} <= imported
    # A bare `aiohttp` line is the refused attempt; a loaded aiohttp brings its modules.
    assert not {name for name in imported if name.startswith(("kubernetes", "aiohttp."))}
