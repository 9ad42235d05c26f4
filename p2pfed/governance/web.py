"""A small read-only HTTP server for the metrics endpoint and the dashboard.

Theory of operation: ``ReadOnlyServer`` serves a fixed table of routes (path → a function
returning the content type and body) from a background thread. ``check_request`` decides
every request before any route runs: only GET and HEAD (anything else: 405), and, when a
token is configured, the token as ``Authorization: Bearer <token>`` or ``?token=<token>``
(for a browser), compared with ``hmac.compare_digest`` so the time taken does not reveal
how much of a guess was right (otherwise: 401, one sentence, nothing else). Whether a
token is required at all is ``MetricsConfig``'s decision: off loopback it always is.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from p2pfed.errors import ConfigError, LocalError

Route = Callable[[], tuple[str, bytes]]
"""A page: returns (content type, body)."""

MIN_TOKEN_CHARS = 16
READ_METHODS = ("GET", "HEAD")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (only this machine can connect)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def read_token(path: Path) -> str:
    """The dashboard token from its file (first line), or one sentence why it is unusable."""
    try:
        lines = path.read_text().strip().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard token file {path}: {exc.strerror}") from None
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise ConfigError(
            f"the dashboard token in {path} must be one line of at least {MIN_TOKEN_CHARS} "
            "printable characters without spaces"
        )
    return token


def check_request(environ: Mapping[str, Any], token: str | None) -> tuple[str, str] | None:
    """None when the request may be served, else (HTTP status, one sentence)."""
    if environ.get("REQUEST_METHOD") not in READ_METHODS:
        return "405 Method Not Allowed", "This server is read-only: only GET and HEAD."
    if token is None:
        return None
    given = ""
    auth = str(environ.get("HTTP_AUTHORIZATION", ""))
    if auth.startswith("Bearer "):
        given = auth[len("Bearer ") :].strip()
    else:
        given = parse_qs(str(environ.get("QUERY_STRING", ""))).get("token", [""])[0]
    if not hmac.compare_digest(given.encode(), token.encode()):
        return "401 Unauthorized", "A valid dashboard token is required (Authorization: Bearer)."
    return None


def make_app(routes: Mapping[str, Route], token: str | None) -> Callable[..., Iterable[bytes]]:
    """The WSGI application: ``check_request``, then the route, else 404."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        refused = check_request(environ, token)
        route = routes.get(str(environ.get("PATH_INFO", "")))
        if refused is None and route is None:
            refused = "404 Not Found", "No such page: try / or /metrics."
        if refused is not None:
            status, sentence = refused
            body, ctype = (sentence + "\n").encode(), "text/plain; charset=utf-8"
            headers = [("Allow", ", ".join(READ_METHODS))] if status.startswith("405") else []
            if status.startswith("401"):
                headers.append(("WWW-Authenticate", 'Bearer realm="p2pfed"'))
        else:
            assert route is not None
            (ctype, body), status, headers = route(), "200 OK", []
        headers += [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
        ]
        start_response(status, headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged to stderr (the daemon's log is for the daemon)."""


class ReadOnlyServer:
    """Serves ``routes`` on (host, port) from a background thread; see the module docs."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Mapping[str, Route],
        token: str | None,
        label: str = "the dashboard",
    ) -> None:
        self._host, self._port, self._label = host, port, label
        self._app = make_app(routes, token)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Listen and serve; returns the bound (host, port)."""
        if self._server is not None:
            raise LocalError("the server is already running")
        cls = _ThreadingServer6 if ":" in self._host else _ThreadingServer
        try:
            server = make_server(
                self._host, self._port, self._app, server_class=cls, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve {self._label} on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from None
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) being served."""
        if self._server is None:
            raise LocalError("the server is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving and release the socket and thread (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
