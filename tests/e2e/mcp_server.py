"""A real MCP server (the `mcp` SDK, streamable HTTP) that runs' pods reach, for the MCP
tests: on loopback locally, on the nodes' network against kind (tests.cluster_fixtures.
Target).

Its tools record every call in `calls`, so that tests can tell how often each ran.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from mcp.server import MCPServer

from tests.cluster_fixtures import TARGET


class CalculatorMcpServer:
    """`add` adds two numbers; `wipe` pretends to delete a folder (a gated tool)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, object]]] = []
        self.headers_seen: list[str] = []
        server: MCPServer = MCPServer("calculator")

        @server.tool()
        def add(a: int, b: int) -> str:
            """Add two integers."""
            self.calls.append(("add", {"a": a, "b": b}))
            return str(a + b)

        @server.tool()
        def wipe(folder: str) -> str:
            """Delete everything in a folder."""
            self.calls.append(("wipe", {"folder": folder}))
            return f"wiped {folder}"

        with socket.socket() as sock:
            sock.bind((TARGET.bind, 0))
            self.port: int = sock.getsockname()[1]
        app = server.streamable_http_app(stateless_http=True, json_response=True)
        config = uvicorn.Config(app, host=TARGET.bind, port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{TARGET.host}:{self.port}/mcp"

    def __enter__(self) -> CalculatorMcpServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the MCP server did not start")
            time.sleep(0.05)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
