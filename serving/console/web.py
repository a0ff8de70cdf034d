"""What every console page shares: the templates, the security headers, the signed-in caller from the session
cookie, and errors shown on the page with their stable code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from cluster.access import Caller
from serving.deps import Ctx
from serving.usecases import keys
from serving.usecases.failures import failure

HERE = Path(__file__).parent
COOKIE = "facegrid_console"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
SHOWN_RECORDS = 500

templates = Jinja2Templates(directory=HERE / "templates")
static = StaticFiles(directory=HERE / "static")


class SignIn(Exception):
    """No valid key in this browser session: go to the sign-in page."""


def page(request: Request, name: str, caller: Caller | None, http_status: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, name, {"caller": caller, "title": name.split(".")[0], **context}, status_code=http_status
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def problem(request: Request, caller: Caller | None, exc: Exception, name: str, **context: Any) -> HTMLResponse:
    """A user's error on the page it came from, with its stable code and the status the API would give."""
    described = failure(exc)
    error = {"code": described.code, "message": described.message}
    return page(request, name, caller, http_status=described.status, error=error, **context)


async def signed_in(request: Request, ctx: Ctx) -> Caller:
    """The caller behind this browser session's key; SignIn (a redirect to the sign-in page) without one."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignIn()
    client = request.client.host if request.client else ""
    try:
        return await keys.authenticate(ctx, token, f"console@{client}", request.method, request.url.path)
    except Exception as exc:
        raise SignIn() from exc


def redirect(to: str) -> RedirectResponse:
    response = RedirectResponse(to, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


ConsoleCaller = Annotated[Caller, Depends(signed_in)]


async def to_sign_in(_: Request, __: Exception) -> RedirectResponse:
    """The app's handler of SignIn."""
    return redirect("/ui/signin")
