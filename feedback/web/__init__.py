"""The browser pages: the feedback widget, the agents' review console, the admins'
dashboard and, under ``tuneback up``, a demo chat page.

Pages are server-rendered Jinja templates (autoescaped: everything a user or a model
wrote is rendered as text) with JavaScript only in static files, so every page can
answer with a Content-Security-Policy that forbids inline script. Agents and admins
sign in with their key once; the signed session cookie then carries a token naming
a server-side session row (never the key), which sign-out deletes. Promotion and
rollback call the adapter registry directly; the two actions this package may not
import (retraining, chat with the served model) are injected by the composition
root through :class:`WebHooks`.
"""

from __future__ import annotations

from feedback.web.hooks import WebHooks, hooks
from feedback.web.setup import init_app

__all__ = ["WebHooks", "hooks", "init_app"]
