"""Every error the API returns is one JSON body (`ErrorBody`) documented in OpenAPI."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CorruptionError, LockedError, OpenBDRError, RepositoryError, SourceError
from .jobs import JobError, LeaseLost
from .registry import UnknownKind
from .schemas import ErrorBody

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint


def not_found(what: str, hint: str | None = None) -> ApiError:
    return ApiError(404, "not_found", f"{what} does not exist", hint)


def body(code: str, message: str, hint: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint, **extra}}


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 422: "invalid", 503: "unavailable"}

#: documented on every route
RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": desc}
    for status, desc in {
        400: "the request cannot be carried out (what and what to do in the body)",
        401: "no or an unknown token",
        403: "the token's role may not do this",
        404: "the object does not exist",
        409: "conflicts with the object's state (a running job, a duplicate name)",
        422: "the body or a parameter is malformed",
    }.items()
}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_r: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(body(exc.code, exc.message, exc.hint), status_code=exc.status,
                            headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(OpenBDRError)
    async def _domain(_r: Request, exc: OpenBDRError) -> JSONResponse:
        if isinstance(exc, JobError | LeaseLost | LockedError):
            status, code = 409, "conflict"
        elif isinstance(exc, UnknownKind | SourceError | RepositoryError):
            status, code = 400, "bad_request"
        elif isinstance(exc, CorruptionError):
            status, code = 400, "corrupt"
        else:
            status, code = 400, "bad_request"
        return JSONResponse(body(code, exc.what, exc.hint), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = fields[0] if fields else {"loc": [], "msg": "invalid"}
        return JSONResponse(
            body("invalid", f"{'.'.join(first['loc'])}: {first['msg']}",
                 "fix the request; see the OpenAPI document at /openapi.json", fields=fields),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        return JSONResponse(body(code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(DataError)
    async def _data(_r: Request, exc: DataError) -> JSONResponse:
        # a value the database cannot hold (NUL in text, out-of-range number)
        return JSONResponse(
            body("invalid", f"a value cannot be stored in the catalog: {str(exc.orig)[:200]}",
                 "remove NUL characters and keep numbers in range"),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _crash(_r: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error: %s", exc)
        return JSONResponse(
            body("internal", f"internal error ({type(exc).__name__})", "see the server log"),
            status_code=500,
        )
