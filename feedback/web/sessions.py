"""Server-side sessions of the pages: one row per sign-in, deleted at sign-out.

A signed cookie alone cannot be taken back: a copy made before sign-out would
stay valid for its whole lifetime. So the cookie carries a random token and the
``web_session`` table the token's SHA-256; a page request is signed in only while
that row exists, is younger than the session lifetime and belongs to an active
key. No Flask here: a session in, rows out; the caller commits.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback.models import ApiKey, WebSession, utcnow


def digest(token: str) -> str:
    """The row id of a cookie's token (the token itself is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


def start(
    session: Session, *, key_id: str, lifetime: timedelta, now: datetime | None = None
) -> str:
    """Record a new sign-in of ``key_id``; return the token for the cookie.

    Rows past their lifetime are deleted on the way (sign-ins are rare, so the
    table stays small without a sweeper).
    """
    now = now or utcnow()
    session.execute(delete(WebSession).where(col(WebSession.created_at) < now - lifetime))
    token = secrets.token_urlsafe(32)
    session.add(WebSession(id=digest(token), key_id=key_id, created_at=now))
    return token


def signed_in_key(
    session: Session, token: str, *, lifetime: timedelta, now: datetime | None = None
) -> ApiKey | None:
    """The active key whose live session ``token`` names, or None."""
    now = now or utcnow()
    return session.execute(
        select(ApiKey)
        .join(WebSession, col(WebSession.key_id) == col(ApiKey.id))
        .where(
            col(WebSession.id) == digest(token),
            col(WebSession.created_at) > now - lifetime,
            col(ApiKey.revoked_at).is_(None),
        )
    ).scalar_one_or_none()


def end(session: Session, token: str) -> None:
    """Sign the session out: every copy of its cookie is dead from now on."""
    session.execute(delete(WebSession).where(col(WebSession.id) == digest(token)))
