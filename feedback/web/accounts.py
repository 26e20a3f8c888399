"""Signing agents and admins in with their key, and out again."""

from __future__ import annotations

import secrets

from flask import current_app, redirect, request, session, url_for

from feedback import rawsql, store
from feedback.context import request_session
from feedback.web import sessions as web_sessions
from feedback.web.pages import SESSION_FIELD, page_blueprint, render

bp = page_blueprint("accounts", __name__)
SIGN_IN_ROLES = ("agent", "admin")
# Where a sign-in may send the browser next: our own pages, never another site.
NEXT_PREFIXES = ("/review", "/dashboard")


def safe_next(value: str | None, role: str) -> str:
    """``value`` if it is one of our page paths, else the role's home page.

    Only printable ASCII passes: a CR or LF would end the ``Location`` header (Werkzeug
    refuses it, which was a 500), and tabs, newlines and other controls are dropped by
    browsers from URLs, which could turn ``/review<TAB>/evil`` into another site.
    """
    home = "/dashboard" if role == "admin" else "/review"
    if (
        not value
        or not (value.isascii() and value.isprintable())
        or not value.startswith(NEXT_PREFIXES)
        or "\\" in value
        or "//" in value
    ):
        return home
    return value


@bp.get("/signin")
def signin():
    """The sign-in form."""
    return render("signin.html", next=request.args.get("next", ""))


@bp.post("/signin")
def signin_post():
    """Check the key; on success start a fresh session, recorded on the server."""
    token = (request.form.get("key") or "").strip()
    nxt = request.form.get("next", "")
    db = request_session()
    key = store.find_active_key(db, token) if 0 < len(token) <= 200 else None
    if key is None or key.role not in SIGN_IN_ROLES:
        problem = (
            "That key is unknown or revoked."
            if key is None
            else f"A {key.role} key cannot sign in here: use an agent or admin key."
        )
        return render("signin.html", status=401, error=problem, next=nxt)
    key_id, role, old = key.id, key.role, session.get(SESSION_FIELD)
    with rawsql.session_write(db):
        if isinstance(old, str):
            web_sessions.end(db, old)  # the session this browser had dies with its cookie
        sid = web_sessions.start(db, key_id=key_id, lifetime=current_app.permanent_session_lifetime)
    session.clear()  # no session fixation: a new session, a new CSRF token
    session.permanent = True
    session.update({SESSION_FIELD: sid, "csrf": secrets.token_urlsafe(32)})
    return redirect(safe_next(nxt, role), code=303)


@bp.post("/signout")
def signout():
    """End the session on the server too: a copy of the cookie is dead from now on."""
    token = session.get(SESSION_FIELD)
    if isinstance(token, str):
        db = request_session()
        with rawsql.session_write(db):
            web_sessions.end(db, token)
    session.clear()
    return redirect(url_for("accounts.signin"), code=303)
