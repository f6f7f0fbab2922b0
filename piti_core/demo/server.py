"""The demo's HTTP side: a stdlib ``ThreadingHTTPServer`` serving one static page and a small JSON API.

Routes::

    GET  /                          the page (piti_core/demo/static/index.html, with this process's token)
    GET  /api/info                  the run: task, input widget (kind) and file suffixes, palette and class names,
                                    default settings
    POST /api/generate?k=v...       body = the condition file, suffix=.ext its suffix (one the task reads; without
                                    it, the type is read from the first bytes); -> {"job", "position"}
    GET  /api/jobs/<id>             state (queued/running/done/error), queue position, progress, error, settings
    GET  /api/jobs/<id>/<name>.png  input | condition | base | image (the final, upsampled one)

Every request must name this server in ``Host`` (and in ``Origin`` when sent); every POST must carry
the page's token in ``X-Piti-Token`` (piti_core/demo/guard.py). Errors are JSON ``{"error": "<one
line>"}``. Each connection times out after ``timeout`` seconds without data, and at most
``max_connections`` are served at once. User files live only in a temporary folder that is removed
when the app closes; nothing here installs signal handlers (the CLI does).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from piti_core.demo.app import DemoApp, _bad
from piti_core.demo.guard import TOKEN_HEADER, HostCheck, origin_matches, token_matches
from piti_core.demo.uploads import MAX_PIXELS, MAX_UPLOAD, BadRequest, upload_suffix
from piti_core.errors import UsageError

__all__ = ["DemoApp", "make_server", "BadRequest", "upload_suffix", "MAX_UPLOAD", "MAX_PIXELS"]

log = logging.getLogger("piti.demo")

TIMEOUT = 30.0  # seconds a connection may send nothing
MAX_CONNECTIONS = 32
UPLOAD_SECONDS = 300  # the longest one upload may take, however slowly its bytes arrive
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


def _printable(text: str, limit: int = 120) -> str:
    """``text`` for a log line: control characters escaped, at most ``limit`` characters."""
    shown = text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit] + "..."


class _ClientGone(Exception):
    """The client closed the connection before its upload ended."""


class _Handler(BaseHTTPRequestHandler):
    server_version = "piti-demo"
    app: DemoApp
    timeout = TIMEOUT

    # ------------------------------------------------------------------ logging and errors: one line each
    def log_message(self, fmt, *args):  # no access log: the CLI prints the address once
        pass

    def log_error(self, fmt, *args):
        log.info("piti demo: %s: %s", self.client_address[0], _printable(fmt % args))

    def handle(self):
        try:
            super().handle()
        except _DISCONNECTS as exc:
            log.info("piti demo: %s disconnected (%s)", self.client_address[0], _reason(exc))

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, unsupported method ...) as one-line JSON."""
        text = message or self.responses.get(code, ("error",))[0]
        self.log_error("%d %s", code, text)
        self.close_connection = True
        self._json({"error": text}, int(code))

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.request_version = "HTTP/1.0" if self.request_version == "HTTP/0.9" else self.request_version
        self.send_response(status)  # (headers even for a request line too broken to say its version)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _fail(self, exc: BadRequest) -> None:
        if exc.status == HTTPStatus.FORBIDDEN:
            log.warning("piti demo: refused %s %s from %s: %s", self.command, _printable(self.path),
                        self.client_address[0], exc)
        self._json({"error": str(exc)}, int(exc.status))

    # ------------------------------------------------------------------ who may ask
    def _guard(self, post: bool) -> None:
        """BadRequest(403) unless Host (and Origin, when sent) name this server and a POST has the token."""
        host, origin = self.headers.get("Host"), self.headers.get("Origin")
        if not self.server.host_check(host):
            raise BadRequest(HTTPStatus.FORBIDDEN, f"Host {_printable(host or '', 80)!r} is not this server: "
                                                   "open the address `piti demo` printed")
        if not origin_matches(origin, host):
            raise BadRequest(HTTPStatus.FORBIDDEN, f"Origin {_printable(origin, 80)!r} is not this server: "
                                                   "requests from other sites are refused")
        if post and not token_matches(self.headers.get(TOKEN_HEADER), self.app.token):
            raise BadRequest(HTTPStatus.FORBIDDEN, f"missing or wrong {TOKEN_HEADER} token: reload the demo page "
                                                   "(a new token is made each time the server starts)")

    # ------------------------------------------------------------------ routes
    def do_GET(self):  # noqa: N802 - http.server's naming
        try:
            self._guard(post=False)
            self._get(urlsplit(self.path).path)
        except BadRequest as exc:
            self._fail(exc)

    def _get(self, path: str) -> None:
        if path in ("/", "/index.html"):
            return self._send(200, self.app.page(), "text/html; charset=utf-8",
                              {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})
        if path == "/api/info":
            return self._json(self.app.info())
        m = re.fullmatch(r"/api/jobs/(\d{1,9})(?:/([a-z_]+\.[a-z0-9]{1,8}))?", path)
        job = self.app.queue.get(m.group(1)) if m else None
        if job is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"not found: {_printable(path, 80)}")
        if m.group(2) is None:
            return self._json(self.app.status(job))
        file = self.app.job_file(job, m.group(2))
        if file is None:
            raise BadRequest(HTTPStatus.NOT_FOUND, f"not found: {path}")
        ctype = "image/png" if file.suffix == ".png" else "application/octet-stream"
        # the condition keeps the name the shown `piti sample` command uses; results get the job's number
        name = file.name if m.group(2).startswith("input") else f"piti-{job.id}-{m.group(2)}"
        self._send(200, file.read_bytes(), ctype, {"Content-Disposition": f'inline; filename="{name}"'})

    def do_POST(self):  # noqa: N802
        url = urlsplit(self.path)
        length, body_read = 0, False
        try:
            length = self._content_length()
            self._guard(post=True)
            if url.path != "/api/generate":
                raise BadRequest(HTTPStatus.NOT_FOUND, f"not found: {_printable(url.path, 80)}")
            if length > self.app.max_upload:
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"file too large ({length / 1e6:.1f} MB): the limit is "
                                 f"{self.app.max_upload / 1e6:.1f} MB")
            if length == 0:
                raise _bad("empty upload: send a condition file as the request body")
            query = parse_qs(url.query)
            suffix = self.app.parse_suffix(query)
            settings = self.app.parse_settings(query)
            body_read = True
            data = self._read_body(length)
            job = self.app.submit(data, settings, suffix)
            self._json({"job": job.id, "position": self.app.queue.position(job)}, 202)
        except BadRequest as exc:
            if not body_read:
                self._discard(length)
            self._fail(exc)
        except _ClientGone as exc:
            self.close_connection = True
            log.info("piti demo: %s disconnected during the upload (%s)", self.client_address[0], exc)

    def _content_length(self) -> int:
        """The body's size from its one ``Content-Length`` header (0 when there is none); BadRequest."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "send the upload with a Content-Length header "
                                                         "(chunked uploads are not supported)")
        values = self.headers.get_all("Content-Length") or ["0"]
        if len(set(values)) > 1 or not re.fullmatch(r"\s*\d{1,15}\s*", values[0], re.ASCII):
            self.close_connection = True
            raise _bad(f"bad Content-Length header {_printable(values[0], 40)!r}: send the body's size in bytes")
        return int(values[0])

    def _read_body(self, length: int) -> bytes:
        """The request body; BadRequest(408) when it stalls or crawls, _ClientGone when the client leaves."""
        deadline, chunks, got = time.monotonic() + UPLOAD_SECONDS, [], 0
        self.close_connection = True  # whatever happens below, this connection ends with the answer
        while got < length:
            if time.monotonic() > deadline:
                raise BadRequest(HTTPStatus.REQUEST_TIMEOUT,
                                 f"upload timed out: not finished after {UPLOAD_SECONDS} s; try a faster connection")
            try:
                chunk = self.rfile.read1(min(length - got, 1 << 16))
            except TimeoutError:
                raise BadRequest(HTTPStatus.REQUEST_TIMEOUT, f"upload timed out: no data for {self.timeout:g} s; "
                                                             "send the file again") from None
            except (ConnectionResetError, ConnectionAbortedError) as exc:
                raise _ClientGone(f"{got} of {length} bytes; {_reason(exc)}") from None
            if not chunk:
                raise _ClientGone(f"{got} of {length} bytes")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _discard(self, length: int) -> None:
        """Read and drop a refused request's body (up to 16 × the upload limit), so the client reads the answer."""
        self.close_connection = True
        left = length if length <= 16 * self.app.max_upload else 0
        try:
            while left > 0:
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class DemoServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most ``max_connections`` connections at once (503 beyond)
    and logs a failed connection as one line."""

    daemon_threads = True
    block_on_close = False  # closing never waits for a stalled client

    def __init__(self, address, handler, *, family: int, max_connections: int):
        self.address_family = family
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        super().__init__(address, handler)
        self.host_check = HostCheck(*self.server_address[:2])

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            return self._refuse_busy(request, client_address)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request, client_address) -> None:
        log.warning("piti demo: refused a connection from %s: %d connections are open already",
                    client_address[0], self.max_connections)
        body = json.dumps({"error": "the demo is busy: too many open connections; try again in a moment"}).encode()
        head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                "\r\nRetry-After: 5\r\nConnection: close\r\n\r\n").encode()
        try:
            request.settimeout(0.2)
            try:  # take what the client sent, so closing does not reset the connection before it reads the answer
                request.recv(1 << 16)
            except OSError:
                pass
            request.sendall(head + body)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        who = client_address[0] if client_address else "a client"
        if isinstance(exc, _DISCONNECTS):
            log.info("piti demo: %s disconnected (%s)", who, _reason(exc))
        else:
            log.error("piti demo: internal error answering %s: %s: %s", who, type(exc).__name__,
                      _printable(str(exc), 200))
            log.debug("piti demo: traceback", exc_info=exc)


def resolve_host(host: str) -> tuple[int, str]:
    """(address family, numeric address) to listen on for ``--host``; UsageError naming --host."""
    hint = "give an address of this machine, e.g. 127.0.0.1 (or 0.0.0.0 for every network interface)"
    if not host.strip():
        raise UsageError(f"--host is empty: {hint}")
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise UsageError(f"--host {host} is not a valid IPv4 address: {hint}") from None
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--host {host}: no such host name ({_reason(exc)}); {hint}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, as `localhost` usually means
    return infos[0][0], infos[0][4][0]


def _bind_error(host: str, port: int, exc: OSError) -> UsageError:
    if exc.errno == errno.EADDRINUSE:
        return UsageError(f"port {port} is in use on {host}: choose another --port (or --port 0 for any free one)")
    if exc.errno == errno.EACCES:
        return UsageError(f"cannot listen on port {port}: permission denied (ports below 1024 need administrator "
                          "rights); choose another --port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return UsageError(f"--host {host} is not an address of this machine: use 127.0.0.1, or 0.0.0.0 for "
                          "every network interface")
    return UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 0, *, timeout: float = TIMEOUT,
                max_connections: int = MAX_CONNECTIONS) -> DemoServer:
    """A server bound to (host, port) (port 0: a free one); call ``serve_forever()``, then ``app.close()``.

    ``timeout``: seconds a connection may stay silent; ``max_connections``: connections served at once.
    """
    family, address = resolve_host(host)
    handler = type("DemoHandler", (_Handler,), {"app": app, "timeout": timeout})
    try:
        return DemoServer((address, port), handler, family=family, max_connections=max_connections)
    except OSError as exc:
        raise _bind_error(host, port, exc) from None
