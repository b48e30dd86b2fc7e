"""The HTTP plumbing of `flowctl ui`: the standard library's ThreadingHTTPServer, GET only.

Why the standard library: the dashboard serves a few small JSON views and seven static
files to one person's browser on loopback. http.server does that in one thread per request
with nothing to install, and nothing to keep up to date; an ASGI stack (uvicorn,
starlette) would add two dependencies for features not used here (websockets, middleware).

Safety: read-only (GET and HEAD; other methods 405); static files come from a fixed
in-memory table, so no URL reaches the file system except through study.ui.resolve; on a
loopback address, requests whose Host header names another host are refused (a web page
elsewhere cannot read the runs through DNS rebinding); every page carries a
Content-Security-Policy that allows nothing outside this server.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, unquote, urlsplit

from study.ui.api import DashboardApi, Reply, json_safe, not_found
from study.ui.resolve import plain_name

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def load_static() -> dict[str, tuple[bytes, str]]:
    """{file name: (bytes, content type)} of study/ui/static/, read once at start-up."""
    files = {}
    for entry in resources.files("study.ui").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (localhost, 127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class DashboardServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to (host, port), holding the API and the static files."""

    daemon_threads = True  # Ctrl-C must not wait for a browser's open connection
    # listen() backlog: socketserver's default of 5 makes the 6th of 20 simultaneous clients
    # wait for a SYN retransmit (1 s, then 3 s, ...) before its connection is even accepted.
    request_queue_size = 128

    def __init__(self, api: DashboardApi, host: str, port: int):
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        self.address_family = infos[0][0]
        self.api = api
        self.static = load_static()
        self.check_host = is_loopback(host)
        super().__init__((host, port), DashboardHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's socket.getfqdn(host): a reverse DNS lookup that can stall
        for seconds on a cluster node without a resolver."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    @property
    def port(self) -> int:
        return self.server_address[1]

    def allowed_host(self, header: str | None) -> bool:
        if not self.check_host:
            return True
        if not header:
            return False
        if header.startswith("["):  # [::1]:8765
            name = header[:header.find("]") + 1]
        else:
            name = header.rsplit(":", 1)[0]
        return is_loopback(name)


class DashboardHandler(BaseHTTPRequestHandler):
    """Routes GET requests to the static table or to DashboardApi; never writes to disk."""

    server: DashboardServer
    server_version = "flowctl-ui"
    protocol_version = "HTTP/1.1"  # keep-alive: a polling page reuses one connection
    # Headers and body go out as two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK, 40 ms per answer on a kept-alive connection.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.answer(self.route(), with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self.answer(self.route(), with_body=False)

    def refuse_method(self) -> None:
        self.answer(Reply(405, {"error": "flowctl ui is read-only: GET only"}), with_body=True,
                    extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = refuse_method  # noqa: N815

    def route(self) -> Reply:
        if not self.server.allowed_host(self.headers.get("Host")):
            return Reply(403, {"error": "unexpected Host header; open the URL flowctl ui printed"})
        url = urlsplit(self.path)
        parts = [unquote(part) for part in url.path.split("/")[1:]]
        if parts and parts[-1] == "" and len(parts) > 1:
            parts.pop()  # a trailing slash
        query = parse_qs(url.query)
        try:
            return self.dispatch(parts, query)
        except Exception as err:  # a bug, not a bad run: one line in the log, 500 to the page
            self.log_error("error answering %s: %r", self.path, err)
            return Reply(500, {"error": f"{type(err).__name__}: {err}"})

    def dispatch(self, parts: list[str], query: dict[str, list[str]]) -> Reply:
        api = self.server.api
        if parts in ([""], ["index.html"]) or (len(parts) == 2 and parts[0] == "runs"):
            if len(parts) == 2 and not plain_name(parts[1]):
                return not_found(f"no run named {parts[1]!r}")
            return self.static_file("index.html")
        if len(parts) == 2 and parts[0] == "static":
            return self.static_file(parts[1])
        if parts[:2] != ["api", "runs"]:
            return not_found(f"no page {self.path}")
        rest = parts[2:]
        if not rest:
            return api.runs(query)
        if len(rest) == 1:
            return api.run(rest[0], query)
        if len(rest) == 2 and rest[1] == "status":
            return api.status(rest[0])
        if len(rest) == 2 and rest[1] == "metrics":
            return api.metrics(rest[0], query)
        if len(rest) == 3 and rest[1] == "files":
            return api.picture(rest[0], rest[2])
        return not_found(f"no API endpoint {self.path}")

    def static_file(self, name: str) -> Reply:
        found = self.server.static.get(name)
        if found is None:
            return not_found(f"no static file {name!r}")
        return Reply(200, found[0], found[1])

    def answer(self, reply: Reply, *, with_body: bool, extra: dict[str, str] | None = None) -> None:
        body = reply.body
        if not isinstance(body, bytes):
            try:
                body = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
            except ValueError:  # a NaN somewhere in a run's files
                body = json.dumps(json_safe(body), separators=(",", ":")).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in {**SECURITY_HEADERS, **(extra or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-answer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        """Quiet: a polling page makes a request every second. Errors still go to stderr."""

    def log_error(self, format: str, *args) -> None:  # noqa: A002
        print(f"flowctl ui: {format % args}", file=sys.stderr)
