"""A run's history, readable: who said what, which tools were called, what they returned.

Pure: `_commands` loads the history from the checkpoint and prints what `render` makes of
it. The history is pydantic-ai's message list as JSON, read here as plain dicts so that
the plugin starts without importing pydantic-ai. Each message is a `request` (parts
`system-prompt`, `user-prompt`, `tool-return`, `retry-prompt`, `retry-feedback`, with the
agent's `instructions` beside them) or a `response` (parts `text`, `thinking`,
`tool-call`); a part of any other kind is shown by its kind, so a newer history still
renders.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["MAX_CHARS", "MAX_LINES", "Entry", "render", "to_text"]

# Tool results can be whole files or command outputs: past these bounds they are cut,
# unless the user asks for everything with --full.
MAX_CHARS = 2000
MAX_LINES = 30

# How a tool result that is not a plain success is marked, after its title.
_OUTCOMES = {
    "denied": "denied",
    "failed": "failed",
    "interrupted": "interrupted",
    "retried": "retry",
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One block of the transcript: who speaks, a title line, and what they said."""

    who: str
    """system, user, assistant or tool."""
    title: str
    """The heading: `who`, and for tool results the tool, call id and outcome."""
    lines: tuple[str, ...]
    """The body, one item a line."""


def render(messages: Sequence[Mapping[str, Any]], *, full: bool = False) -> list[Entry]:
    """The transcript of `messages`, in order; `full` keeps long tool output whole."""
    out: list[Entry] = []
    instructions: str | None = None
    for message in messages:
        parts = [p for p in message.get("parts") or [] if isinstance(p, dict)]
        if message.get("kind") == "response":
            out.append(_response(parts, full=full))
            continue
        # pydantic-ai repeats the agent's instructions on every request: show them when
        # they first appear and whenever they change, not each time.
        if message.get("instructions") and message["instructions"] != instructions:
            instructions = str(message["instructions"])
            out.append(Entry("system", "instructions", tuple(instructions.splitlines())))
        out += [_request_part(part, full=full) for part in parts]
    return out


def to_text(entries: Sequence[Entry]) -> str:
    """Entries as plain text: each title, its lines indented, a blank line between."""
    blocks = ["\n".join([entry.title, *(f"  {line}" for line in entry.lines)]) for entry in entries]
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def _request_part(part: Mapping[str, Any], *, full: bool) -> Entry:
    kind = part.get("part_kind")
    content = part.get("content")
    if kind == "system-prompt":
        return Entry("system", "system", tuple(_text(content).splitlines()))
    if kind == "user-prompt":
        return Entry("user", "user", tuple(_user_content(content)))
    if kind in ("tool-return", "retry-prompt") and part.get("tool_name"):
        outcome = "retried" if kind == "retry-prompt" else str(part.get("outcome") or "success")
        return _tool_result(part, outcome, full=full)
    if kind in ("retry-prompt", "retry-feedback"):
        return Entry("system", "retry", tuple(_cut(_retry_text(content), full=full)))
    return Entry("system", f"[{kind} part]", ())


def _tool_result(part: Mapping[str, Any], outcome: str, *, full: bool) -> Entry:
    title = f"tool {part.get('tool_name')} ({part.get('tool_call_id')})"
    if outcome in _OUTCOMES:
        title += f": {_OUTCOMES[outcome]}"
    content = part.get("content")
    text = _retry_text(content) if outcome == "retried" else _value(content)
    return Entry("tool", title, tuple(_cut(text, full=full)))


def _response(parts: Sequence[Mapping[str, Any]], *, full: bool) -> Entry:
    lines: list[str] = []
    for part in parts:
        kind = part.get("part_kind")
        if kind == "text":
            lines += _text(part.get("content")).splitlines()
        elif kind == "thinking":
            thought = _cut(_text(part.get("content")), full=full)
            lines += [f"(thinking) {thought[0]}", *thought[1:]] if thought else []
        elif kind == "tool-call":
            lines += _call(part, full=full)
        else:
            lines.append(f"[{kind} part]")
    return Entry("assistant", "assistant", tuple(lines))


def _call(part: Mapping[str, Any], *, full: bool) -> list[str]:
    arguments = _cut(_arguments(part.get("args")), full=full)
    head = f"-> {part.get('tool_name')} ({part.get('tool_call_id')})"
    if not arguments:
        return [head]
    return [f"{head} {arguments[0]}", *(f"   {line}" for line in arguments[1:])]


def _arguments(args: object) -> str:
    """Arguments as compact JSON; the model may send them as an object or as JSON text."""
    value = args
    if isinstance(args, str):
        try:
            value = json.loads(args)
        except json.JSONDecodeError:
            return args
    if value is None or value == {}:
        return "{}"
    return json.dumps(value, ensure_ascii=False)


def _user_content(content: object) -> Iterator[str]:
    items = content if isinstance(content, list) else [content]
    for item in items:
        if isinstance(item, dict):
            # Media and files: say what it is rather than dump its bytes.
            where = item.get("url") or item.get("media_type") or ""
            yield f"[{item.get('kind', 'content')}{': ' + str(where) if where else ''}]"
        else:
            yield from _text(item).splitlines()


def _retry_text(content: object) -> str:
    """A retry's content: its text, or one line per validation error."""
    if isinstance(content, list) and all(isinstance(e, dict) for e in content):
        return "\n".join(
            f"{'.'.join(map(str, e.get('loc') or ())) or '(input)'}: {e.get('msg')}"
            for e in content
        )
    return _value(content)


def _value(content: object) -> str:
    """A tool's return value: text as it is, anything else as JSON."""
    if isinstance(content, str):
        return content
    compact = json.dumps(content, ensure_ascii=False, default=str)
    if len(compact) <= 100:
        return compact
    return json.dumps(content, ensure_ascii=False, default=str, indent=2)


def _text(content: object) -> str:
    return content if isinstance(content, str) else _value(content)


def _cut(text: str, *, full: bool) -> list[str]:
    """`text` as lines, cut to MAX_LINES lines and MAX_CHARS characters unless `full`.

    A cut ends with a line saying how much is left out (characters not counting line
    breaks), so a reader never mistakes a cut result for the whole of it.
    """
    lines = text.splitlines()
    if full or (len(text) <= MAX_CHARS and len(lines) <= MAX_LINES):
        return lines
    kept: list[str] = []
    budget = MAX_CHARS
    for line in lines[:MAX_LINES]:
        if budget <= 0:
            break
        kept.append(line[:budget])
        budget -= len(line)
    more_chars = sum(map(len, lines)) - sum(map(len, kept))
    more_lines = len(lines) - len(kept)
    more = f"{more_chars} more characters" + (f", {more_lines} more lines" if more_lines else "")
    return [*kept, f"[cut: {more}; --full shows all]"]
