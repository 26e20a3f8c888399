"""What every page shares: security headers, CSRF tokens, the signed-in user.

Page blueprints call :func:`page_blueprint`, which adds the Content-Security-Policy
and the CSRF check to each of their requests. The session cookie (HttpOnly,
SameSite=Strict, signed) holds a token naming a server-side session row
(:mod:`feedback.web.sessions`); each request checks that the row still exists,
is younger than the session lifetime and belongs to an active key, so signing
out, or revoking the key, ends the session for every copy of the cookie.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from apiflask import APIBlueprint
from flask import Response, current_app, g, redirect, render_template, request, session, url_for

from feedback import lanes
from feedback.context import request_session
from feedback.exceptions import ForbiddenError, InvalidInputError, TunebackError
from feedback.web import sessions as web_sessions

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# Cross-site requests a browser labels so; "none" is a typed URL or bookmark.
SAME_SITE = ("same-origin", "none")
# The cookie's field holding the server-side session's token (feedback.web.sessions).
SESSION_FIELD = "sid"


class CSRFError(ForbiddenError):
    code = "csrf_failed"


class LaneChoiceError(TunebackError):
    """A page was asked for a lane with a bad name (422) or that does not exist (404)."""

    def __init__(self, error: TunebackError) -> None:
        super().__init__(error.message, code=error.code)
        self.status = error.status


@dataclass(frozen=True)
class WebUser:
    """The signed-in agent or admin of a page request."""

    key_id: str
    role: str
    name: str

    @property
    def actor(self) -> str:
        """How the user is named in the records they write (corrections, promotions)."""
        return self.name


def page_blueprint(name: str, import_name: str, **kwargs: Any) -> APIBlueprint:
    """A blueprint for HTML pages: kept out of the OpenAPI spec, with CSP and CSRF."""
    bp = APIBlueprint(
        name, import_name, enable_openapi=False, template_folder="templates", **kwargs
    )
    bp.before_request(check_csrf)
    bp.after_request(add_security_headers)
    bp.register_error_handler(LaneChoiceError, _lane_page)
    return bp


def chosen_lane(default: str | None) -> str | None:
    """The lane a page is asked for: ``?lane=`` or a form's ``lane`` field; ``default``
    when absent or empty (a selector's "all lanes"). A bad or unknown name is a
    :class:`LaneChoiceError`, which the page blueprints answer with a page saying so."""
    value = request.values.get("lane") or None
    if value is None:
        return default
    try:
        return lanes.get_lane(request_session(), value).name
    except (InvalidInputError, lanes.UnknownLaneError) as error:
        raise LaneChoiceError(error) from None


def _lane_page(error: LaneChoiceError) -> tuple[str, int]:
    title = "No such lane" if error.status == 404 else "Not a lane name"
    return render("forbidden.html", status=error.status, title=title, message=error.message)


def lane_names() -> list[str]:
    """Every lane's name, ``default`` first, for the pages' lane selectors."""
    return lanes.lane_names(request_session())


def add_security_headers(response: Response) -> Response:
    for header, value in SECURITY_HEADERS.items():
        response.headers.setdefault(header, value)
    if g.get("web_user") is not None or request.method == "POST":
        response.headers["Cache-Control"] = "no-store"
    return response


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Refuse a state-changing request without this session's token, or from another site."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in SAME_SITE:
        raise CSRFError(f"a {site} request may not change anything here")
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CSRFError("the form's CSRF token is missing or stale; reload the page and retry")


def current_user() -> WebUser | None:
    """The signed-in user, while their session row lives and their key is active."""
    if "web_user" in g:
        return g.web_user
    user = None
    token = session.get(SESSION_FIELD)
    if isinstance(token, str):
        key = web_sessions.signed_in_key(
            request_session(), token, lifetime=current_app.permanent_session_lifetime
        )
        if key is not None:
            user = WebUser(key.id, key.role, key.name or f"key:{key.id}")
        else:
            session.clear()  # signed out (here or elsewhere), expired, or the key revoked
    g.web_user = user
    return user


def sign_in_required(*roles: str) -> Callable:
    """Decorator: the page needs a signed-in user with one of ``roles`` (admin always)."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                target = request.full_path if request.method == "GET" else request.path
                return redirect(f"{url_for('accounts.signin')}?{urlencode({'next': target})}")
            if user.role != "admin" and user.role not in roles:
                return render(
                    "forbidden.html",
                    status=403,
                    message=f"A {user.role} key cannot open this page.",
                )
            return view(*args, **kwargs)

        return wrapper

    return decorator


def render(template: str, *, status: int = 200, **context: Any) -> tuple[str, int]:
    """Render a page with what every template needs."""
    context.setdefault("user", current_user())
    return render_template(f"web/{template}", csrf_token=csrf_token(), **context), status
