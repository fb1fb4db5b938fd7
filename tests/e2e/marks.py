"""Marks that a tool's side effect leaves where the test can count them, wherever pods run.

A shell command in a run's pod cannot write a file the test reads when the pod is a
container in kind, so the commands these tests approve or deny call home instead: each
GET /<name> counts one mark of that name.
"""

from __future__ import annotations

import collections
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from tests.cluster_fixtures import TARGET


class MarkServer:
    """An HTTP server that counts the requests for each path."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        counts, lock = self._counts, self._lock

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    counts[self.path.lstrip("/")] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the counts are the record."""

        self._server = ThreadingHTTPServer((TARGET.bind, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def command(self, name: str) -> str:
        """A shell command that leaves one mark `name`."""
        url = f"http://{TARGET.host}:{self._server.server_address[1]}/{name}"
        script = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=30)"
        return f"python3 -c {shlex.quote(script)}"

    def count(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def __enter__(self) -> MarkServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
