"""Wiring the pages into an app: blueprints, the session cookie and its signing key."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path

from flask import Flask

from feedback.durable import fsync_dir
from feedback.settings import Settings
from feedback.web import accounts, dashboard, demo, review, widget
from feedback.web.hooks import EXTENSION, WebHooks

log = logging.getLogger(__name__)
SECRET_FILE = "secret_key"


def init_app(app: Flask, settings: Settings) -> WebHooks:
    """Register the pages on ``app``: session cookie settings, blueprints, hooks."""
    app.secret_key = session_secret(settings)
    app.config.update(
        SESSION_COOKIE_NAME="tuneback_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
    )
    for module in (widget, accounts, review, dashboard, demo):
        app.register_blueprint(module.bp)
    app.extensions[EXTENSION] = WebHooks()
    return app.extensions[EXTENSION]


def session_secret(settings: Settings) -> str:
    """``TUNEBACK_SECRET_KEY``, or the key kept in the data dir (created once, 0600).

    Every worker and every restart must sign cookies with the same key, or sessions
    would break at random; the file is created complete under a temporary name and
    linked into place, so concurrent first starts agree on one key.
    """
    if settings.secret_key is not None:
        value = settings.secret_key.get_secret_value()
        if len(value) < 16:
            raise ValueError("TUNEBACK_SECRET_KEY must be at least 16 characters long")
        return value
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        if not path.exists():
            _create_secret(path)
        value = path.read_text().strip()
    except OSError as error:
        # The API must still start (say, on a read-only disk with PostgreSQL); sign-ins
        # and vote tokens suffer: both bind to this worker and end with this process.
        log.warning(
            "cannot keep a signing key in %s (%s): using one for this process only, so "
            "sign-ins and vote tokens work on this worker alone and end at restart; "
            "set TUNEBACK_SECRET_KEY so every worker and restart shares one",
            path,
            error,
        )
        return secrets.token_urlsafe(48)
    if len(value) < 32:
        raise ValueError(f"{path} holds no usable secret; delete it to make a new one")
    return value


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{SECRET_FILE}-{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, f"{secrets.token_urlsafe(48)}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(staging, path)  # fails if another process made it first: use theirs
        log.info("generated the session signing key in %s", path)
    except FileExistsError:
        pass
    finally:
        staging.unlink()
    fsync_dir(path.parent)
