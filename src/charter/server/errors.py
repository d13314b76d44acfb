"""Errors in the OpenAI format: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse


class ProxyError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(headers or {})})

    def sse(self) -> bytes:
        """The error as a stream event (the openai client raises it as an APIError)."""
        return f"data: {json.dumps(self.body())}\n\n".encode()


def upstream_error(status: int, message: str, code: str = "upstream_error") -> ProxyError:
    return ProxyError(status, message, "upstream_error", None, code)
