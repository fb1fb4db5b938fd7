"""How the agent of a run reports the MCP servers it cannot use."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic_ai.toolsets import FunctionToolset

from agentrun import agent, api


class _Refusing(FunctionToolset[Any]):
    """A toolset whose connection fails the way an HTTP client reports a refused request."""

    async def __aenter__(self) -> _Refusing:
        raise RuntimeError(
            "Client error '401 Unauthorized' for url "
            "'https://tools.example/mcp?key=sekrit' (user:hunter2)"
        )


def test_a_server_that_cannot_be_reached_is_named_and_its_url_secrets_are_not() -> None:
    server = api.McpServer.model_validate(
        {"name": "locked", "url": "https://user:hunter2@tools.example/mcp?key=sekrit"}
    )
    connecting = agent._Connecting(_Refusing(), server=server)

    with pytest.raises(agent.McpServerUnreachable) as raised:
        asyncio.run(connecting.__aenter__())

    message = str(raised.value)
    assert message.startswith("MCP server locked could not be reached: Client error '401")
    assert "sekrit" not in message
    assert "hunter2" not in message
