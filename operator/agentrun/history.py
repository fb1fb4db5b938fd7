"""Messages to the history's bytes and back: pydantic-ai's JSON, one message a line.

The runner calls `encode` on the messages each step adds and `decode` on the stream a
checkpoint holds. `checkpoint` stores the bytes without looking inside them.

Lone surrogates. Python strings can hold them (a model's JSON may escape one, a file may
be decoded with `surrogateescape`), but pydantic cannot write them as UTF-8 and its JSON
parser refuses their escapes. Such a message is written with the lone surrogates escaped
(`\\ud800`, valid JSON) and read back through Python's own parser, so the string comes back
as it was. One limit: a high surrogate followed by a low one is a pair in JSON, so two
such lone characters side by side come back as the one character they pair into.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pydantic
import pydantic_core
from pydantic_ai import ModelMessage, ModelMessagesTypeAdapter

__all__ = ["HistoryInvalid", "decode", "encode", "encode_message"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# An escaped surrogate in JSON text: `\uD800`..`\uDFFF` after an even run of backslashes.
_ESCAPED_SURROGATE = re.compile(rb"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class HistoryInvalid(Exception):
    """A stored message no longer validates (corrupt, or from an incompatible library)."""

    def __init__(self, message: str, *, line: int, offset: int) -> None:
        super().__init__(message)
        self.line = line
        """Index of the message in the history."""
        self.offset = offset
        """Where its line starts in the stream."""


def encode(messages: Sequence[ModelMessage]) -> bytes:
    """The stream bytes of `messages`: each one's JSON and a newline."""
    return b"".join(encode_message(message) + b"\n" for message in messages)


def encode_message(message: ModelMessage) -> bytes:
    """One message as compact JSON (never holds a raw newline: JSON escapes them)."""
    try:
        return ModelMessagesTypeAdapter.dump_json([message])[1:-1]
    except pydantic_core.PydanticSerializationError:
        if not _holds_lone_surrogate(message):
            raise
    # Through Python's JSON encoder, which leaves the lone surrogates in the text; each is
    # then replaced by its escape, which JSON allows anywhere in a string.
    plain = ModelMessagesTypeAdapter.dump_python([message], mode="json")[0]
    text = json.dumps(plain, ensure_ascii=False, separators=(",", ":"))
    text = _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    return text.encode("utf-8")


def _holds_lone_surrogate(message: ModelMessage) -> bool:
    return any(_LONE_SURROGATE.search(text) for text in _strings(message))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _strings(getattr(value, field.name))


def decode(data: bytes) -> list[ModelMessage]:
    """The messages of a stream; raises HistoryInvalid naming the first bad line."""
    lines = data.split(b"\n")
    if lines[-1:] == [b""]:
        lines.pop()
    try:
        return ModelMessagesTypeAdapter.validate_json(b"[" + b",".join(lines) + b"]")
    except pydantic.ValidationError:
        pass

    # Something in there needs a closer look: one line at a time, to say which.
    messages: list[ModelMessage] = []
    offset = 0
    for number, line in enumerate(lines):
        try:
            messages.append(_decode_line(line))
        except (pydantic.ValidationError, ValueError) as error:
            raise HistoryInvalid(
                f"message {number} does not validate: {error}", line=number, offset=offset
            ) from error
        offset += len(line) + 1
    return messages


def _decode_line(line: bytes) -> ModelMessage:
    if not _ESCAPED_SURROGATE.search(line):
        return ModelMessagesTypeAdapter.validate_json(b"[" + line + b"]")[0]

    # pydantic's parser refuses escaped lone surrogates: Python's takes them. Each lone
    # surrogate stands in as a marker no string in the line contains while pydantic
    # validates the message, and is put back in the validated message's strings.
    marker = f"\ue000{uuid.uuid4().hex}:"
    plain = json.loads(line)
    stand_in = _map_json_strings(
        plain, lambda text: _LONE_SURROGATE.sub(lambda m: f"{marker}{ord(m.group()):04x};", text)
    )
    message = ModelMessagesTypeAdapter.validate_json(
        json.dumps([stand_in], ensure_ascii=False).encode("utf-8")
    )[0]
    restore = re.compile(re.escape(marker) + "([0-9a-f]{4});")
    _map_strings(message, lambda text: restore.sub(lambda m: chr(int(m.group(1), 16)), text))
    return message


def _map_json_strings(value: Any, change: Any) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [_map_json_strings(item, change) for item in value]
    if isinstance(value, dict):
        return {change(key): _map_json_strings(item, change) for key, item in value.items()}
    return value


def _map_strings(value: Any, change: Any) -> Any:
    """Apply `change` to every string inside a message, in place where it can."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        value[:] = [_map_strings(item, change) for item in value]
        return value
    if isinstance(value, tuple):
        return tuple(_map_strings(item, change) for item in value)
    if isinstance(value, dict):
        items = [
            (_map_strings(key, change), _map_strings(item, change)) for key, item in value.items()
        ]
        value.clear()
        value.update(items)
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            current = getattr(value, field.name)
            changed = _map_strings(current, change)
            if changed is not current:
                object.__setattr__(value, field.name, changed)
        return value
    return value
