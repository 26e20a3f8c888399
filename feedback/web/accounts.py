"""Signing agents and admins in with their key, and out again."""

from __future__ import annotations

import secrets

from flask import redirect, request, session, url_for

from feedback import store
from feedback.context import request_session
from feedback.web.pages import page_blueprint, render

bp = page_blueprint("accounts", __name__)
SIGN_IN_ROLES = ("agent", "admin")
# Where a sign-in may send the browser next: our own pages, never another site.
NEXT_PREFIXES = ("/review", "/dashboard")


def safe_next(value: str | None, role: str) -> str:
    """``value`` if it is one of our page paths, else the role's home page."""
    home = "/dashboard" if role == "admin" else "/review"
    if not value or not value.startswith(NEXT_PREFIXES) or "\\" in value or "//" in value:
        return home
    return value


@bp.get("/signin")
def signin():
    """The sign-in form."""
    return render("signin.html", next=request.args.get("next", ""))


@bp.post("/signin")
def signin_post():
    """Check the key; on success start a fresh session holding the key's id only."""
    token = (request.form.get("key") or "").strip()
    nxt = request.form.get("next", "")
    key = store.find_active_key(request_session(), token) if 0 < len(token) <= 200 else None
    if key is None or key.role not in SIGN_IN_ROLES:
        problem = (
            "That key is unknown or revoked."
            if key is None
            else f"A {key.role} key cannot sign in here: use an agent or admin key."
        )
        return render("signin.html", status=401, error=problem, next=nxt)
    session.clear()  # no session fixation: a new session, a new CSRF token
    session.permanent = True
    session.update(key_id=key.id, role=key.role, csrf=secrets.token_urlsafe(32))
    return redirect(safe_next(nxt, key.role), code=303)


@bp.post("/signout")
def signout():
    session.clear()
    return redirect(url_for("accounts.signin"), code=303)
