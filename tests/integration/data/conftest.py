"""Real servers on loopback for the data tests: a scripted image server and an S3 server."""
from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.s3 import s3_endpoint  # noqa: F401  (the moto S3 server)


class ImageServer:
    """Serves `routes`: path -> callable(handler, attempt) writing the answer.

    `attempt` is 1 for the first request of that path, 2 for the second... Every request is
    counted (`requests`), and the most requests in flight at once is kept (`max_in_flight`).
    """

    def __init__(self):
        self.routes: dict = {}
        self.requests: Counter = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                with server.lock:
                    server.requests[path] += 1
                    attempt = server.requests[path]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    route = server.routes.get(path)
                    if route is None:
                        self.send_error(404)
                    else:
                        route(self, attempt)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on purpose (too large, timeout)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def total_requests(self) -> int:
        with self.lock:
            return sum(self.requests.values())

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"


@pytest.fixture
def image_server():
    server = ImageServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def s3_client(s3_endpoint):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )


class FlakyProxy:
    """Forwards every request to `upstream`, but answers the first `failures` requests whose
    method is in `methods` with 503 (what an S3 endpoint says when overloaded).

    `seen` counts the requests per method, failed ones included.
    """

    def __init__(self, upstream: str):
        import http.client
        from urllib.parse import urlsplit

        self.failures = 0
        self.methods = {"PUT", "POST"}
        self.seen: Counter = Counter()
        self.lock = threading.Lock()
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.seen[self.command] += 1
                    fail = self.command in proxy.methods and proxy.failures > 0
                    proxy.failures -= fail
                if fail:
                    payload = b"<Error><Code>SlowDown</Code><Message>busy</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def flaky_s3(s3_endpoint):
    """A FlakyProxy in front of the moto server."""
    proxy = FlakyProxy(s3_endpoint)
    proxy.thread.start()
    yield proxy
    proxy.httpd.shutdown()
    proxy.httpd.server_close()
