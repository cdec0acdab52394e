"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}} with a 4xx/5xx status.

Every failure a request can cause ends here, so a bad request costs the caller one
clear message and never the server.
"""
from __future__ import annotations


from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException



class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model {name!r} does not exist (this server serves one model; see GET /v1/models)",
                    param="model", code="model_not_found")


def context_length_exceeded(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="context_length_exceeded")


def _validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0]
    kind = first.get("type")
    if kind == "json_invalid":
        return bad_request(f"Invalid JSON body: {first.get('msg', 'could not parse')}", code="invalid_json")
    # loc is ('body', 'temperature') or ('body', 'messages', 0, 'role'): name the parameter as a client wrote it.
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    code = "invalid_value"
    if kind == "extra_forbidden":
        message = "is not supported by this server (sqlm rejects the fields it does not honour; see the README)"
        code = "unsupported_parameter"
    elif not loc and kind == "value_error" and ": " in message:
        param, message = message.split(": ", 1)  # a check across fields names the parameter it is about
    elif not loc:
        message = "the request body must be a JSON object"
    if param:
        message = f"{param}: {message}"
    return bad_request(message, param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response()
    # anything else becomes a 500 in sqlm.server.guard.RequestGuard, which keeps the connection usable
