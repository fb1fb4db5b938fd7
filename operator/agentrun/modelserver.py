"""A scripted OpenAI-compatible model server: the one part faked in tests and demos.

The end-to-end tests, the local demo and users testing their AgentRuns offline point a
run's `provider.baseURL` at it, so that the real openai client path runs against answers
written in advance. Nothing in the product imports this module.

Scripts are keyed by the request's `model` field (a run with `model: openai:<key>` reads
the script `<key>`), so several runs share one server. A script is a list of turns, and
turn *i* answers a request whose `messages` hold *i* assistant messages. The turn is
chosen by the history, not by counting requests: a runner that resumes after a crash and
re-sends the same history gets the same answer. A request past the last turn gets a 400
saying the script is exhausted.

A script file (`--script FILE`, YAML, or JSON when it ends in `.json`) maps keys to
turns::

    weather:
      - tool_calls:                   # finish_reason tool_calls
          - name: fetch_url           # id defaults to call_<turn>_<n>; "" or a repeat is kept
            arguments: {url: "https://example.com/weather"}  # an object, or JSON text as is
        text: Let me look.            # optional text beside the calls
        errors: [429, 500]            # the first two requests at this turn get these errors
      - text: It is sunny.            # finish_reason stop
        usage: {prompt_tokens: 120, completion_tokens: 5}
        delay_seconds: 0.5            # wait before every response at this turn
    broken:
      - error_forever: 503            # every request at this turn gets a 503

Usage defaults to a deterministic guess: prompt_tokens is the characters of the request's
message contents // 4 + 1, completion_tokens the characters of the answer // 4 + 1.

Endpoints:

- `POST /v1/chat/completions`: answers from the script. `stream: true` is answered with
  server-sent events in OpenAI's chunk format (with a usage chunk when
  `stream_options.include_usage` is set); errors are always plain JSON.
- `GET /v1/models`: the script keys.
- `PUT /_scripts/<key>` with a JSON list of turns, `DELETE /_scripts/<key>`: replace or
  drop one script at runtime. Replacing a script resets its error counters.
- `GET /_requests[?model=<key>]`, `DELETE /_requests`: every request received (its JSON
  body, key, turn, status, time, and whether an API key was sent), oldest first.

The Authorization header is never recorded nor logged, only whether one was present.
Scripted errors use OpenAI's error body; a 429 carries `retry-after: 0`, which the openai
SDK reads as "no advice" and so falls back to its own short backoff.

`agentrun-model-server --host 127.0.0.1 --port 0 [--script FILE] [--port-file PATH]` runs
it; `ScriptedModelServer` runs it in a background thread for Python tests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "Outcome",
    "ScriptBook",
    "ScriptError",
    "ScriptedModelServer",
    "ToolCall",
    "Turn",
    "create_app",
    "load_scripts",
    "main",
    "parse_script",
]

logger = logging.getLogger(__name__)

_TURN_KEYS = frozenset({"text", "tool_calls", "usage", "errors", "error_forever", "delay_seconds"})
_TOOL_CALL_KEYS = frozenset({"id", "name", "arguments"})
# OpenAI's error `type` and `code` for the statuses that have their own; 5xx are server_error.
_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


class ScriptError(ValueError):
    """A script that cannot be served; the message names the key, the turn and the fault."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    """As scripted, even empty or repeated, so that tests can feed a runner bad ids."""
    name: str
    arguments: str
    """JSON text; scripted text is kept as is, so it may be deliberately malformed."""


@dataclass(frozen=True)
class Turn:
    text: str | None = None
    """The assistant's text: the final answer, or a remark beside tool calls."""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: tuple[int, int] | None = None
    """(prompt_tokens, completion_tokens); None for the deterministic default."""
    errors: tuple[int, ...] = ()
    """HTTP statuses for the first requests at this turn, in order, before the answer."""
    error_forever: int | None = None
    """An HTTP status for every request at this turn: the turn never answers."""
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """What one request gets: an answer (status 200) or an error."""

    status: int
    turn: Turn | None = None
    message: str = ""
    """For an error: what went wrong, for the client's exception message."""


def parse_script(raw: object, *, key: str) -> list[Turn]:
    """Turns from their JSON or YAML form; raises `ScriptError` on the first fault."""
    if not isinstance(raw, list):
        raise ScriptError(f"The script for {key!r} must be a list of turns, not {raw!r}.")
    return [_parse_turn(item, key=key, index=index) for index, item in enumerate(raw)]


def _parse_turn(raw: object, *, key: str, index: int) -> Turn:
    where = f"{key!r} turn {index}"
    if not isinstance(raw, dict):
        raise ScriptError(f"Script {where} must be a mapping, not {raw!r}.")
    # Refuse typos: a misspelt `error` would otherwise silently turn into an answer.
    unknown = sorted(set(raw) - _TURN_KEYS)
    if unknown:
        raise ScriptError(
            f"Script {where} has unknown keys {unknown}; known: {sorted(_TURN_KEYS)}."
        )
    if not {"text", "tool_calls", "error_forever"} & set(raw):
        raise ScriptError(f"Script {where} needs `text`, `tool_calls` or `error_forever`.")

    text = raw.get("text")
    if text is not None and not isinstance(text, str):
        raise ScriptError(f"Script {where}: `text` must be a string, not {text!r}.")
    calls = raw.get("tool_calls", [])
    if not isinstance(calls, list):
        raise ScriptError(f"Script {where}: `tool_calls` must be a list, not {calls!r}.")
    tool_calls = tuple(
        _parse_tool_call(call, default_id=f"call_{index}_{n}", where=f"{where} call {n}")
        for n, call in enumerate(calls)
    )

    errors = raw.get("errors", [])
    if not isinstance(errors, list):
        raise ScriptError(f"Script {where}: `errors` must be a list of statuses, not {errors!r}.")
    error_forever = raw.get("error_forever")
    for status in [*errors, *([error_forever] if error_forever is not None else [])]:
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ScriptError(f"Script {where}: {status!r} is not an HTTP error status.")
    delay = raw.get("delay_seconds", 0.0)
    if not isinstance(delay, int | float) or delay < 0:
        raise ScriptError(f"Script {where}: `delay_seconds` must be >= 0, not {delay!r}.")

    return Turn(
        text=text,
        tool_calls=tool_calls,
        usage=_parse_usage(raw.get("usage"), where=where),
        errors=tuple(errors),
        error_forever=error_forever,
        delay_seconds=float(delay),
    )


def _parse_tool_call(raw: object, *, default_id: str, where: str) -> ToolCall:
    if not isinstance(raw, dict) or set(raw) - _TOOL_CALL_KEYS or "name" not in raw:
        raise ScriptError(f"Script {where} must be a mapping of `name`, `arguments`, `id`.")
    call_id = raw.get("id", default_id)
    arguments = raw.get("arguments", {})
    if not isinstance(call_id, str) or not isinstance(raw["name"], str):
        raise ScriptError(f"Script {where}: `id` and `name` must be strings.")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return ToolCall(id=call_id, name=raw["name"], arguments=arguments)


def _parse_usage(raw: object, *, where: str) -> tuple[int, int] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, dict)
        or set(raw) != {"prompt_tokens", "completion_tokens"}
        or not all(isinstance(value, int) for value in raw.values())
    ):
        raise ScriptError(f"Script {where}: `usage` needs integer prompt/completion_tokens.")
    return raw["prompt_tokens"], raw["completion_tokens"]


def load_scripts(path: Path) -> dict[str, list[Turn]]:
    """All scripts of a file: a mapping of key to turns, in YAML or (`.json`) JSON."""
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ScriptError(f"{path} must map model keys to lists of turns.")
    return {str(key): parse_script(turns, key=str(key)) for key, turns in raw.items()}


class ScriptBook:
    """The scripts, the per-turn error counters and the record of requests.

    Shared by the request handlers (on the server's event loop) and `ScriptedModelServer`'s
    callers (on other threads), hence one lock; it is never held across an await.
    """

    def __init__(self, scripts: Mapping[str, list[Turn]] | None = None) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Turn]] = dict(scripts or {})
        self._arrivals: collections.Counter[tuple[str, int]] = collections.Counter()
        self._records: list[dict[str, Any]] = []

    def script_keys(self) -> list[str]:
        with self._lock:
            return sorted(self._scripts)

    def set_script(self, key: str, turns: list[Turn]) -> None:
        with self._lock:
            self._scripts[key] = turns
            self._reset_arrivals(key)

    def delete_script(self, key: str) -> None:
        with self._lock:
            self._scripts.pop(key, None)
            self._reset_arrivals(key)

    def _reset_arrivals(self, key: str) -> None:
        for slot in [slot for slot in self._arrivals if slot[0] == key]:
            del self._arrivals[slot]

    def decide(self, key: str, turn_index: int) -> Outcome:
        """What the request at `turn_index` of script `key` gets, counting its arrival."""
        with self._lock:
            script = self._scripts.get(key)
            if script is None:
                message = f"No script for model {key!r}: PUT one at /_scripts/{key}."
                return Outcome(404, message=message)
            if turn_index >= len(script):
                message = (
                    f"The script for model {key!r} is exhausted: the history asks for turn"
                    f" {turn_index} (one per assistant message) and the script has"
                    f" {len(script)}."
                )
                return Outcome(400, message=message)
            turn = script[turn_index]
            arrival = self._arrivals[key, turn_index]
            self._arrivals[key, turn_index] += 1

        if turn.error_forever is not None:
            status = turn.error_forever
        elif arrival < len(turn.errors):
            status = turn.errors[arrival]
        else:
            return Outcome(200, turn=turn)
        message = f"Scripted {status} error for model {key!r} at turn {turn_index}."
        return Outcome(status, turn=turn, message=message)

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(entry)

    def requests(self, key: str | None = None) -> list[dict[str, Any]]:
        """Copies of the recorded requests, oldest first; only those for `key` if given."""
        with self._lock:
            chosen = [entry for entry in self._records if key is None or entry["model"] == key]
            return copy.deepcopy(chosen)

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()


def create_app(book: ScriptBook) -> Starlette:
    """The ASGI app serving `book`; uvicorn runs it, tests may mount it directly."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
            Route("/v1/models", _models, methods=["GET"]),
            Route("/_scripts/{key:path}", _put_script, methods=["PUT"]),
            Route("/_scripts/{key:path}", _delete_script, methods=["DELETE"]),
            Route("/_requests", _get_requests, methods=["GET"]),
            Route("/_requests", _delete_requests, methods=["DELETE"]),
        ]
    )
    app.state.book = book
    return app


def _book(request: Request) -> ScriptBook:
    book: ScriptBook = request.app.state.book
    return book


async def _chat_completions(request: Request) -> Response:
    book = _book(request)
    body = await _json_body(request)
    key = body.get("model") if isinstance(body, dict) else None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(key, str) or not isinstance(messages, list):
        message = "Expected a JSON object with a string `model` and a list of `messages`."
        _record(
            request, body=body, key=None, turn_index=None, outcome=Outcome(400, message=message)
        )
        return _error(400, message)

    # Chosen by the history, not by counting requests: a re-sent history gets the same turn.
    turn_index = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    outcome = book.decide(key, turn_index)
    # Recorded before any delay, so that a client that times out still leaves a trace.
    _record(request, body=body, key=key, turn_index=turn_index, outcome=outcome)
    if outcome.turn is not None and outcome.turn.delay_seconds:
        await asyncio.sleep(outcome.turn.delay_seconds)

    if outcome.turn is None or outcome.status != 200:
        return _error(outcome.status, outcome.message)
    completion = _completion(outcome.turn, model=key, turn_index=turn_index, body=body)
    if not body.get("stream"):
        return JSONResponse(completion)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    events = _stream_events(completion, include_usage=include_usage)
    return StreamingResponse(events, media_type="text/event-stream")


def _record(
    request: Request, *, body: Any, key: str | None, turn_index: int | None, outcome: Outcome
) -> None:
    """Record the request and log its line. Of the Authorization header, only its presence
    and a digest of the key are kept: tests compare keys without the record holding one."""
    authorization = request.headers.get("authorization", "")
    entry = {
        "time": datetime.now(UTC).isoformat(),
        "model": key,
        "turn": turn_index,
        "status": outcome.status,
        "api_key_sent": bool(authorization),
        "api_key_sha256": hashlib.sha256(authorization.removeprefix("Bearer ").encode()).hexdigest()
        if authorization
        else None,
        "body": body,
    }
    _book(request).record(entry)
    if outcome.status == 200 or outcome.turn is not None:
        logger.info("Answered %d to model %r at turn %s.", outcome.status, key, turn_index)
    else:
        # Not scripted: a mistake in the test or the script, worth its reason in the log.
        logger.warning(
            "Answered %d to model %r at turn %s: %s",
            outcome.status,
            key,
            turn_index,
            outcome.message,
        )


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


def _completion(turn: Turn, *, model: str, turn_index: int, body: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text}
    if turn.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in turn.tool_calls
        ]
    return {
        "id": f"chatcmpl-{model}-{turn_index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if turn.tool_calls else "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(turn, body),
    }


def _usage(turn: Turn, body: dict[str, Any]) -> dict[str, int]:
    if turn.usage is not None:
        prompt, completion = turn.usage
    else:
        asked = sum(
            _content_chars(m.get("content")) for m in body["messages"] if isinstance(m, dict)
        )
        answered = len(turn.text or "") + sum(len(c.name + c.arguments) for c in turn.tool_calls)
        prompt, completion = asked // 4 + 1, answered // 4 + 1
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _content_chars(content: object) -> int:
    """Characters of a message's content: a string, or a list of parts with `text`."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return 0


def _stream_events(completion: dict[str, Any], *, include_usage: bool) -> Iterator[str]:
    """The completion as OpenAI's chunks: the whole delta, then the finish, then usage."""
    choice = completion["choices"][0]
    delta = dict(choice["message"])
    if "tool_calls" in delta:
        # Streamed tool calls carry their position: clients merge fragments by index.
        delta["tool_calls"] = [{"index": n, **call} for n, call in enumerate(delta["tool_calls"])]
    head = {key: completion[key] for key in ("id", "created", "model")}
    head["object"] = "chat.completion.chunk"

    yield _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    finish = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
    yield _event({**head, "choices": [finish]})
    if include_usage:
        yield _event({**head, "choices": [], "usage": completion["usage"]})
    yield "data: [DONE]\n\n"


def _event(data: object) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _error(status: int, message: str) -> JSONResponse:
    error_type, code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "api_error", None)
    )
    # "Retry now": the openai SDK reads 0 as no advice and falls back to its short backoff.
    headers = {"retry-after": "0"} if status == 429 else None
    body = {"error": {"message": message, "type": error_type, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _models(request: Request) -> Response:
    models = [
        {"id": key, "object": "model", "created": 0, "owned_by": "agentrun-model-server"}
        for key in _book(request).script_keys()
    ]
    return JSONResponse({"object": "list", "data": models})


async def _put_script(request: Request) -> Response:
    key = request.path_params["key"]
    try:
        turns = parse_script(await _json_body(request), key=key)
    except ScriptError as exc:
        return _error(400, str(exc))
    _book(request).set_script(key, turns)
    return JSONResponse({"model": key, "turns": len(turns)})


async def _delete_script(request: Request) -> Response:
    _book(request).delete_script(request.path_params["key"])
    return Response(status_code=204)


async def _get_requests(request: Request) -> Response:
    return JSONResponse(_book(request).requests(request.query_params.get("model")))


async def _delete_requests(request: Request) -> Response:
    _book(request).clear_requests()
    return Response(status_code=204)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before uvicorn starts so that port 0's pick is known.

    Connections made before the server loop runs wait in the backlog, so the port can be
    announced at once.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _base_url(sock: socket.socket, public_host: str | None = None) -> str:
    host, port = sock.getsockname()[:2]
    host = public_host or host
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


def _uvicorn_server(book: ScriptBook) -> uvicorn.Server:
    # Our own line per request replaces uvicorn's access log, and log_config=None leaves
    # logging to the caller's configuration.
    config = uvicorn.Config(create_app(book), log_config=None, access_log=False, lifespan="off")
    return uvicorn.Server(config)


class ScriptedModelServer:
    """The server on a free loopback port, in a background thread, for Python tests.

    with ScriptedModelServer() as server:
        server.set_script("demo", [{"text": "Hello."}])
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        ...
        assert server.requests("demo")[0]["status"] == 200
    """

    def __init__(
        self,
        scripts: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        *,
        host: str = "127.0.0.1",
        public_host: str | None = None,
    ) -> None:
        """Listen on `host`; base_url names `public_host` instead where clients reach the
        server by another address, as pods of a kind cluster do when host is 0.0.0.0."""
        self.book = ScriptBook()
        for key, turns in (scripts or {}).items():
            self.set_script(key, turns)
        self._host = host
        self._public_host = public_host
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ending in /v1; known once the server is started."""
        if self._socket is None:
            raise RuntimeError("The model server is not started: use it in a `with` block.")
        return _base_url(self._socket, self._public_host)

    def set_script(self, key: str, turns: Sequence[Mapping[str, Any]]) -> None:
        """Replace the script `key` (turns in their YAML/JSON form), resetting its errors."""
        self.book.set_script(key, parse_script([dict(turn) for turn in turns], key=key))

    def requests(self, key: str | None = None) -> list[dict[str, Any]]:
        return self.book.requests(key)

    def start(self, *, timeout: float = 10.0) -> None:
        self._socket = _listen(self._host, 0)
        self._server = _uvicorn_server(self.book)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="agentrun-model-server",
            daemon=True,
        )
        self._thread.start()

        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("The model server did not start; see the log above.")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> ScriptedModelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _write_atomically(path: Path, text: str) -> None:
    """Write by rename, so that a reader polling for the file never sees it half written."""
    fd, temporary = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> None:
    """`agentrun-model-server`: serve scripts until interrupted."""
    description = "A scripted OpenAI-compatible model server, for tests and offline runs."
    parser = argparse.ArgumentParser(prog="agentrun-model-server", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--script", type=Path, help="YAML or .json file: key -> list of turns")
    parser.add_argument("--port-file", type=Path, help="write the chosen port here")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    try:
        book = ScriptBook(load_scripts(args.script) if args.script else None)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"agentrun-model-server: cannot load {args.script}: {exc}\n")
    sock = _listen(args.host, args.port)
    base_url = _base_url(sock)

    # One line on stdout, and the port file, are how tests and the Makefile find the port.
    print(f"agentrun-model-server listening on {base_url}", flush=True)
    if args.port_file:
        _write_atomically(args.port_file, f"{sock.getsockname()[1]}\n")
    _uvicorn_server(book).run(sockets=[sock])


if __name__ == "__main__":
    main()
