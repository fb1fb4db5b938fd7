"""The built-in tools, called directly, in a temporary workspace."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from pydantic_ai import RunContext

from agentrun import tools


def context(workspace: Path, *, timeout: float = 10.0, call: str = "call-1") -> Any:
    """The part of a RunContext the tools read."""

    class Context:
        deps = tools.ToolDeps(workspace=workspace.resolve(), run_uid="uid-1", tool_timeout=timeout)
        tool_call_id = call

    return cast(RunContext[tools.ToolDeps], Context())


def run(coroutine: Any) -> str:
    result: str = asyncio.run(coroutine)
    return result


# -- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "a/../../outside.txt"])
def test_paths_outside_the_workspace_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(tools.PathRefused):
        tools.resolve(tmp_path.resolve(), path)


def test_a_symbolic_link_out_of_the_workspace_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "escape").symlink_to(tmp_path)

    result = run(tools.read_file(context(workspace), "escape/secret.txt"))

    assert result.startswith("Refused:")


def test_paths_inside_the_workspace_resolve_there(tmp_path: Path) -> None:
    workspace = tmp_path.resolve()

    assert tools.resolve(workspace, "a/b/../c.txt") == workspace / "a" / "c.txt"
    assert tools.resolve(workspace, str(workspace / "d.txt")) == workspace / "d.txt"


# -- files ----------------------------------------------------------------------------------


def test_a_written_file_reads_back(tmp_path: Path) -> None:
    written = run(tools.write_file(context(tmp_path), "notes/today.md", "héllo\n"))

    assert written == "Wrote 7 bytes to notes/today.md."
    assert run(tools.read_file(context(tmp_path), "notes/today.md")) == "héllo\n"


def test_writing_the_same_content_twice_leaves_the_same_file(tmp_path: Path) -> None:
    for _ in range(2):
        run(tools.write_file(context(tmp_path), "a.txt", "same"))

    assert (tmp_path / "a.txt").read_text() == "same"


def test_a_big_file_is_read_in_pages(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_bytes(b"a" * tools.READ_LIMIT + b"tail")

    first = run(tools.read_file(context(tmp_path), "big.txt"))
    second = run(tools.read_file(context(tmp_path), "big.txt", offset=tools.READ_LIMIT))

    assert first.endswith(f"read it from offset={tools.READ_LIMIT}.]")
    assert len(first) < tools.READ_LIMIT + 100
    assert second == "tail"


def test_a_missing_file_is_a_result_not_an_error(tmp_path: Path) -> None:
    result = run(tools.read_file(context(tmp_path), "nope.txt"))

    assert result.startswith("No such file or folder")


def test_writing_outside_the_workspace_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()

    result = run(tools.write_file(context(workspace), "../evil.txt", "x"))

    assert result.startswith("Refused:")
    assert not (tmp_path / "evil.txt").exists()


def test_a_listing_marks_folders_and_sizes_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.txt").write_text("12345")
    (tmp_path / "top.txt").write_text("1")

    flat = run(tools.list_files(context(tmp_path)))
    deep = run(tools.list_files(context(tmp_path), recursive=True))

    assert flat.splitlines() == ["sub/", "top.txt  1 bytes"]
    assert "sub/inner.txt  5 bytes" in deep.splitlines()


def test_a_long_listing_is_cut(tmp_path: Path) -> None:
    for number in range(tools.LIST_LIMIT + 5):
        (tmp_path / f"f{number:05d}").touch()

    lines = run(tools.list_files(context(tmp_path))).splitlines()

    assert len(lines) == tools.LIST_LIMIT + 1
    assert lines[-1] == "[5 more entries not shown.]"


# -- shell ----------------------------------------------------------------------------------


def test_the_shell_returns_the_exit_code_and_merged_output(tmp_path: Path) -> None:
    result = run(tools.shell(context(tmp_path), "echo out; echo err >&2; pwd; exit 3"))

    assert result.splitlines() == ["exit code 3", "out", "err", str(tmp_path.resolve())]


def test_the_shell_never_sees_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRUN_API_KEY", "sk-secret")
    monkeypatch.setenv("AGENTRUN_MCP_0_Authorization", "Bearer secret")

    result = run(tools.shell(context(tmp_path, call="c7"), "env"))

    assert "secret" not in result
    assert "AGENTRUN_IDEMPOTENCY_KEY=uid-1:c7" in result


def test_a_command_past_the_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    began = time.monotonic()

    result = run(tools.shell(context(tmp_path, timeout=1), "sleep 30 & echo started; wait"))

    assert time.monotonic() - began < 10
    assert result.startswith("Timed out after 1 seconds")
    assert "started" in result


def test_long_output_keeps_its_beginning_and_end(tmp_path: Path) -> None:
    result = run(
        tools.shell(
            context(tmp_path), "echo FIRST; head -c 300000 /dev/zero | tr '\\0' x; echo; echo LAST"
        )
    )

    assert len(result) < tools.OUTPUT_LIMIT + 200
    assert "FIRST" in result and "LAST" in result
    assert "bytes cut ...]" in result


# -- fetch_url ------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    seen_keys: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        _Handler.seen_keys.append(self.headers.get("Idempotency-Key"))
        body = b"z" * (tools.FETCH_LIMIT + 10) if self.path == "/big" else "héllo".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_fetch_returns_status_type_and_body_with_the_idempotency_key(
    tmp_path: Path, web: str
) -> None:
    result = run(tools.fetch_url(context(tmp_path, call="c3"), f"{web}/page"))

    assert result == "HTTP 200 text/plain; charset=utf-8\n\nhéllo"
    assert _Handler.seen_keys[-1] == "uid-1:c3"


def test_a_big_body_is_cut(tmp_path: Path, web: str) -> None:
    result = run(tools.fetch_url(context(tmp_path), f"{web}/big"))

    assert result.endswith(f"[Cut at {tools.FETCH_LIMIT} bytes.]")


def test_only_http_urls_are_fetched(tmp_path: Path) -> None:
    assert run(tools.fetch_url(context(tmp_path), "file:///etc/passwd")).startswith("Refused:")


def test_an_unreachable_url_is_a_result(tmp_path: Path) -> None:
    result = run(tools.fetch_url(context(tmp_path), "http://127.0.0.1:9/"))

    assert result.startswith("Failed to fetch http://127.0.0.1:9/")
