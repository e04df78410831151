"""The FastAPI application: the JSON API under /api/v1/training/ and the dashboard, one process.

`create_app` takes everything explicitly (database URL, token, whether reads need it); the CLI
reads the settings. Errors have one shape, `{"error_code", "message"}` (422s add `errors`, one
per bad field); a refusal from the SQL guards (SQLSTATE SK010) is a 409 with the guard's own
message, a missing row (P0002) a 404.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from db import repository
from services.api import dashboard, routes
from services.api.auth import TokenAuth
from services.common.errors import SkutrainError
from services.common.logging import cap_text, get_logger

REFUSED_SQLSTATE = "SK010"
NOT_FOUND_SQLSTATE = "P0002"
UNIQUE_VIOLATION_SQLSTATE = "23505"
STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY_BYTES = 1_000_000
# Domain errors the repository raises for the SQL guards' refusals (SK010) and missing rows.
_DOMAIN_STATUS = {"refused": 409, "not_found": 404, "invalid_config": 422}
_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                409: "conflict", 413: "too_large", 422: "invalid_request"}

log = get_logger("api")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error_code": _ERROR_CODES.get(status, "error"), "message": message})


def create_app(database_url: str, auth: TokenAuth, *, stream_poll: float = 0.5,
               pool_size: int = 8) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = await repository.create_pool(database_url, min_size=1, max_size=pool_size)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(title="skutrain", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Training runs, checkpoints and trained models of skutrain.")
    app.state.auth = auth
    app.state.stream_poll = stream_poll
    app.state.closing = False  # set by server.AppServer when a shutdown begins

    @app.exception_handler(routes.FieldErrors)
    async def field_errors(request: Request, exc: routes.FieldErrors):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError):
        errors = [{"field": cap_text(".".join(str(p) for p in err["loc"][1:]) or str(err["loc"][0]),
                                     routes.MAX_ERROR_TEXT),
                   "message": cap_text(err["msg"], routes.MAX_ERROR_TEXT)}
                  for err in exc.errors()[:routes.MAX_ERRORS]]
        return routes.FieldErrors("invalid_request", errors).response()

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        """Refuse a body over MAX_BODY_BYTES before reading it (a run config is a few kB)."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(SkutrainError)
    async def domain_error(request: Request, exc: SkutrainError):
        status = _DOMAIN_STATUS.get(exc.code, 500)
        return JSONResponse(status_code=status,
                            content={"error_code": exc.code, "message": exc.message})

    @app.exception_handler(asyncpg.PostgresError)
    async def database_refusal(request: Request, exc: asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate == REFUSED_SQLSTATE:
            return _error(409, exc.args[0] if exc.args else str(exc))
        if sqlstate == NOT_FOUND_SQLSTATE:
            return _error(404, exc.args[0] if exc.args else str(exc))
        if sqlstate == UNIQUE_VIOLATION_SQLSTATE:
            return _error(409, f"already exists: {exc.detail or exc}")
        log.error("api.database_error", sqlstate=sqlstate, error_type=type(exc).__name__)
        return _error(500, "database error; see the server log")

    @app.get("/docs", include_in_schema=False)
    async def api_docs():
        """Swagger UI over /openapi.json, from the vendored copy (no CDN)."""
        vendor = "/static/vendor/swagger-ui"
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="skutrain API",
                                   swagger_js_url=f"{vendor}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{vendor}/swagger-ui.css",
                                   swagger_favicon_url=f"{vendor}/favicon-32x32.png")

    app.include_router(routes.reads)
    app.include_router(routes.writes)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
