"""Per-request resources, created on first use and closed at teardown."""

from __future__ import annotations

from flask import current_app, g
from sqlalchemy.orm import Session


def request_session() -> Session:
    """The request's database session (most votes never need one)."""
    session = g.get("db")
    if session is None:
        session = g.db = Session(current_app.extensions["tuneback"].engine, expire_on_commit=False)
    return session


def close_request_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()
