"""Serving the app with uvicorn: on a host and port (`skutrain api`), or on a socket the caller
already bound (tests, `skutrain demo --serve`), inside the caller's event loop."""
from __future__ import annotations

import secrets
import socket

import uvicorn

from services.api.app import create_app
from services.api.auth import TokenAuth, is_loopback


def resolve_token(configured: str | None, host: str) -> tuple[str, bool]:
    """The API token and whether it was generated here. Without a configured token the server
    may only listen on loopback, with a fresh random token that the caller shows its user."""
    if configured:
        return configured, False
    if not is_loopback(host):
        raise SystemExit(f"set SKUTRAIN_API_TOKEN before serving on {host}: without a token the "
                         "API only listens on loopback (127.0.0.1)")
    return secrets.token_urlsafe(24), True


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class AppServer(uvicorn.Server):
    """uvicorn, telling the app's event streams to end when a shutdown begins (otherwise an open
    dashboard holds the graceful shutdown until its timeout)."""

    def __init__(self, app):
        # log_config=None keeps skutrain's structlog setup; no access log (it would log every
        # stream reconnect and query string).
        super().__init__(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                        timeout_graceful_shutdown=5))
        self.app = app

    async def shutdown(self, sockets=None) -> None:
        self.app.state.closing = True
        await super().shutdown(sockets)


def build_server(database_url: str, token: str, host: str) -> AppServer:
    auth = TokenAuth(token, reads_need_token=not is_loopback(host))
    return AppServer(create_app(database_url, auth))


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


async def serve(database_url: str, configured_token: str | None, host: str, port: int,
                announce=print) -> None:
    """Serve until SIGINT/SIGTERM, after announcing the dashboard URL (and the token when one was
    generated: it is shown to the person who started the server, never logged)."""
    token, generated = resolve_token(configured_token, host)
    sock = bind(host, port)
    base = url_of(sock)
    server = build_server(database_url, token, host)
    announce(f"dashboard: {base}/   API: {base}/api/v1/training/   OpenAPI: {base}/docs")
    if generated:
        announce(f"changes need the API token generated for this server (set SKUTRAIN_API_TOKEN "
                 f"to choose one); log in with {base}/login#token={token}")
    announce("Ctrl-C stops the server")
    await server.serve(sockets=[sock])
