"""What every console page shares: the templates, the security headers, the signed-in caller from the session
cookie, and errors shown on the page with their stable code."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from cluster.errors import CsrfRefused
from cluster.keys.access import Caller
from serving.console.sessions import Sessions
from serving.deps import Ctx
from serving.usecases.audited import audited
from serving.usecases.failures import failure

HERE = Path(__file__).parent
COOKIE = "facegrid_console"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    # Nothing leaves for other sites; our own pages keep their origin, which a form's POST then carries (under
    # no-referrer, Chrome sends `Origin: null` even to the same origin).
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
SHOWN_RECORDS = 500

templates = Jinja2Templates(directory=HERE / "templates")
static = StaticFiles(directory=HERE / "static")


class SignIn(Exception):
    """No valid key in this browser session: go to the sign-in page."""


def page(request: Request, name: str, caller: Caller | None, http_status: int = 200, **context: Any) -> HTMLResponse:
    """A template with the caller, and the session's form token for every form that posts."""
    csrf = getattr(request.state, "csrf", "")
    response = templates.TemplateResponse(
        request, name, {"caller": caller, "title": name.split(".")[0], "csrf": csrf, **context}, status_code=http_status
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def problem(request: Request, caller: Caller | None, exc: Exception, name: str, **context: Any) -> HTMLResponse:
    """A user's error on the page it came from, with its stable code and the status the API would give."""
    described = failure(exc)
    error = {"code": described.code, "message": described.message}
    return page(request, name, caller, http_status=described.status, error=error, **context)


async def signed_in(request: Request, ctx: Ctx) -> Caller:
    """The caller behind this browser session; SignIn (a redirect to the sign-in page) without a live one. A
    state-changing request must also come from the console's own pages (`check_form`), signed in or not."""
    session_id = request.cookies.get(cookie_name(ctx))
    session = await ctx.in_thread(Sessions(ctx.store).get, session_id) if session_id else None
    caller = None
    if session is not None:
        client = request.client.host if request.client else ""
        try:
            caller = ctx.keys.active(session.key_id).caller(f"console@{client}")
        except Exception:  # revoked since sign-in: the session ends with it
            session = None
    if request.method == "POST" and (session is not None or cross_origin(request) is not None):
        await check_form(request, ctx, caller, session.csrf if session else None)
    if session is None or caller is None:
        raise SignIn()
    request.state.csrf = session.csrf
    return caller


async def check_form(request: Request, ctx: Ctx, caller: Caller | None, expected: str | None) -> None:
    """Django's rule: a posted form comes from our own origin (Sec-Fetch-Site, else Origin) and carries the token
    its page was given. Anything else is refused (CSRF_REFUSED) and audited, having changed nothing."""
    why = cross_origin(request)
    if why is None:
        sent = (await request.form()).get("csrf")
        if not expected or not isinstance(sent, str) or not hmac.compare_digest(sent, expected):
            why = "the form's token is missing or is not this session's"
    if why is not None:
        async with audited(ctx, caller, "console-form", None, route=request.url.path, reason=why):
            raise CsrfRefused(f"refused: {why}")


def cross_origin(request: Request) -> str | None:
    """Why this request did not come from a page of this server, or None. Browsers send Sec-Fetch-Site, which no
    page can set (another port of the same host is `same-site`: refused too); without it, Origin must name this
    host (`null`, as a sandboxed frame sends, is refused). A request with neither is left to the token."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return None if site in ("same-origin", "none") else f"posted from another site (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return f"posted from another origin ({origin[:100]})"
    return None


def cookie_name(ctx: Ctx) -> str:
    return f"__Host-{COOKIE}" if ctx.settings.serving.console_tls else COOKIE


def set_cookie(ctx: Ctx, response: Response, name: str, value: str, path: str, max_age: int | None = None) -> None:
    """HttpOnly and SameSite=Strict always; Secure (and for the session, Path=/ as __Host- needs) over TLS."""
    tls = ctx.settings.serving.console_tls
    path = "/" if tls and name.startswith("__Host-") else path
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", secure=tls, path=path)


def redirect(to: str) -> RedirectResponse:
    response = RedirectResponse(to, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


ConsoleCaller = Annotated[Caller, Depends(signed_in)]


async def to_sign_in(_: Request, __: Exception) -> RedirectResponse:
    """The app's handler of SignIn."""
    return redirect("/ui/signin")
