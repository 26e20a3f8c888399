"""The demo chat page of `tuneback up`: ask the served (tiny) model, rate its answer.

Loading even the tiny model costs ~15 s on the 2-core box, so the whole-loop test is
in the slow tier; the page's guards are checked in the fast tier without a model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from feedback import db, store
from feedback.settings import Settings
from feedback.web import hooks, init_app
from tests.live import free_port
from tests.web.support import Served, Site


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_model):
    """`tuneback up`'s app on loopback (tiny model, no scheduler), demo page wired."""
    from serve.app import create_serving_app
    from tuneback.apps import wire_admin_actions, wire_demo_page

    data_dir = tmp_path_factory.mktemp("demo")
    port = free_port()
    settings = Settings(
        data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'tuneback.db'}", port=port,
        rate_limit="100000/minute", key_cache_seconds=0, serve_max_tokens=16,
    )  # fmt: skip
    engine = db.make_engine(settings.resolved_database_url)
    db.upgrade(settings.resolved_database_url)
    app = create_serving_app(settings, Path(tiny_model), engine=engine)
    wire_admin_actions(app, settings)
    wire_demo_page(app, settings)
    served = Served(app, port=port)
    yield served, settings, engine
    served.stop()
    app.extensions["tuneback_serve"].close()
    engine.dispose()


@pytest.mark.slow
def test_the_demo_page_chats_and_rates_without_any_key_in_the_page(page, demo):
    served, settings, engine = demo
    response = page.goto(served.url + "/")
    assert response.status == 200
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    question = "How do I top up my account by card? <img src=x onerror=alert(1)>"
    page.get_by_label("Your message").fill(question)
    page.get_by_role("button", name="Send").click()
    widget = page.locator("[data-tuneback-completion]")
    widget.get_by_role("button", name="Good answer").click()
    page.locator('[data-tuneback-state="sent"]').wait_for()

    cid = widget.get_attribute("data-tuneback-completion")
    with Session(engine) as session:
        completion, votes, _ = store.completion_detail(session, cid)
        keys = {k.role for k in store.list_api_keys(session)}
    assert completion.messages[-1]["content"] == question
    assert page.locator(".msg-user .text").inner_text() == question  # shown as text
    assert page.locator("img").count() == 0 and dialogs == []
    assert page.locator(".msg-assistant .text").inner_text() == completion.response
    assert [(v.rating, v.source) for v in votes] == [("up", "widget")]
    assert keys == {"widget"}  # the page works with the public widget key alone


def test_the_demo_chat_needs_the_pages_csrf_token(tmp_path):
    import requests

    def never(_messages):  # noqa: ANN001, ANN202 - the guard must stop the request first
        raise AssertionError("the chat ran without a CSRF token")

    def wire(app, _settings):  # noqa: ANN001, ANN202
        hooks(app).demo_chat = never

    site = Site(tmp_path, wire=wire)
    hooks(site.app).demo_hosts = frozenset({site.url.removeprefix("http://")})
    try:
        http = requests.Session()
        page = http.get(site.url + "/", timeout=10)
        assert (
            page.status_code == 200
            and "script-src 'self'" in page.headers["Content-Security-Policy"]
        )
        answer = http.post(
            site.url + "/demo/chat", json={"messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )  # fmt: skip
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "csrf_failed"
    finally:
        site.stop()


def test_the_demo_page_is_off_unless_on_loopback(tmp_path):
    from flask import Flask

    from tuneback.apps import wire_demo_page

    app = Flask(__name__)
    settings = Settings(data_dir=tmp_path, host="0.0.0.0")
    init_app(app, settings)
    wire_demo_page(app, settings)
    assert hooks(app).demo_chat is None and hooks(app).demo_widget_key is None
