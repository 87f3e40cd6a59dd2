"""405 Method Not Allowed whose `Allow` header names every method the path really accepts.

Starlette answers a method mismatch with the methods of the first route whose path matches, so
`PUT /referrals/new` said `Allow: GET` (the referral page `/referrals/{code}` comes first) although
the intake form serves POST there too, and `DELETE /api/referrals` said `Allow: POST`. Here every
route of the app is asked, for each method, whether it would serve this path.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from web.routes import api

# The methods of RFC 9110 and PATCH (RFC 5789): a route with another one would be asked too late.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


def allowed_methods(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    """The methods some route of `app` would serve at this request's path, in METHODS' order."""
    allowed = []
    for method in METHODS:
        # Matching may note things in the scope's nested dicts: probe on copies.
        probe = {key: dict(value) if isinstance(value, dict) else value for key, value in scope.items()}
        probe["method"] = method
        if any(route.matches(probe)[0] == Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """The app's handler of HTTP errors: a 405 gets the full `Allow`; any other is FastAPI's."""
    assert isinstance(exc, HTTPException)
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    allow = ", ".join(allowed_methods(request.app, dict(request.scope)))
    headers = {**(exc.headers or {}), "Allow": allow}
    if request.url.path.startswith(f"{api.router.prefix}/"):
        message = f"{request.method} is not allowed here; allowed: {allow}"
        return JSONResponse({"errors": [{"field": "(method)", "message": message}]}, status_code=405, headers=headers)
    return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, method_not_allowed)
