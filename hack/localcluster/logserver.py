"""The kubelet's HTTPS endpoint for container logs, behind `kubectl logs`.

Started by kubelet.py on a free loopback port, which the Node advertises as its kubelet
endpoint. The apiserver calls
GET /containerLogs/<namespace>/<pod>/<container>?follow=&tailLines=&limitBytes=&previous=
with its kubelet client certificate; only certificates signed by the cluster CA get in,
and the apiserver checks ours against the same CA (--kubelet-certificate-authority).

Limitation: timestamps=true is accepted but lines carry no timestamps, because processes
write straight into their log file; sinceSeconds and sinceTime are ignored likewise.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Locate", "serve"]

log = logging.getLogger("localcluster.kubelet")

Locate = Callable[[str, str, str, bool], tuple[Path, Callable[[], bool]] | None]
"""(namespace, pod, container, previous) -> (log file, whether it still grows), or None."""

_FOLLOW_POLL_SECONDS = 0.2


def serve(*, locate: Locate, cert: Path, key: Path, client_ca: Path) -> int:
    """Serve logs from a daemon thread; the port it listens on."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = _Server(("127.0.0.1", 0), _Handler)
    server.locate = locate
    # The handshake happens in each request's thread, so one slow client cannot hold up
    # the accepting thread.
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    threading.Thread(target=server.serve_forever, name="log server", daemon=True).start()
    return int(server.server_address[1])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    locate: Locate

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client without a certificate of the cluster CA ends here, among others.
        error = sys.exc_info()[1]
        log.warning("The log server dropped a connection from %s: %s", client_address, error)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            return self._reply(200, b"ok")
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self._reply(404, b"the process-kubelet serves /containerLogs and /healthz only")
        _, namespace, pod, container = parts
        query = {name: values[-1] for name, values in parse_qs(url.query).items()}
        previous = query.get("previous") == "true"
        found = self.server.locate(namespace, pod, container, previous)
        if found is None or not found[0].exists():
            message = f"no logs of container {container!r} of pod {namespace}/{pod} on this node"
            return self._reply(404, message.encode())
        path, growing = found
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        # kubectl may go away before the end (Ctrl-C on logs -f).
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            self._send_log(path, growing, query)

    def _send_log(self, path: Path, growing: Callable[[], bool], query: dict[str, str]) -> None:
        with path.open("rb") as source:
            data = source.read()
            if "tailLines" in query:
                data = _last_lines(data, int(query["tailLines"]))
            budget = int(query["limitBytes"]) if "limitBytes" in query else None
            budget = self._write(data, budget)
            # Follow until the container's process ends, then drain what it wrote last.
            while query.get("follow") == "true" and budget != 0:
                still_growing = growing()
                chunk = source.read()
                budget = self._write(chunk, budget)
                if not still_growing and not chunk:
                    break
                if not chunk:
                    time.sleep(_FOLLOW_POLL_SECONDS)

    def _write(self, data: bytes, budget: int | None) -> int | None:
        if budget is not None:
            data = data[:budget]
            budget -= len(data)
        if data:
            self.wfile.write(data)
            self.wfile.flush()
        return budget

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("Log server: " + format, *args)


def _last_lines(data: bytes, count: int) -> bytes:
    return b"".join(data.splitlines(keepends=True)[-count:]) if count > 0 else b""
