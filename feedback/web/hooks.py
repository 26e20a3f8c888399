"""What the composition root injects into the pages: actions this package may not import.

Promotion and rollback are not among them: the dashboard calls the adapter
registry (:mod:`feedback.adapters.registry`) directly. Retraining needs the
training package and the demo chat the served model, which ``feedback`` never
imports, so ``tuneback`` wires those here when its process has them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

EXTENSION = "tuneback_web"


@dataclass
class WebHooks:
    """Actions the feedback package cannot do alone; None means "not wired here".

    ``retrain_now(actor, lane) -> str`` starts a retrain cycle of ``lane`` and says what
    happened.
    ``demo_chat(messages) -> server-sent events`` streams the served model's answer as
    OpenAI chat-completion chunks and logs the completion before the final
    ``data: [DONE]``; ``demo_widget_key`` is the public widget key of the demo page;
    ``demo_hosts`` the ``Host`` values (lower case, with the port) the demo page answers
    to: the loopback names only, so a DNS-rebound foreign name cannot reach the chat.
    """

    retrain_now: Callable[[str, str], str] | None = None
    demo_chat: Callable[[list[dict[str, Any]]], Iterable[bytes]] | None = None
    demo_widget_key: str | None = None
    demo_hosts: frozenset[str] = frozenset()


def hooks(app: Flask | None = None) -> WebHooks:
    """The app's :class:`WebHooks` (the current app's by default)."""
    return (app or current_app).extensions[EXTENSION]
