"""Bearer-token access: every write needs the token, reads need it unless the server listens on
loopback only.

The token comes in an `Authorization: Bearer` header (API clients) or in the dashboard's session
cookie, set by the login form. A write authenticated by the cookie must also carry the
`X-Skutrain-Request` header, which a cross-site form cannot send. Tokens are compared in constant
time and never logged.
"""
from __future__ import annotations

import hmac
import ipaddress

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBearer

COOKIE_NAME = "skutrain_token"
CSRF_HEADER = "x-skutrain-request"


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenAuth:
    def __init__(self, token: str, *, reads_need_token: bool):
        if not token:
            raise ValueError("the API token must not be empty")
        self._token = token.encode()
        self.reads_need_token = reads_need_token

    def matches(self, supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode(), self._token)

    def authenticated(self, request: Request, *, write: bool) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            return self.matches(value.strip())
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie is None or (write and CSRF_HEADER not in request.headers):
            return False
        return self.matches(cookie)

    def require(self, request: Request, *, write: bool) -> None:
        if (write or self.reads_need_token) and not self.authenticated(request, write=write):
            raise HTTPException(401, detail="a valid API token is required "
                                "(Authorization: Bearer <SKUTRAIN_API_TOKEN>)",
                                headers={"WWW-Authenticate": "Bearer"})


# Declared so the OpenAPI document (and its /docs page's "Authorize" button) knows the scheme;
# TokenAuth reads the header itself, since the dashboard's cookie is the other source.
BEARER = HTTPBearer(auto_error=False, scheme_name="SKUTRAIN_API_TOKEN",
                    description="the server's API token (SKUTRAIN_API_TOKEN)")


def require_write(request: Request, _: object = Depends(BEARER)) -> None:
    request.app.state.auth.require(request, write=True)


def require_read(request: Request, _: object = Depends(BEARER)) -> None:
    request.app.state.auth.require(request, write=False)
