"""Every error the server answers, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

APIError is raised by the code that finds the fault; the handlers give FastAPI's and Starlette's own
errors (a body that does not validate, an unknown route or method) the same shape, and so does any
other exception: a 500 whose request id finds its traceback in the server's log. The spec documents
for each route the statuses it can answer, and nothing else.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

log = logging.getLogger("fingpt.serve")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None  # the request field at fault
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type="invalid_request_error", param=None, code=None, headers=None
    ):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.body = ErrorResponse(error=ErrorBody(message=message, type=type, param=param, code=code))

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body.model_dump(), status_code=self.status, headers=headers or self.headers)


WHY = {
    400: "A setting out of range or of the wrong type, or malformed JSON; and two rules no JSON Schema "
    "can state: a prompt longer than the model's context in tokens (unless truncate_prompt_tokens or "
    "score_stride is set), more completions (prompts x n) than the server queues at once",
    401: "A missing or wrong API key",
    413: "A body over the size limit, or scoring that would make the model compute more token positions "
    "(windows x context) than the server's cap: the message gives the score_stride or text length that fits",
    429: "The queue is full: retry later",
    500: "Decoding failed, or an unexpected fault (its request id finds the traceback in the server's log)",
    503: "The model is still loading, or could not be loaded",
    504: "The request took longer than the server's timeout",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """What a route documents in `responses`: each error status it can answer, in the error shape."""
    return {status: {"model": ErrorResponse, "description": WHY[status]} for status in statuses}


async def api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a body that does not validate becomes OpenAI's 400, naming the field."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return APIError(400, "the body is not valid JSON").response()
    loc = first.get("loc", ())  # ("body", "temperature", ...): the field is what the client named
    param = str(loc[1]) if len(loc) > 1 and loc[0] == "body" else None
    message = first.get("msg", "invalid request")
    return APIError(400, f"{param}: {message}" if param else message, param=param).response()


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """404 and 405 (with its Allow header) in the same shape as every other error."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return APIError(exc.status_code, str(exc.detail), code=code).response(headers=exc.headers)


def internal_error(request: Request, exc: BaseException) -> APIError:
    """A fault nothing else names (a failed decoding step, a bug): a 500 in the same shape, its
    traceback logged under a request id that the body and the X-Request-Id header give the client."""
    request_id = uuid.uuid4().hex[:16]
    log.error("request %s (%s %s) failed", request_id, request.method, request.url.path, exc_info=exc)
    message = f"internal server error (request id {request_id}): the server's log holds its traceback"
    return APIError(
        500, message, type="server_error", code="internal_error", headers={"X-Request-Id": request_id}
    )


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Any other exception: never Starlette's plain-text 500."""
    return internal_error(request, exc).response()


HANDLERS = {
    APIError: api_error,
    RequestValidationError: invalid_request,
    HTTPException: http_error,
    Exception: unexpected,
}
