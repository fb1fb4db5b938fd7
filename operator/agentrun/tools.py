"""The built-in tools: fetch a URL, read, write and list workspace files, run a shell command.

`agent` registers the ones a run's spec names; the runner's write-ahead journal reads
`IDEMPOTENT` to decide which interrupted calls may run again. Each tool returns text for
the model. What the model can act on (a missing file, a path outside the workspace, a
timeout, a non-zero exit) is a result, not an exception, so one bad call never ends a run.

The workspace is the runner's working directory (the pod's emptyDir). File tools refuse
any path that resolves outside it, symbolic links included. The shell is not confined:
it runs in the workspace with the pod's rights, which is why it needs approval by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from pathlib import Path

# At run time, not only for the type checker: pydantic-ai reads the tools' annotations.
from pydantic_ai import RunContext

__all__ = [
    "FETCH_LIMIT",
    "IDEMPOTENT",
    "IDEMPOTENT_METADATA",
    "OUTPUT_LIMIT",
    "READ_LIMIT",
    "PathRefused",
    "ToolDeps",
    "fetch_url",
    "list_files",
    "read_file",
    "resolve",
    "shell",
    "write_file",
]

READ_LIMIT = 256 * 1024
"""Bytes read_file returns in one call; the model pages through bigger files."""
FETCH_LIMIT = 1024 * 1024
"""Bytes of a response body fetch_url reads."""
OUTPUT_LIMIT = 64 * 1024
"""Bytes of a shell command's output kept: its first and last halves."""
LIST_LIMIT = 1000
"""Entries list_files returns."""
FETCH_TIMEOUT_SECONDS = 30.0

IDEMPOTENT = frozenset({"fetch_url", "read_file", "write_file", "list_files"})
"""Tools that may run again after a crash left their outcome unknown: reading has no
effect, fetch_url only GETs, and writing the same content twice leaves the same file.
Each call carries the idempotency key `<run uid>:<tool call id>` all the same."""
IDEMPOTENT_METADATA = "agentrun.dev/idempotent"
"""Key of a tool's metadata saying it is in IDEMPOTENT (MCP tools never are)."""

# Variables a child process must not inherit: the model's API key (already removed from
# the runner's own environment at start) and MCP header secrets.
_SECRET_PREFIXES = ("AGENTRUN_API_KEY", "AGENTRUN_MCP_")


@dataclasses.dataclass(frozen=True)
class ToolDeps:
    """What the tools of one run need, passed as the agent's deps."""

    workspace: Path
    """Resolved working directory; file tools stay inside it."""
    run_uid: str
    tool_timeout: float
    """limits.toolTimeoutSeconds."""

    def idempotency_key(self, tool_call_id: str | None) -> str:
        return f"{self.run_uid}:{tool_call_id or ''}"


class PathRefused(ValueError):
    """A path resolves outside the workspace."""


def resolve(workspace: Path, path: str) -> Path:
    """`path` (relative to the workspace, or absolute inside it) resolved; raises PathRefused."""
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = workspace / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(workspace):
        raise PathRefused(f"Refused: {path!r} is outside the workspace.")
    return resolved


async def read_file(ctx: RunContext[ToolDeps], path: str, offset: int = 0) -> str:
    """Read a text file of the workspace.

    Args:
        path: File path, relative to the workspace.
        offset: Byte offset to start reading at, to page through a big file.
    """
    try:
        target = resolve(ctx.deps.workspace, path)
        with target.open("rb") as file:
            file.seek(max(0, offset))
            data = file.read(READ_LIMIT + 1)
    except (PathRefused, OSError) as error:
        return _failure(error)
    text = data[:READ_LIMIT].decode("utf-8", "replace")
    if len(data) > READ_LIMIT:
        following = max(0, offset) + READ_LIMIT
        text += f"\n[The file goes on; read it from offset={following}.]"
    return text


async def write_file(ctx: RunContext[ToolDeps], path: str, content: str) -> str:
    """Write a text file in the workspace, replacing it if it exists. Creates folders.

    Args:
        path: File path, relative to the workspace.
        content: The whole new content of the file.
    """
    try:
        target = resolve(ctx.deps.workspace, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8", "surrogateescape")
        target.write_bytes(data)
    except (PathRefused, OSError) as error:
        return _failure(error)
    return f"Wrote {len(data)} bytes to {path}."


async def list_files(ctx: RunContext[ToolDeps], path: str = ".", recursive: bool = False) -> str:
    """List a folder of the workspace: folders end with a slash, files show their size.

    Args:
        path: Folder path, relative to the workspace.
        recursive: Whether to list the folders inside too.
    """
    try:
        folder = resolve(ctx.deps.workspace, path)
        entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
        lines = [_entry(entry, folder) for entry in entries[:LIST_LIMIT]]
    except (PathRefused, OSError) as error:
        return _failure(error)
    if len(entries) > LIST_LIMIT:
        lines.append(f"[{len(entries) - LIST_LIMIT} more entries not shown.]")
    return "\n".join(lines) if lines else "(empty)"


def _entry(entry: Path, folder: Path) -> str:
    name = entry.relative_to(folder).as_posix()
    if entry.is_dir():
        return f"{name}/"
    with contextlib.suppress(OSError):
        return f"{name}  {entry.stat().st_size} bytes"
    return name


async def fetch_url(ctx: RunContext[ToolDeps], url: str) -> str:
    """Fetch a URL with HTTP GET and return its status, content type and body as text.

    Args:
        url: An http or https URL.
    """
    import httpx2

    if not url.startswith(("http://", "https://")):
        return f"Refused: {url!r} is not an http or https URL."
    timeout = min(ctx.deps.tool_timeout, FETCH_TIMEOUT_SECONDS)
    headers = {"Idempotency-Key": ctx.deps.idempotency_key(ctx.tool_call_id)}
    try:
        async with (
            httpx2.AsyncClient(timeout=timeout, follow_redirects=True, max_redirects=5) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            body = bytearray()
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > FETCH_LIMIT:
                    break
            encoding = response.encoding or "utf-8"
            status, kind = response.status_code, response.headers.get("content-type", "")
    except (httpx2.HTTPError, OSError, LookupError) as error:
        return f"Failed to fetch {url}: {error or type(error).__name__}"
    text = bytes(body[:FETCH_LIMIT]).decode(encoding, "replace")
    if len(body) > FETCH_LIMIT:
        text += f"\n[Cut at {FETCH_LIMIT} bytes.]"
    return f"HTTP {status} {kind}\n\n{text}"


async def shell(ctx: RunContext[ToolDeps], command: str) -> str:
    """Run a shell command in the workspace and return its exit code and output.

    stdout and stderr are merged; long output keeps its beginning and end.

    Args:
        command: The command line, run by /bin/sh.
    """
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(_SECRET_PREFIXES)
    }
    environment["AGENTRUN_IDEMPOTENCY_KEY"] = ctx.deps.idempotency_key(ctx.tool_call_id)
    try:
        process = await asyncio.create_subprocess_shell(
            command,
            cwd=ctx.deps.workspace,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout kills all of it
        )
    except OSError as error:
        return f"Failed to start the command: {error}"
    output = _BoundedOutput(OUTPUT_LIMIT)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(ctx.deps.tool_timeout):
            while piece := await process.stdout.read(65536):
                output.add(piece)
            code = await process.wait()
    except TimeoutError:
        _kill_group(process.pid)
        await process.wait()
        return (
            f"Timed out after {ctx.deps.tool_timeout:g} seconds; the command was killed.\n"
            f"{output.text()}"
        )
    return f"exit code {code}\n{output.text()}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _BoundedOutput:
    """The first and last `limit // 2` bytes of a stream, and how many were cut between."""

    def __init__(self, limit: int) -> None:
        self._half = limit // 2
        self._head = bytearray()
        self._tail = bytearray()
        self._cut = 0

    def add(self, data: bytes) -> None:
        room = max(0, self._half - len(self._head))
        self._head += data[:room]
        self._tail += data[room:]
        if len(self._tail) > self._half:
            self._cut += len(self._tail) - self._half
            del self._tail[: len(self._tail) - self._half]

    def text(self) -> str:
        head = self._head.decode("utf-8", "replace")
        tail = self._tail.decode("utf-8", "replace")
        if self._cut:
            return f"{head}\n[... {self._cut} bytes cut ...]\n{tail}"
        return head + tail


def _failure(error: Exception) -> str:
    if isinstance(error, PathRefused):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"No such file or folder: {error.filename}"
    return f"Failed: {error.strerror or error}" if isinstance(error, OSError) else str(error)
